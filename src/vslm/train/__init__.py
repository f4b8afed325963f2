"""Training: the one loop (trainer.py), its objectives, callbacks, optimizers, checkpoints, run folders,
probes during training, sampling, and the torchrun / DDP set-up (distributed.py).

Nothing is imported here: `import vslm.train.trainer` (or another module) for what you need.
"""
