"""How much memory a run needs, estimated from its config before anything is built, and whether
the device has it: a model of a billion-wide layer, a context of a billion tokens or a batch of a
billion rows is refused in one line (with the estimate) instead of ending in an allocation error
after minutes.

    weights      4 bytes per parameter (float32 master weights)
    gradients    4 bytes per trainable parameter
    optimizer    8 bytes per parameter (AdamW's two moments; Muon and tangent descent keep at most as much)
    activations  what the backward pass keeps, per micro-batch of B rows of T tokens (2 bytes a value
                 under bf16 autocast, else 4): per depth about 10 * width + 2 * FFN values a token
                 (3 * FFN with SwiGLU), B * heads * T * T attention values for the normalisations that
                 materialise them (all but softmax, which SDPA computes without): the scores in the compute
                 dtype and the weights in float32 (softmax and exp run in float32 under autocast, key counts
                 are float32), under bf16 also the weights cast for `@ v`, whatever the window (it masks the
                 T x T scores): 8 bytes an element in float32 (measured: what autograd saves, within 2%), 8
                 under bf16 (worked out, not measured: about 6 for sigmoid, 10 for power and softmax1); and the
                 logits three times over (logits, their float copy, their gradient)
    buffers      RoPE's cos and sin tables, context * head_dim values per unique block

The figures are estimates, good to a factor of about two; the check refuses only what exceeds the
device's memory (CUDA: the GPU's; CPU: physical RAM), so a run that fits is never refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vslm.config import RunConfig
from vslm.model.accounting import parameter_estimate

GIB = 2**30
TOKENIZER_VOCAB = {"char": 256, "byte": 257, "gpt2": 50257}  # a char vocabulary is the text's; 256 bounds most


def vocab_estimate(cfg: RunConfig) -> int:
    return cfg.model.vocab_size or TOKENIZER_VOCAB.get(cfg.data.tokenizer, cfg.data.vocab_size)


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    weights: float  # bytes: weights, gradients and optimizer state
    activations: float
    buffers: float
    batch: int  # rows per micro-batch on one process

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.buffers

    def line(self) -> str:
        return (f"about {size(self.total)}: {self.params:,} parameters ({size(self.weights)} with gradients "
                f"and optimizer state), activations {size(self.activations)} at {self.batch:,} rows a micro-batch"
                + (f", RoPE tables {size(self.buffers)}" if self.buffers else ""))


def size(n: float) -> str:
    """Bytes as MiB, GiB or TiB (scientific beyond 10^6 TiB)."""
    for unit, scale in (("MiB", 2**20), ("GiB", GIB), ("TiB", 2**40)):
        if n < 1024 * scale or unit == "TiB":
            value = n / scale
            return f"{value:.3g} {unit}" if value < 1e6 else f"{value:.1e} {unit}"
    raise AssertionError


def estimate_memory(cfg: RunConfig, processes: int = 1, bf16: bool = False) -> MemoryEstimate:
    m, t = cfg.model, cfg.train
    vocab = vocab_estimate(cfg)
    params = parameter_estimate(m, vocab)
    specs, order = m.block_specs(), m.depth_order()
    B, T = max(1, t.batch_size // processes), m.context
    value = 2 if bf16 else 4
    per_token = 0
    scores = 0
    for b in order:
        s = specs[b]
        ffn = 0 if m.mlp == "none" else (3 if m.mlp == "swiglu" else 2) * s.ffn
        per_token += 10 * s.width + ffn
        if s.attention != "softmax":  # bytes a token: a window only masks the T x T scores
            scores += s.heads * T * (value + 4 + (value if bf16 else 0))
    activations = value * B * T * per_token + B * T * scores + 4 * 3 * B * T * vocab
    buffers = 4 * 2 * T * sum(s.head_dim for s in specs) if m.position == "rope" else 0
    return MemoryEstimate(params, 16.0 * params, float(activations), float(buffers), B)


def device_memory(device: torch.device) -> float | None:
    """Bytes of memory the device has: the GPU's, or physical RAM; None where unknown."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None
