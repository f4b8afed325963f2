"""Evaluation of trained runs: on corpora (`corpus`), and through lm-evaluation-harness (`harness`).

Knows the model, the data and run folders; the training loop knows nothing of it."""
