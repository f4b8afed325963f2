"""Building blocks: norms, nGPT's unit vectors and learned scales, MLPs, width projections, per-depth LoRA,
hook points."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(kind: str, width: int, eps: float, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps, bias=bias)
    return nn.RMSNorm(width, eps=eps)


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x divided by its norm along `dim` (nGPT's normalisation: no gain, no mean removed)."""
    return F.normalize(x, dim=dim)


class Scale(nn.Module):
    """A learned per-channel scale of nGPT (Loshchilov et al. 2024, section 2.6): the parameter is stored at
    `stored` and used times value / stored, so that it starts at `value` and an optimizer's step on it moves
    the used scale value / stored times as far (the paper's s_init / s_scale)."""

    def __init__(self, n: int, value: float, stored: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n,), float(stored)))
        self.factor = value / stored

    def forward(self) -> torch.Tensor:
        return self.weight * self.factor


class DepthLoRA(nn.Module):
    """Low-rank deltas for the linear layers of a shared block at one depth (relaxed recursion,
    Bae et al. 2024): W x + B A x, with B = 0 at init so the shared block is unchanged."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int):
        super().__init__()
        self.a = nn.ParameterDict({k: nn.Parameter(torch.empty(rank, fan_in)) for k, (fan_in, _) in shapes.items()})
        self.b = nn.ParameterDict({k: nn.Parameter(torch.zeros(fan_out, rank)) for k, (_, fan_out) in shapes.items()})
        for a in self.a.values():
            nn.init.normal_(a, 0.0, 1.0 / math.sqrt(a.shape[1]))

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a[name]), self.b[name])


def linear(layer: nn.Linear, x: torch.Tensor, lora: DepthLoRA | None, name: str) -> torch.Tensor:
    """layer(x), plus the depth's LoRA delta when there is one."""
    y = layer(x)
    return y if lora is None else y + lora.delta(name, x)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with no call at all where it is the identity (eval, or p = 0: it draws no random numbers
    then either), which a one-token sampling step would otherwise pay at every residual."""
    return F.dropout(x, p, True) if training and p > 0 else x


def partial_identity_(weight: torch.Tensor) -> torch.Tensor:
    """Identity on the shared dimensions, zero elsewhere: a width change that starts lossless."""
    with torch.no_grad():
        weight.zero_()
        n = min(weight.shape)
        weight[:n, :n] = torch.eye(n)
    return weight


class HookPoint(nn.Module):
    """An identity at a named place of the forward pass. Probes attach with `register_forward_hook`
    (see `vslm.model.hooks.capture`); the model checks `active` first, so an unused hook costs
    one attribute lookup."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU, ReLU squared, or SwiGLU (gate and value in one matmul). Under nGPT
    (`ngpt`) the hidden pre-activations, cosines of unit rows and a unit stream, are scaled by a learned
    s_u (s_uv for SwiGLU's two halves) that starts at sqrt(width): the paper's, to bring them to order one."""

    def __init__(self, width: int, hidden: int, kind: str, bias: bool, ngpt: bool = False):
        super().__init__()
        self.kind = kind
        gated = kind == "swiglu"
        self.fc = nn.Linear(width, (2 if gated else 1) * hidden, bias=bias)
        self.proj = nn.Linear(hidden, width, bias=bias)
        self.hidden_scale = Scale(self.fc.out_features, math.sqrt(width), 1.0) if ngpt else None

    def forward(self, x: torch.Tensor, lora: DepthLoRA | None = None) -> torch.Tensor:
        h = linear(self.fc, x, lora, "mlp_fc")
        if self.hidden_scale is not None:
            h = h * self.hidden_scale()
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return linear(self.proj, h, lora, "mlp_proj")
