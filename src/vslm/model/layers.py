"""Building blocks shared by every block: norms and MLPs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(kind: str, width: int, eps: float, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps, bias=bias)
    return nn.RMSNorm(width, eps=eps)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU, ReLU squared, or SwiGLU (gate and value in one matmul)."""

    def __init__(self, width: int, hidden: int, kind: str, bias: bool):
        super().__init__()
        self.kind = kind
        gated = kind == "swiglu"
        self.fc = nn.Linear(width, (2 if gated else 1) * hidden, bias=bias)
        self.proj = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return self.proj(h)
