"""Parameters and training FLOPs per token.

FLOPs follow the convention of Kaplan et al. (2020) and PaLM: 6 per weight of every matrix
multiply (2 forward, 4 backward), counting the output head even when it is tied to the embedding
(it is a real matmul) and not the embedding lookups (they are not); plus attention's score and
value products, 12 * heads * head_dim * keys per layer, with keys = min(context, window) (the
unmasked count, as nanoGPT's and PaLM's MFU figures use).
"""

from __future__ import annotations

import torch.nn as nn

from vslm.model.gpt import GPT


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tensor shared by several places is counted once)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def block_flops_per_token(model: GPT, index: int) -> dict[str, int]:
    """Training FLOPs per token of one block: matmuls and attention."""
    block, spec = model.blocks[index], model.specs[index]
    matmul = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    keys = min(model.cfg.context, spec.window or model.cfg.context)
    return {"matmul": 6 * matmul, "attention": 12 * spec.heads * spec.head_dim * keys}


def training_flops_per_token(model: GPT) -> int:
    blocks = sum(sum(block_flops_per_token(model, i).values()) for i in range(len(model.blocks)))
    head = 6 * model.embed.weight.numel()  # (V, d), tied or not
    return blocks + head
