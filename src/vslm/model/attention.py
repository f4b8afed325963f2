"""Causal self-attention with grouped key/value heads, RoPE and an optional sliding window."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vslm.config import BlockSpec


def window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    """(T, T) bool, True where query i may see key j: 0 <= i - j < window."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (i - j >= 0) & (i - j < window)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form), tables precomputed up to the context length."""

    def __init__(self, head_dim: int, context: int, base: float):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)  # (T, hd/2)
        # not persistent: derived from the config, so checkpoints hold only learned weights
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, T, hd)
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: BlockSpec, context: int, rope_base: float | None, bias: bool, dropout: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.window = spec.window
        self.dropout = dropout
        self.qkv = nn.Linear(spec.width, (spec.heads + 2 * spec.kv_heads) * spec.head_dim, bias=bias)
        self.proj = nn.Linear(spec.heads * spec.head_dim, spec.width, bias=bias)
        self.rotary = Rotary(spec.head_dim, context, rope_base) if rope_base else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, KV, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        mask = None if self.window is None or self.window >= T else window_mask(T, self.window, x.device)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=KV != H,
        )  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * hd))
