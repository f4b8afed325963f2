"""Fine-tuning a model that exists already, by the one loop, into a run folder of its own.

A LoRA fact adapter on a trained GPT, a distillation student and a relearning copy are each trained
by `Trainer` like any run (clipping, autocast, metrics.jsonl, checkpoints, exact resume), with the
objective and the batch source of their task:

    cfg = finetune_config(base_cfg, steps=200, lr=3e-3, batch_size=16, seed=0)
    metrics = fine_tune(cfg, "runs/x/adapters/g0", model, corpus, batches=AnswerSampler(...))

The config is the base run's model and data with a fine-tuning schedule (constant lr, no warm-up,
no weight decay, one checkpoint at the end, no snapshots, probes or progress bar); the validation
loss at the end is the model's on the base corpus's validation windows, so every fine-tune reports
what it did to the model's language beside its own loss terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vslm.config import RunConfig, validate
from vslm.data.shards import Corpus
from vslm.train.checkpoint import list_checkpoints
from vslm.train.objectives import Objective
from vslm.train.run_folder import CHECKPOINTS, clear_run_folder, read_metrics
from vslm.train.trainer import Trainer

FINETUNE_EVAL_WINDOWS = 256


def finetune_config(base: RunConfig, steps: int, lr: float, batch_size: int, seed: int, device: str = "auto",
                    progress: bool = False, **train) -> RunConfig:
    """The base run's model and data, trained `steps` steps at a constant `lr` from the first step;
    other `train` fields (grad_clip, betas, ...) may be given. `progress`: the progress bar (a command's own
    fine-tune, as `vslm facts distill`'s; off where a caller says its own lines, an experiment's). Its threads
    are the session's (train.threads 0: a command's --threads, an experiment worker's share), not the base
    run's, which was set for another machine or load."""
    raw = base.model_dump(mode="json")
    raw["train"].update({"steps": steps, "lr": lr, "min_lr": 0.0, "warmup": 0, "schedule": "constant",
                         "weight_decay": 0.0, "batch_size": batch_size, "grad_accum": 1, "seed": seed,
                         "device": device, "threads": 0, "checkpoint_every": 0, "keep_last": 1, "snapshots": False,
                         "eval_every": 0, "eval_windows": min(base.train.eval_windows, FINETUNE_EVAL_WINDOWS),
                         **train})
    raw["logging"].update(log_every=1, probe_every=0, tensorboard=False, diagnostics_every=0, progress=progress,
                          samples=0)
    return validate(raw, saved=True)  # the base is a run's config: what it trained reads, whatever checks came since


def fine_tune(cfg: RunConfig, run_dir: Path, model: torch.nn.Module, corpus: Corpus,
              objective: Objective | None = None, batches=None, keep: Sequence[str] = ()) -> dict:
    """Train `model` (in place: the parameters that require grad) to cfg.train.steps in run_dir and
    return the last logged metrics. A folder with a checkpoint continues from it, exactly; one that
    already reached the last step only loads its weights; one without a checkpoint (killed before the
    end of a run that checkpoints only there) holds nothing of the run to keep and starts over (the files
    named in `keep`, the caller's own, stay). A fine-tune stopped by a signal says that the command that
    started it continues it: `vslm train --resume` could not rebuild its objective or its batches."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir / CHECKPOINTS)
    if not found and run_dir.is_dir():
        clear_run_folder(run_dir, keep)
    trainer = Trainer(cfg, run_dir, resume=bool(found), corpus=corpus, model=model, objective=objective,
                      batches=batches)
    final = trainer.fit()  # stopped by a signal: its words say the same command continues it (its own batches)
    if "loss" not in final:  # finished before: its last logged line
        final = read_metrics(run_dir)[-1]
    return final
