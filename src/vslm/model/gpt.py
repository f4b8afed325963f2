"""The GPT, read top to bottom: embed, a stack of blocks built from per-block records, norm, head.

Variants are data: each block is built from its `BlockSpec` (width, heads, FFN size, window), never
from a subclass. With the `nanogpt` settings (learned positions, LayerNorm without bias, GELU,
tied head, init N(0, 0.02) with residual projections scaled by 1/sqrt(2 * depth)) it computes
exactly what `shared/bench/reference_gpt.py` computes (tests/test_model.py copies weights across).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vslm.config import BlockSpec, ModelConfig
from vslm.model.attention import Attention
from vslm.model.layers import MLP, make_norm


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, spec: BlockSpec, cfg: ModelConfig):
        super().__init__()
        rope_base = cfg.rope_base if cfg.position == "rope" else None
        self.attn_norm = make_norm(cfg.norm, spec.width, cfg.norm_eps, cfg.bias)
        self.attn = Attention(spec, cfg.context, rope_base, cfg.bias, cfg.dropout)
        self.mlp_norm = make_norm(cfg.norm, spec.width, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(spec.width, spec.ffn, cfg.mlp, cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be set (the trainer sets it from the tokenizer)")
        self.cfg = cfg
        self.specs = cfg.block_specs()
        width = self.specs[0].width
        if any(s.width != width for s in self.specs):
            raise NotImplementedError("blocks of different widths need width projections (not built yet)")
        self.embed = nn.Embedding(cfg.vocab_size, width)
        self.pos = nn.Embedding(cfg.context, width) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(spec, cfg) for spec in self.specs)
        self.norm = make_norm(cfg.norm, width, cfg.norm_eps, cfg.bias)
        # a tied head reuses the embedding matrix in forward(): one tensor, nothing shared to save twice
        self.head = None if cfg.tie_embeddings else nn.Linear(width, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for every matrix; residual output projections scaled by 1/sqrt(2 * depth)."""
        residual_std = self.cfg.init_std / math.sqrt(2 * len(self.blocks))
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = residual_std if name.endswith(("attn.proj.weight", "mlp.proj.weight")) else self.cfg.init_std
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits."""
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.cfg.context}")
        x = self.embed(idx)  # (B, T, d)
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append `new_tokens` sampled tokens to idx (B, T); temperature 0 is greedy."""
        for _ in range(new_tokens):
            logits = self(idx[:, -self.cfg.context :])[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
