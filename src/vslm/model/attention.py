"""Causal self-attention: grouped key/value heads, RoPE, a sliding window, and a family of
normalisations of the attention scores.

`softmax` without anyone watching the weights takes the fast path (scaled_dot_product_attention).
The others compute the (B, H, T, T) weights explicitly; with s the scaled scores of the keys a
query can see and n their number:
  power     a = exp(s) / Z^gamma, Z = sum exp(s)    (weights sum to Z^(1 - gamma); gamma = 1 is softmax)
  softmax1  a = exp(s) / (1 + Z)                    (Miller 2023: a head may attend to nothing)
  ssmax     softmax(s * c_h * log n), c_h learned   (Nakanishi 2025, scalable softmax)
  sigmoid   a = sigmoid(s - log n)                  (Ramapuram et al. 2024)

Under nGPT (`ngpt`) queries and keys are unit vectors per head (after RoPE), scaled per channel by a learned
s_qk (one per key head, shared by its query heads) that starts at 1, and the scores are sqrt(head_dim)
times their dot products (Loshchilov et al. 2024): cosines with a temperature that can be learned.

For generation a `KVCache` per depth keeps the keys (after RoPE) and values of the positions seen so
far; new queries attend to them through the same mask and the same normalisation, n counting the keys
each query sees, so every variant computes what the full sequence computes at that position.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vslm.config import BlockSpec
from vslm.model.layers import DepthLoRA, Scale, dropout, linear, unit


def window_mask(T: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(T, T) bool, True where query i may see key j: 0 <= i - j < window (window None = all of i's past)."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    visible = i >= j
    return visible if window is None else visible & (i - j < window)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form), tables precomputed up to the context length and
    extended when a sliding generation (`GPT.generate(slide=True)`) goes past it. The tables hold cos
    and sin twice over, the sin's first half negated, so a rotation is x * cos + swap(x) * sin, the swap one
    roll by half the head: four ops instead of seven, the same numbers as (x1 cos - x2 sin, x2 cos + x1 sin)
    bit for bit."""

    def __init__(self, head_dim: int, context: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base  # plain numbers: a cast to half precision cannot round them
        self._tables(context)

    def _tables(self, n: int) -> None:
        # float32 from the config's numbers every time, so tables extended after model.to(bfloat16) equal
        # those built at init; buffers not persistent: derived from the config, checkpoints hold only weights
        device = self.cos.device if hasattr(self, "cos") else None
        with torch.inference_mode(False):  # plain tensors even when generate runs in inference mode
            inv_freq = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
                                           / self.head_dim)
            angles = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)
            cos, sin = angles.cos(), angles.sin()  # (n, hd/2)
            self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (n, hd)
            self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def reach(self, n: int) -> None:
        """Tables for at least n positions (the first ones unchanged, bit for bit): before torch.compile, so that
        a longer evaluation (GPT.forward's extend) does not grow them under a compiled forward."""
        if n > self.cos.shape[0]:
            self._tables(n)

    def rotate(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # (B, H, T, hd), positions from offset
        # a method, not forward: a module call costs more than the rotation in a one-token sampling step
        T = x.shape[-2]
        if offset + T > self.cos.shape[0]:  # past the context (sliding generation): the same formula, further
            self._tables(max(offset + T, 2 * self.cos.shape[0]))
        cos, sin = self.cos[offset : offset + T].to(x.dtype), self.sin[offset : offset + T].to(x.dtype)
        return x * cos + x.roll(self.head_dim // 2, dims=-1) * sin  # the roll: (x2, x1)


class KVCache:
    """The keys (after RoPE) and values of one depth for the positions seen so far, for generation.
    With a window only the keys a later query can still see are kept (the last window - 1). They sit in
    a buffer with room to grow: a step writes its keys after the held ones, and the held keys move to
    the front only when the room runs out (once per about a window of steps, not a copy every step).
    Those in-place writes make it a no-grad tool: generation only, never a forward to backpropagate."""

    def __init__(self, window: int | None):
        self.window, self.seen = window, 0
        self.k: torch.Tensor | None = None  # buffers (B, KV, room, hd); the held keys at [off, off + n)
        self.v: torch.Tensor | None = None
        self.off = self.n = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append T new positions' keys and values (B, KV, T, hd); return every key the new queries may
        see, with the (T, K) mask of which query sees which key (None: each sees every key)."""
        T, n = k.shape[-2], self.n
        if self.k is None or self.off + n + T > self.k.shape[-2]:
            room = max(2 * (n + T), n + T + (self.window or 0))
            fresh_k = k.new_empty(*k.shape[:-2], room, k.shape[-1])
            fresh_v = v.new_empty(*v.shape[:-2], room, v.shape[-1])
            if n:  # the held keys to the front of the new buffer
                held = slice(self.off, self.off + n)
                fresh_k[..., :n, :], fresh_v[..., :n, :] = self.k[..., held, :], self.v[..., held, :]
            self.k, self.v, self.off = fresh_k, fresh_v, 0
        self.k[..., self.off + n : self.off + n + T, :], self.v[..., self.off + n : self.off + n + T, :] = k, v
        K, start = n + T, self.seen  # the new queries sit at positions start .. start + T - 1
        keys, values = self.k[..., self.off : self.off + K, :], self.v[..., self.off : self.off + K, :]
        self.seen += T
        keep = K if self.window is None else min(K, self.window - 1)
        self.off, self.n = self.off + K - keep, keep
        if T == 1 and (self.window is None or K <= self.window):
            return keys, values, None
        i = torch.arange(start, start + T, device=k.device)[:, None]
        j = torch.arange(start + T - K, start + T, device=k.device)[None, :]  # the keys' positions
        visible = i >= j
        return keys, values, visible if self.window is None else visible & (i - j < self.window)


def normalise(scores: torch.Tensor, visible: torch.Tensor, kind: str, gamma: float,
              ssmax_scale: torch.Tensor | None) -> torch.Tensor:
    """Attention weights (B, H, T, T) from scaled scores, zero where a key is not visible."""
    masked = scores.masked_fill(~visible, float("-inf"))
    # (T, 1) keys each query sees, in float32: bf16 scores (CUDA autocast) would round counts past 256 (301: 300)
    n = visible.sum(-1, keepdim=True).to(torch.float32)
    if kind == "softmax":
        return masked.softmax(-1)
    if kind == "ssmax":
        scaled = scores * ssmax_scale.view(1, -1, 1, 1) * n.log()
        return scaled.masked_fill(~visible, float("-inf")).softmax(-1)
    if kind == "sigmoid":
        return torch.sigmoid(scores - n.log()).masked_fill(~visible, 0.0)
    lse = masked.logsumexp(-1, keepdim=True)  # log Z
    if kind == "power":
        return torch.exp(masked - gamma * lse)
    return torch.exp(masked - F.softplus(lse))  # softmax1: log(1 + Z) = softplus(log Z)


class Attention(nn.Module):
    def __init__(self, spec: BlockSpec, context: int, rope_base: float | None, bias: bool, dropout: float,
                 ngpt: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.window, self.kind, self.gamma = spec.window, spec.attention, spec.attention_gamma
        self.context = context
        self.dropout = dropout
        self.qkv = nn.Linear(spec.width, (spec.heads + 2 * spec.kv_heads) * spec.head_dim, bias=bias)
        self.proj = nn.Linear(spec.heads * spec.head_dim, spec.width, bias=bias)
        self.rotary = Rotary(spec.head_dim, context, rope_base) if rope_base else None
        # SSMax's per-head scale, initialised so that c_h * log n = 1 at the full context
        ssmax = self.kind == "ssmax"
        self.ssmax_scale = nn.Parameter(torch.full((spec.heads,), 1 / math.log(context))) if ssmax else None
        # nGPT's s_qk, stored at 1 / sqrt(width) as in the paper (its step sqrt(width) times a plain one's)
        self.qk_scale = Scale(spec.kv_heads * spec.head_dim, 1.0, 1 / math.sqrt(spec.width)) if ngpt else None

    def forward(self, x: torch.Tensor, lora: DepthLoRA | None = None, keep_weights: bool = False,
                cache: KVCache | None = None, extend: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, d) -> (B, T, d), and the weights (B, H, T, K) if kept (or not softmax); K = T without a
        cache, else the cached keys plus these T (which the cache then keeps). `extend`: a sequence past the
        context attends over all of its past (this layer's window, if any), not the last `context` keys."""
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        qk, v = linear(self.qkv, x, lora, "attn_qkv").split([(H + KV) * hd, KV * hd], dim=-1)
        qk = qk.view(B, T, H + KV, hd).transpose(1, 2)  # (B, H + KV, T, hd): queries' heads, then keys'
        if self.rotary is not None:  # one rotation for queries and keys together
            qk = self.rotary.rotate(qk, 0 if cache is None else cache.seen)
        if self.qk_scale is not None:  # nGPT: sqrt(hd) s_qk q_unit . s_qk k_unit, as SDPA's q . k / sqrt(hd)
            s = self.qk_scale().view(KV, 1, hd)
            qk = unit(qk) * (torch.cat((s.repeat_interleave(H // KV, dim=0), s)) * math.sqrt(hd))
        q, k = qk.split([H, KV], dim=1)  # (B, H, T, hd), (B, KV, T, hd)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        weights = None
        if cache is not None:
            k, v, visible = cache.update(k, v)
            if self.kind == "softmax" and not keep_weights:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=KV != H)
            else:
                if KV != H:
                    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
                if visible is None:
                    visible = torch.ones(T, k.shape[-2], dtype=torch.bool, device=x.device)
                weights = normalise((q @ k.transpose(-2, -1)) / math.sqrt(hd), visible, self.kind, self.gamma,
                                    self.ssmax_scale)
                y = weights.to(v.dtype) @ v  # (ssmax and sigmoid weights are float32: key counts in float32)
        elif self.kind == "softmax" and not keep_weights:
            window = self._window(T, extend)
            window = None if window is None or window >= T else window
            mask = None if window is None else window_mask(T, window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=KV != H,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        else:
            if KV != H:
                k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, T, T)
            visible = window_mask(T, self._window(T, extend), x.device)
            weights = normalise(scores, visible, self.kind, self.gamma, self.ssmax_scale)
            y = dropout(weights, self.dropout, self.training).to(v.dtype) @ v
        y = y.transpose(1, 2).reshape(B, T, H * hd)
        return linear(self.proj, y, lora, "attn_proj"), weights

    def _window(self, T: int, extend: bool = False) -> int | None:
        """The keys a query sees: this layer's window; past the context at most the last `context`, as in
        every training sequence (a sliding generation), unless `extend` (length generalisation: every key)."""
        if T <= self.context or extend:
            return self.window
        return self.context if self.window is None else min(self.window, self.context)
