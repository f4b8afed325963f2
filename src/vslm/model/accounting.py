"""Parameters and training FLOPs per token.

FLOPs follow the convention of Kaplan et al. (2020) and PaLM: 6 per weight of every matrix
multiply (2 forward, 4 backward), counting the output head even when it is tied to the embedding
(it is a real matmul) and not the embedding lookups (they are not); plus attention's score and
value products, 12 * heads * head_dim * keys per depth, with keys = min(context, window) (the
unmasked count, as nanoGPT's and PaLM's MFU figures use). A block shared by several depths counts
its parameters once and its FLOPs at every depth.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn

from vslm.config import ModelConfig
from vslm.model.gpt import GPT


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (`parameters()` yields a tensor shared by several modules once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class StepKernels(NamedTuple):
    """The matrix products and attention calls one token goes through in a forward pass, one entry per
    use (a block shared by several depths at each of them)."""

    matmuls: list[tuple[int, int]]  # (fan_in, fan_out)
    attention: list[tuple[int, int, int, int]]  # (heads, kv_heads, head_dim, keys)


def _linear_shapes(module: nn.Module | None) -> list[tuple[int, int]]:
    return [] if module is None else [(m.in_features, m.out_features) for m in module.modules()
                                      if isinstance(m, nn.Linear)]


def depth_kernels(model: GPT, depth: int) -> StepKernels:
    """One depth's block matmuls (with the depth's width projection, token injection and LoRA: x A^T, then
    B) and its attention."""
    block = model.order[depth]
    spec, key = model.specs[block], str(depth)
    matmuls = _linear_shapes(model.blocks[block])
    matmuls += _linear_shapes(model.resize[key] if key in model.resize else None)
    matmuls += _linear_shapes(model.inject[depth] if model.inject is not None else None)
    if key in model.lora:
        lora = model.lora[key]
        for name, a in lora.a.items():
            (rank, fan_in), fan_out = a.shape, lora.b[name].shape[0]
            matmuls += [(fan_in, rank), (rank, fan_out)]
    keys = min(model.cfg.context, spec.window or model.cfg.context)
    return StepKernels(matmuls, [(spec.heads, spec.kv_heads, spec.head_dim, keys)])


def step_kernels(model: GPT) -> StepKernels:
    """Every depth's kernels (`depth_kernels`), then the output head's products (a projection to a tied
    head's embedding width, if any, and the head)."""
    depths = [depth_kernels(model, d) for d in range(len(model.order))]
    head = model.head.weight if model.head is not None else model.embed.weight  # (V, d_last)
    return StepKernels([s for k in depths for s in k.matmuls] + _linear_shapes(model.unembed)
                       + [(head.shape[1], head.shape[0])],
                       [a for k in depths for a in k.attention])


def kernel_flops(kernels: StepKernels) -> int:
    """Training FLOPs per token of these kernels: 6 per matmul weight, 12 * heads * head_dim * keys per attention."""
    return (6 * sum(fan_in * fan_out for fan_in, fan_out in kernels.matmuls)
            + sum(12 * heads * head_dim * keys for heads, _, head_dim, keys in kernels.attention))


def depth_flops_per_token(model: GPT, depth: int) -> int:
    return kernel_flops(depth_kernels(model, depth))


def training_flops_per_token(model: GPT) -> int:
    return kernel_flops(step_kernels(model))


def model_flops_utilisation(flops_per_token: float, tokens_per_s: float, peak_flops_per_s: float) -> dict[str, float]:
    """Model FLOP/s (the model's training FLOPs per token, as counted above, times tokens per second)
    and MFU, their fraction of a peak FLOP/s; recomputation and padding do not count as model FLOPs."""
    model_flops_per_s = flops_per_token * tokens_per_s
    return {"model_flops_per_s": model_flops_per_s, "mfu": model_flops_per_s / peak_flops_per_s}


def parameter_estimate(cfg: ModelConfig, vocab_size: int) -> int:
    """The parameters GPT(cfg) will have, counted from the config alone (nothing is built, so a
    config of a million blocks is sized in milliseconds): tests/test_reliability.py checks it equals
    `parameter_count` of the built model."""
    specs, order = cfg.block_specs(), cfg.depth_order()
    widths = [specs[b].width for b in order]
    embed = cfg.token_width(widths[0])
    norm = 0 if cfg.ngpt else (2 if cfg.norm == "layernorm" and cfg.bias else 1)  # weight (and bias) per channel
    total = vocab_size * embed + (cfg.context * embed if cfg.position == "learned" else 0)
    if cfg.root == "learned":
        total += (cfg.context if cfg.root_per_position else 1) * widths[0]
    if cfg.injects():
        total += sum(embed * w for w in widths) + len(widths)
    shapes = []  # per unique block: its Linear layers as (fan_in, fan_out), for recursion LoRA too
    for s in specs:
        layers = [(s.width, (s.heads + 2 * s.kv_heads) * s.head_dim), (s.heads * s.head_dim, s.width)]
        if cfg.mlp != "none":
            layers += [(s.width, (2 if cfg.mlp == "swiglu" else 1) * s.ffn), (s.ffn, s.width)]
        shapes.append(layers)
        total += sum(i * o + (o if cfg.bias else 0) for i, o in layers)
        total += norm * s.width * (2 if cfg.mlp != "none" else 1) + (s.heads if s.attention == "ssmax" else 0)
        if cfg.ngpt:  # the rates alpha (per channel, attention and MLP), s_qk per key head, the MLP's s_u (or s_uv)
            total += s.width + s.kv_heads * s.head_dim + (s.width + layers[2][1] if cfg.mlp != "none" else 0)
    before = [embed if cfg.root == "token" else widths[0], *widths[:-1]]
    total += sum(i * o for i, o in zip(before, widths, strict=True) if i != o)
    if cfg.recursion_lora_rank:
        shared = [d for d, b in enumerate(order) if order.count(b) > 1]
        total += sum(cfg.recursion_lora_rank * (i + o) for d in shared for i, o in shapes[order[d]])
    total += norm * widths[-1] + (0 if cfg.tie_embeddings else widths[-1] * vocab_size)
    total += vocab_size if cfg.ngpt else 0  # s_z, the logits' scale per token
    total += widths[-1] * embed if cfg.tie_embeddings and widths[-1] != embed else 0  # GPT.unembed
    return total
