"""Parameters and training FLOPs per token.

FLOPs follow the convention of Kaplan et al. (2020) and PaLM: 6 per weight of every matrix
multiply (2 forward, 4 backward), counting the output head even when it is tied to the embedding
(it is a real matmul) and not the embedding lookups (they are not); plus attention's score and
value products, 12 * heads * head_dim * keys per depth, with keys = min(context, window) (the
unmasked count, as nanoGPT's and PaLM's MFU figures use). A block shared by several depths counts
its parameters once and its FLOPs at every depth.
"""

from __future__ import annotations

import torch.nn as nn

from vslm.model.gpt import GPT


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (`parameters()` yields a tensor shared by several modules once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _matmul_weights(module: nn.Module | None) -> int:
    if module is None:
        return 0
    linears = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
    loras = sum(p.numel() for name, p in module.named_parameters() if name.startswith(("a.", "b.")))
    return linears + loras


def depth_flops_per_token(model: GPT, depth: int) -> dict[str, int]:
    """Training FLOPs per token at one depth: its block's matmuls (with the depth's width projection,
    token injection and LoRA) and its attention."""
    block = model.order[depth]
    spec, key = model.specs[block], str(depth)
    matmul = _matmul_weights(model.blocks[block])
    matmul += _matmul_weights(model.resize[key] if key in model.resize else None)
    matmul += _matmul_weights(model.inject[depth] if model.inject is not None else None)
    matmul += _matmul_weights(model.lora[key] if key in model.lora else None)
    keys = min(model.cfg.context, spec.window or model.cfg.context)
    return {"matmul": 6 * matmul, "attention": 12 * spec.heads * spec.head_dim * keys}


def training_flops_per_token(model: GPT) -> int:
    depths = sum(sum(depth_flops_per_token(model, d).values()) for d in range(len(model.order)))
    head = model.head.weight if model.head is not None else model.embed.weight  # (V, d_last)
    return depths + 6 * head.numel()


def model_flops_utilisation(flops_per_token: float, tokens_per_s: float, peak_flops_per_s: float) -> dict[str, float]:
    """Model FLOP/s (the model's training FLOPs per token, as counted above, times tokens per second)
    and MFU, their fraction of a peak FLOP/s; recomputation and padding do not count as model FLOPs."""
    model_flops_per_s = flops_per_token * tokens_per_s
    return {"model_flops_per_s": model_flops_per_s, "mfu": model_flops_per_s / peak_flops_per_s}
