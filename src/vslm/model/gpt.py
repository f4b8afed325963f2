"""The GPT, read top to bottom: the root of the residual stream, a stack of blocks laid out by
per-block records and a depth order, a final norm and the head.

Variants are data, never subclasses: each unique block is built from its `BlockSpec` (width,
heads, FFN size, window, attention normalisation); `order` says which block runs at each depth
(weight sharing and recursion: a shared block is one module, its gradient the sum over its
applications). Where the width changes between depths a bias-free projection, initialised as a
partial identity, joins them; where `embed_width` sets the embedding's width apart, the same kind of
projection joins the embedding to the first block and the last block to a tied head. The stream starts
from the token embedding (`root = token`) or from a learned vector (`root = learned`) with the token
injected at every depth.

With `ngpt` it is the normalised transformer (Loshchilov et al. 2024): the token embedding, the stream and
every matrix's vectors along the width are unit vectors (`sphere_matrices`, renormalised by `normalize_`
after each optimizer step); a block moves the stream toward the unit direction of its attention's (then
its MLP's) output by learned per-channel rates alpha (starting at 0.05) and renormalises, in place of a
pre-norm residual; there is no norm layer, and the logits are scaled per token by a learned s_z.

With the `nanogpt` settings (learned positions, LayerNorm without bias, GELU, tied head, init
N(0, 0.02) with residual projections scaled by 1/sqrt(2 * depth)) it computes exactly what
`shared/bench/reference_gpt.py` computes (tests/test_model.py copies weights across).

`generate` keeps each depth's keys and values (a `KVCache` per depth, not per block: a shared block
sees different inputs at each of its depths) and feeds only the new token, at its position. Beyond
the context the uncached path crops to the last `context` tokens and positions restart at 0, which
changes every key of the window; the cache then rebuilds from the cropped window at each step, as
costly as the uncached step, so that both give the same tokens (tests/test_kv_cache.py). With
`slide=True` (RoPE models) positions run on past the context and every layer attends to its last
`context` keys, uncached (the whole sequence, windowed) and cached alike: each key is computed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vslm.config import BlockSpec, ModelConfig, checked_model
from vslm.errors import ConfigError
from vslm.model.attention import Attention, KVCache
from vslm.model.layers import MLP, DepthLoRA, HookPoint, Scale, dropout, make_norm, partial_identity_, unit
from vslm.progress import quiet


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) (skipped when attention-only).
    nGPT's (`ngpt`): x <- unit(x + alpha_A (unit(attn(x)) - x)), then the same with the MLP and alpha_M, x a
    unit vector throughout; alpha is a per-channel rate, stored as the paper stores it (at 1 / sqrt(width),
    starting at 0.05), and used by its size."""

    ALPHA = 0.05  # nGPT's starting rate (alpha_A and alpha_M)

    def __init__(self, spec: BlockSpec, cfg: ModelConfig):
        super().__init__()
        rope_base = cfg.rope_base if cfg.position == "rope" else None
        ngpt = cfg.ngpt
        self.attn_norm = None if ngpt else make_norm(cfg.norm, spec.width, cfg.norm_eps, cfg.bias)
        self.attn = Attention(spec, cfg.context, rope_base, cfg.bias, cfg.dropout, ngpt)
        self.attn_alpha = Scale(spec.width, self.ALPHA, 1 / math.sqrt(spec.width)) if ngpt else None
        self.mlp_norm, self.mlp, self.mlp_alpha = None, None, None
        if cfg.mlp != "none":
            self.mlp_norm = None if ngpt else make_norm(cfg.norm, spec.width, cfg.norm_eps, cfg.bias)
            self.mlp = MLP(spec.width, spec.ffn, cfg.mlp, cfg.bias, ngpt)
            self.mlp_alpha = Scale(spec.width, self.ALPHA, 1 / math.sqrt(spec.width)) if ngpt else None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, lora: DepthLoRA | None = None, keep_weights: bool = False,
                cache: KVCache | None = None, extend: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.attn_alpha is not None:
            return self._normalised(x, lora, keep_weights, cache, extend)
        attended, weights = self.attn(self.attn_norm(x), lora, keep_weights, cache, extend)
        x = x + dropout(attended, self.dropout, self.training)
        if self.mlp is None:
            return x, weights
        return x + dropout(self.mlp(self.mlp_norm(x), lora), self.dropout, self.training), weights

    def _normalised(self, x: torch.Tensor, lora: DepthLoRA | None, keep_weights: bool, cache: KVCache | None,
                    extend: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(x, lora, keep_weights, cache, extend)
        x = unit(x + self.attn_alpha().abs() * (unit(dropout(attended, self.dropout, self.training)) - x))
        if self.mlp is None:
            return x, weights
        moved = unit(dropout(self.mlp(x, lora), self.dropout, self.training))
        return unit(x + self.mlp_alpha().abs() * (moved - x)), weights

    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        layers = {"attn_qkv": self.attn.qkv, "attn_proj": self.attn.proj}
        if self.mlp is not None:
            layers |= {"mlp_fc": self.mlp.fc, "mlp_proj": self.mlp.proj}
        return {name: (m.in_features, m.out_features) for name, m in layers.items()}


def check_sampling(temperature: float, top_k: int | None) -> None:
    """A ValueError naming the argument unless temperature is finite and >= 0 (0 = greedy) and top_k is
    None or at least 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be at least 1 (None = no cut), got {top_k!r}")


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        checked_model(cfg)  # fields assigned since it was made: one line naming the field, not a wrong model
        if cfg.vocab_size is None:
            raise ConfigError("model.vocab_size must be set (the trainer sets it from the tokenizer; "
                              "vslm.lab.runner.build_for_accounting counts a config's model without one)")
        self.cfg = cfg
        self.specs = cfg.block_specs()
        self.order = cfg.depth_order()
        widths = [self.specs[b].width for b in self.order]  # stream width at each depth
        embed_width = cfg.token_width(widths[0])

        self.embed = nn.Embedding(cfg.vocab_size, embed_width)
        self.pos = nn.Embedding(cfg.context, embed_width) if cfg.position == "learned" else None
        self.root = None
        if cfg.root == "learned":  # the stream starts from a learned vector (one per position, optionally)
            self.root = nn.Parameter(torch.empty(cfg.context if cfg.root_per_position else 1, widths[0]))
        self.inject = None
        if cfg.injects():  # x <- x + lambda_d * P_d(token) at each depth d (modded-nanogpt's x0 mixing)
            self.inject = nn.ModuleList(nn.Linear(embed_width, w, bias=False) for w in widths)
            first = 1.0 if cfg.root == "learned" else 0.0  # a learned root gets the token at depth 0
            self.inject_scale = nn.Parameter(torch.tensor([first] + [0.0] * (len(widths) - 1)))
        self.blocks = nn.ModuleList(Block(spec, cfg) for spec in self.specs)
        # width projections into depth d where it differs from the width before it
        before = [embed_width if self.root is None else widths[0], *widths[:-1]]
        self.resize = nn.ModuleDict({
            str(d): nn.Linear(w_in, w_out, bias=False)
            for d, (w_in, w_out) in enumerate(zip(before, widths, strict=True)) if w_in != w_out
        })
        shared = [d for d, b in enumerate(self.order) if self.order.count(b) > 1]
        self.lora = nn.ModuleDict({
            str(d): DepthLoRA(self.blocks[self.order[d]].lora_shapes(), cfg.recursion_lora_rank) for d in shared
        } if cfg.recursion_lora_rank else {})
        self.norm = None if cfg.ngpt else make_norm(cfg.norm, widths[-1], cfg.norm_eps, cfg.bias)
        # nGPT's s_z: the logits of a unit stream against unit token vectors are cosines; a learned scale per token
        self.logit_scale = Scale(cfg.vocab_size, 1.0, 1 / math.sqrt(widths[-1])) if cfg.ngpt else None
        # a tied head reuses the embedding matrix in forward(): one tensor, nothing shared to save twice;
        # a last block of another width than the embedding (model.embed_width) is projected to it first
        self.unembed = (nn.Linear(widths[-1], embed_width, bias=False)
                        if cfg.tie_embeddings and widths[-1] != embed_width else None)
        self.head = None if cfg.tie_embeddings else nn.Linear(widths[-1], cfg.vocab_size, bias=False)
        # named places where probes read activations (vslm.model.hooks), one per depth
        self.hooks = nn.ModuleDict({name: nn.ModuleList(HookPoint() for _ in self.order)
                                    for name in ("resid_pre", "attn", "resid_post")})
        self.reset_parameters()

    @classmethod
    def for_weights(cls, cfg: ModelConfig) -> GPT:
        """A GPT whose weights the caller loads next (a checkpoint, a snapshot): its random init, replaced,
        draws nothing from the session's random stream (a notebook's seed-then-load stays reproducible)."""
        with torch.random.fork_rng(devices=[]):  # built on the CPU: no device's stream is drawn on
            return cls(cfg)

    def reset_parameters(self) -> None:
        """N(0, init_std) for every matrix, residual output projections scaled by 1/sqrt(2 * depth);
        width projections and injections start as partial identities."""
        residual_std = self.cfg.init_std / math.sqrt(2 * len(self.order))
        for name, p in self.named_parameters():
            if name.startswith("lora."):
                continue  # DepthLoRA initialises itself
            if p.dim() == 2 and name.startswith(("resize.", "inject.", "unembed.")):
                partial_identity_(p)
            elif p.dim() == 2:
                std = residual_std if name.endswith(("attn.proj.weight", "mlp.proj.weight")) else self.cfg.init_std
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if self.root is not None:
            nn.init.normal_(self.root, 0.0, self.cfg.init_std)
        self.normalize_()

    def sphere_matrices(self) -> list[tuple[torch.Tensor, int]]:
        """nGPT's matrices with the dimension along which their vectors are unit: the embedding and head by
        token (dim 1), the layers reading the stream by row (dim 1), those writing to it by column (dim 0).
        Empty for other models."""
        if not self.cfg.ngpt:
            return []
        found = [(self.embed.weight, 1)] + ([] if self.head is None else [(self.head.weight, 1)])
        for block in self.blocks:
            found += [(block.attn.qkv.weight, 1), (block.attn.proj.weight, 0)]
            if block.mlp is not None:
                found += [(block.mlp.fc.weight, 1), (block.mlp.proj.weight, 0)]
        return found

    @torch.no_grad()
    def normalize_(self) -> None:
        """nGPT: every trainable matrix of `sphere_matrices` back to unit vectors (after each optimizer step;
        frozen ones, under an adapter, are left as they are)."""
        for w, dim in self.sphere_matrices():
            if w.requires_grad:
                w.copy_(unit(w, dim))

    def forward(self, idx: torch.Tensor, cache: list[KVCache] | None = None, slide: bool = False,
                extend: bool = False) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits. With a cache (`new_cache()`) idx continues the
        positions the cache holds, and the cache keeps idx's keys and values. Past the context (`slide_refusal`
        says which models can go there) `slide` lets each position attend to at most the last `context`, as in
        training; `extend` to all of its past (each layer's own window, if any): length generalisation, the
        loss at 2-4x the training context (RESEARCH.md section 3), uncached only."""
        B, T = idx.shape
        start = 0 if cache is None else cache[0].seen  # position of idx's first token
        if slide and extend or extend and cache is not None:
            raise ValueError("extend runs a whole sequence past the context: without slide and without a cache")
        if start + T > self.cfg.context and not ((slide or extend) and self.slide_refusal() is None):
            why = f" ({self.slide_refusal()})" if slide or extend else ""
            raise ValueError(f"sequence of {start + T} tokens is longer than the context {self.cfg.context}{why}")
        token = self.embed(idx)  # (B, T, d_embed)
        if self.pos is not None:
            token = token + self.pos(torch.arange(start, start + T, device=idx.device))
        if self.root is not None:
            root = self.root[start : start + T] if self.cfg.root_per_position else self.root
        x = dropout(token if self.root is None else root.expand(B, T, -1), self.cfg.dropout, self.training)
        if self.cfg.ngpt:
            x = unit(x)
        blocks, hooks = list(self.blocks), self.hooks  # plain lookups in the loop: a sampling step is all overhead
        points = zip(hooks["resid_pre"], hooks["attn"], hooks["resid_post"], strict=True)
        for depth, (b, (pre, attn, post)) in enumerate(zip(self.order, points, strict=True)):
            if str(depth) in self.resize:
                x = self.resize[str(depth)](x)
            if self.inject is not None:
                x = x + self.inject_scale[depth] * self.inject[depth](token)
            x = pre(x) if pre.active else x
            x, weights = blocks[b](x, self.lora[str(depth)] if str(depth) in self.lora else None, attn.active,
                                   None if cache is None else cache[depth], extend)
            if weights is not None and attn.active:
                attn(weights)
            x = post(x) if post.active else x
        if self.norm is not None:
            x = self.norm(x)
        if self.unembed is not None:
            x = self.unembed(x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        return logits if self.logit_scale is None else logits * self.logit_scale()

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache for `forward`, one per depth (a shared block runs at several); each keeps
        the keys its layer's window (at most the context) can still see."""
        C = self.cfg.context
        return [KVCache(C if self.specs[b].window is None else min(self.specs[b].window, C)) for b in self.order]

    def slide_refusal(self) -> str | None:
        """Why this model cannot run past its context with a sliding window, or None when it can: only
        relative positions (RoPE) extend; learned positions and a learned root per position end there."""
        if self.pos is not None:
            return "learned positions end at the context; going past it needs model.position=rope"
        if self.root is not None and self.cfg.root_per_position:
            return "a learned root per position ends at the context; going past it needs model.root_per_position=false"
        return None

    def cache_fallback(self) -> str | None:
        """Why `generate` cannot use a key/value cache with this model as it is now, or None when it can."""
        if self.training and self.cfg.dropout > 0:
            return "dropout is active (the model is in training mode): sampling without the key/value cache"
        if any(hook.active for points in self.hooks.values() for hook in points):
            return "hooks are attached (probes read whole sequences): sampling without the key/value cache"
        return None

    @torch.no_grad()
    def next_logits(self, idx: torch.Tensor, cache: list[KVCache] | None,
                    slide: bool = False) -> tuple[torch.Tensor, list[KVCache]]:
        """The float logits (B, V) after idx (B, T) through the cache of idx[:, :-1] (None: a fresh one), and
        the cache now holding idx. Beyond the context, by default (crop) the cache restarts from idx's last
        `context` tokens, positions from 0, as the uncached path computes them; with `slide` it keeps going,
        each layer seeing the last `context` keys."""
        if slide:
            cache = cache or self.new_cache()
            return self(idx[:, cache[0].seen :], cache, slide=True)[:, -1, :].float(), cache
        if cache is None or idx.shape[1] > self.cfg.context:
            cache = self.new_cache()
        window = idx[:, -self.cfg.context :]
        return self(window[:, cache[0].seen :], cache)[:, -1, :].float(), cache

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None, track: Callable = quiet, cache: bool = True,
        slide: bool = False, vocab: int | None = None,
    ) -> torch.Tensor:
        """Append `new_tokens` sampled tokens to idx (B, T); temperature 0 is greedy, top_k None keeps every token.
        `cache` keeps keys and values between steps unless `cache_fallback()` gives a reason not to; the
        tokens are those of cache=False, the logits equal within float rounding.
        Past the context the default crops, as nanoGPT does: each step reads the last `context` tokens with
        positions from 0, so every layer is recomputed and the cache cannot save work there. `slide` keeps
        positions running and lets every layer attend to its last `context` keys (a sliding window, as in
        Mistral; RoPE models only, `slide_refusal`): each token's keys are computed once, and the cache
        keeps its speed past the context (without the cache a sliding step reruns the whole sequence, its cost
        growing with the length). The two give different tokens there; each path gives its own.
        `vocab`: only ids below it are drawn (a model.vocab_size padded past the tokenizer's: the ids above stand
        for no text). Out-of-range arguments are a ValueError naming the argument. `track` shows progress
        (vslm.progress)."""
        check_sampling(temperature, top_k)
        if vocab is not None and not 1 <= vocab <= self.cfg.vocab_size:
            raise ValueError(f"vocab must be 1 to the model's vocab_size {self.cfg.vocab_size}, got {vocab}")
        if slide and (why := self.slide_refusal()) is not None:
            raise ValueError(f"slide=True: {why}")
        if new_tokens < 0:
            raise ValueError(f"new_tokens must be at least 0, got {new_tokens}")
        if idx.dim() != 2 or idx.shape[0] < 1 or idx.shape[1] < 1:
            raise ValueError(f"idx must be (batch, time) with at least one row and one token, got {tuple(idx.shape)}")
        cached = cache and self.cache_fallback() is None
        # inference mode drops autograd's bookkeeping (about 10% of a cached step); without the cache hooks
        # may be attached, and what they capture must stay usable tensors, so plain no_grad there
        with torch.inference_mode() if cached else torch.no_grad():
            idx = self._sample_loop(idx, new_tokens, temperature, top_k, generator, track, cached, slide, vocab)
        return idx.clone()  # a plain tensor again, usable anywhere

    def _sample_loop(self, idx: torch.Tensor, new_tokens: int, temperature: float, top_k: int | None,
                     generator: torch.Generator | None, track: Callable, cached: bool, slide: bool,
                     vocab: int | None) -> torch.Tensor:
        kv = None
        for _ in track(range(new_tokens), "generating tokens"):
            if cached:
                logits, kv = self.next_logits(idx, kv, slide)
            elif slide:
                logits = self(idx, slide=True)[:, -1, :].float()
            else:
                logits = self(idx[:, -self.cfg.context :])[:, -1, :].float()
            if vocab is not None:  # the ids a padded vocabulary adds are never drawn: an id is its column
                logits = logits[:, :vocab]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:  # from the largest, so that a tiny temperature (1e-40) cannot overflow to inf - inf = NaN
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
