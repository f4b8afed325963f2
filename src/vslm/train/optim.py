"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vslm.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW; matrices (and embeddings) decay, gains and biases do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for the update that follows `step` completed updates (0-based).

    Linear warm-up to `lr` over `warmup` steps, then: cosine to `min_lr` at `steps`; or
    warmup-stable-decay, flat until the last `decay_fraction` of the run, then linear to `min_lr`;
    or constant."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    decay_start = cfg.steps - round(cfg.decay_fraction * cfg.steps)
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start) / max(1, cfg.steps - decay_start))
    return cfg.lr + progress * (cfg.min_lr - cfg.lr)
