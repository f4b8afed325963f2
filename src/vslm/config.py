"""One typed, validated config tree: model, data, train, logging.

TOML files and command-line overrides are two views of the same tree. Every field is declared once
here, with its type and bounds; an unknown key or a bad value fails where the config is loaded,
with one line naming the field (`ConfigError`).

    cfg = load_config("demo", ["train.steps=500", "model.width=192"])

A config file may start from another with `base = "NAME"` (a built-in name, or a path: a relative one
is looked up beside the file that names it); its tables are merged key by key, and the file's own
values win.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tomllib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vslm.errors import ConfigError, did_you_mean, repeated
from vslm.files import write_text

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
DEFAULT_MAX_BYTES = 8_000_000


def _holds_tuple(annotation: Any) -> bool:
    return get_origin(annotation) is tuple or any(_holds_tuple(a) for a in get_args(annotation))


@functools.cache
def _tuple_fields(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for name, f in cls.model_fields.items() if _holds_tuple(f.annotation))


class _Section(BaseModel):
    # forbid: a typo in a key is an error, never a silently ignored setting; every float is finite
    # (inf is refused like nan, in every section and in tuples and per-block records alike); strict: a value
    # of another type is an error, not converted (steps = "5", lr = "1e-3", progress = "no", depth = 4.0),
    # save that an int is a float and an array (TOML, JSON) is a tuple
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _arrays_are_tuples(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        tuples = _tuple_fields(cls)
        if not tuples:
            return data
        return {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()}


# ----------------------------------------------------------------------------------------- model


Attention = Literal["softmax", "power", "softmax1", "ssmax", "sigmoid"]


class BlockConfig(_Section):
    """Per-block overrides of the model-wide defaults and schedules; a field left out keeps them."""

    width: PositiveInt | None = None
    heads: PositiveInt | None = None
    kv_heads: PositiveInt | None = None
    ffn: PositiveInt | None = None
    window: PositiveInt | None = None
    attention: Attention | None = None
    attention_gamma: NonNegativeFloat | None = None


@dataclass(frozen=True)
class BlockSpec:
    """One unique transformer block, fully resolved: what the model builds."""

    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    window: int | None = None  # None = full causal attention; w = keys j with 0 <= i - j < w
    attention: str = "softmax"
    attention_gamma: float = 1.0


class ScheduleConfig(_Section):
    """Per-block values generated from a few numbers; explicit `model.blocks` records win over them."""

    widths: Literal["uniform", "increasing", "decreasing", "small-large-small", "large-small-large"] = "uniform"
    width_range: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(low, high) block widths")
    windows: Literal["full", "increasing", "decreasing", "small-large-small", "large-small-large",
                     "interleave"] = "full"
    window_range: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(low, high); >= context: full")
    global_every: PositiveInt = Field(2, description="interleave: every k-th block attends globally")
    layer_scaling: Literal["uniform", "openelm"] = "uniform"
    heads_scale: tuple[PositiveFloat, PositiveFloat] = (0.5, 1.0)
    ffn_scale: tuple[PositiveFloat, PositiveFloat] = (0.5, 4.0)

    @model_validator(mode="after")
    def _ranges_ascend(self) -> ScheduleConfig:
        for name in ("width_range", "window_range"):
            pair = getattr(self, name)
            if pair is not None and pair[0] > pair[1]:
                raise ValueError(f"{name} {list(pair)} must be (low, high); the shape sets the direction")
        if self.widths != "uniform" and self.width_range is None:  # else every block at model.width, silently
            raise ValueError(f"widths = {self.widths} needs width_range = [low, high], the narrowest and widest block")
        return self


MAX_DEPTH = 2048  # blocks applied in sequence: past it, building a model takes Python objects by the minute


class ModelConfig(_Section):
    vocab_size: PositiveInt | None = Field(None, description="None = the tokenizer's vocabulary size")
    context: PositiveInt = 256
    depth: PositiveInt = Field(4, description="blocks applied in sequence (with sharing, some more than once)")
    width: PositiveInt = 128
    heads: PositiveInt = 4
    kv_heads: PositiveInt | None = Field(None, description="key/value heads (GQA); None = heads")
    head_dim: PositiveInt | None = Field(None, description="None = width / heads")
    embed_width: PositiveInt | None = Field(
        None, description="token embedding (and tied head) width; None = the first block's (token root) or width "
                          "(learned root); where it differs, a projection joins the embedding to the first block "
                          "(token root) and the last block to a tied head")
    ffn_mult: PositiveFloat = 4.0
    ffn: PositiveInt | None = Field(None, description="MLP hidden size; None = ffn_mult * width")
    mlp: Literal["gelu", "relu2", "swiglu", "none"] = Field("gelu", description="none = attention-only blocks")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: PositiveFloat = 1e-5
    position: Literal["learned", "rope"] = "learned"
    rope_base: PositiveFloat = 10000.0
    tie_embeddings: bool = True
    bias: bool = False
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    init_std: PositiveFloat = 0.02
    window: PositiveInt | None = Field(None, description="sliding attention window; None = full")
    attention: Attention = Field("softmax", description="normalisation of attention scores")
    attention_gamma: NonNegativeFloat = Field(1.0, description="power: a = exp(s) / Z^gamma")
    order: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="unique block run at each depth")
    sharing: Literal["none", "immediate", "cyclic", "all"] = "none"
    unique_blocks: PositiveInt | None = Field(None, description="immediate/cyclic sharing; None = depth / 2")
    recursion_lora_rank: NonNegativeInt = Field(0, description="per-depth LoRA on shared blocks; 0 = off")
    ngpt: bool = Field(
        False, description="nGPT (Loshchilov et al. 2024), the normalised transformer: the stream, the embeddings and "
                           "every matrix's vectors along the width on the unit sphere (renormalised after each "
                           "optimizer step, no weight decay there); each block moves the stream toward its output by "
                           "learned per-channel rates, then renormalises; cosine attention with learned scales; no "
                           "norm layers (model.norm is not read: a base config's choice may stay); needs RoPE, no "
                           "biases, one width, no recursion LoRA. It wants a higher lr than the GPT (arch-base: "
                           "1.2e-2 against 6e-3; at 3e-3 it lags far behind)")
    root: Literal["token", "learned"] = Field("token", description="what starts the residual stream")
    root_per_position: bool = False
    inject: bool | None = Field(None, description="token injected at every depth; None = (root == learned)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    blocks: list[BlockConfig] = Field(default_factory=list, description="per unique block overrides")

    @model_validator(mode="after")
    def _check_shapes(self, info: ValidationInfo) -> ModelConfig:
        new = not _flag(info, "saved")  # a run folder's saved config: what it trained, read back
        if self.width % self.heads and self.head_dim is None:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.kv_heads is not None and self.kv_heads > self.heads:
            raise ValueError(f"kv_heads {self.kv_heads} is more than heads {self.heads}")
        if self.order is not None and "depth" not in self.model_fields_set:
            self.depth = len(self.order)
        if (new and self.unique_blocks is None and self.order is None and self.depth % 2 and self.depth > 1
                and self.sharing in ("immediate", "cyclic")):  # a run that trained so reads back as it did
            raise ValueError(f"sharing = {self.sharing} at depth {self.depth} needs unique_blocks: its default, half "
                             "the depth, does not divide an odd depth (at depth 3 it shared one block everywhere)")
        if self.depth > MAX_DEPTH:  # before anything is built per depth (a list of 10^8 records fills memory)
            raise ValueError(f"a depth of {self.depth:,} is past the {MAX_DEPTH:,} this lab builds (each block's "
                             "modules are Python objects: seconds per thousand)")
        order = self.depth_order()
        if sorted(set(order)) != list(range(max(order) + 1)):
            raise ValueError(f"order {order} must use every block 0..{max(order)} at least once")
        n_blocks = max(order) + 1
        if self.blocks and len(self.blocks) != n_blocks:
            raise ValueError(f"blocks lists {len(self.blocks)} of {n_blocks} unique blocks: give one record per block")
        asked = [("window", self.window), *((f"blocks[{i}].window", b.window) for i, b in enumerate(self.blocks))]
        if new and (wide := next(((k, w) for k, w in asked if w is not None and w > self.context), None)):
            # within the context it would be full attention; past it (eval_lengths), full too, not this window
            raise ValueError(f"{wide[0]} {wide[1]} is longer than the context {self.context}: a window of the context "
                             "or more is full attention, so give at most the context (or leave it out)")
        specs = self.block_specs()
        uniform = not self.blocks and self.schedule.widths == "uniform" and self.schedule.layer_scaling == "uniform"
        for i, spec in enumerate(specs):
            where = f"block {i}: " if len(specs) > 1 and not uniform else ""  # a model-wide value: no block named
            if spec.kv_heads > spec.heads:
                raise ValueError(f"{where}kv_heads {spec.kv_heads} is more than heads {spec.heads}")
            if spec.heads % spec.kv_heads:
                raise ValueError(f"{where}heads {spec.heads} is not divisible by kv_heads {spec.kv_heads}")
            if self.position == "rope" and spec.head_dim % 2:
                raise ValueError(f"{where}rope needs an even head size, got {spec.head_dim}")
            if spec.ffn < 1 and self.mlp != "none" and new:
                raise ValueError(f"{where}the MLP's hidden size rounds to 0 (model.ffn_mult, or "
                                 "schedule.ffn_scale); give model.ffn or a larger multiple")
            if spec.attention == "ssmax" and self.context < 2 and new:
                raise ValueError("attention ssmax scales scores by log(context): it needs a context of 2 or more")
        if new and not _flag(info, "shared"):  # a plan's shared overrides may apply to some of its configs
            self._check_idle(order, specs)
        if self.ngpt:
            self._check_ngpt(specs)
        token, last = self.token_width(specs[order[0]].width), specs[order[-1]].width
        if self.tie_embeddings and self.embed_width is None and last != token:
            what = "the first's" if self.root == "token" else "width"
            raise ValueError(f"a tied head needs the last block's width ({last}) to equal {what} ({token}); "
                             "set tie_embeddings = false, or embed_width (a projection to the head)")
        return self

    def _check_ngpt(self, specs: list[BlockSpec]) -> None:
        """nGPT keeps the stream and every vector along the width on the unit sphere: what would leave it is refused."""
        why = None
        if self.bias:
            why = "ngpt has no biases (a bias moves a normalised vector off its sphere): set bias = false"
        elif self.position != "rope":
            why = "ngpt needs position = rope: a learned position added to a unit embedding leaves the sphere"
        elif self.root != "token" or self.injects():
            why = ("ngpt needs root = token and inject = false: a learned root, or a token added to the stream, "
                   "leaves the sphere")
        elif len({s.width for s in specs}) > 1 or self.embed_width not in (None, specs[0].width):
            why = ("ngpt needs one width at every depth and for the embedding (model.width alone: no embed_width, "
                   "per-block widths or schedule.widths): width projections have no normalised form")
        elif self.recursion_lora_rank:
            why = ("ngpt refuses recursion_lora_rank: a per-depth LoRA delta moves a shared block's matrices off "
                   "their sphere")
        if why:
            raise ValueError(why)

    def _check_idle(self, order: list[int], specs: list[BlockSpec]) -> None:
        """Refuse a setting that would change nothing, given another (each named): a value other than its
        default, where the field it applies to makes it idle. Set to its default, such a field passes (a
        base config may spell defaults out)."""
        sch, default = self.schedule, ScheduleConfig()
        power = any(spec.attention == "power" for spec in specs)

        def changed(name: str) -> bool:
            return _changed(self, name)

        def every(field: str) -> bool:  # each unique block's record sets it: the model-wide value applies nowhere
            return len(self.blocks) == len(specs) and all(getattr(b, field) is not None for b in self.blocks)

        idle = [
            (self.recursion_lora_rank > 0 and len(set(order)) == len(order),
             "recursion_lora_rank adds a LoRA per depth to shared blocks, and no block is shared (set sharing, or "
             "an order that repeats a block)"),
            (self.root_per_position and self.root == "token", "root_per_position applies to root = learned"),
            (self.unique_blocks is not None and (self.order is not None or self.sharing in ("none", "all")),
             "unique_blocks applies to sharing = immediate or cyclic (without order)"),
            (self.order is not None and self.sharing != "none", "order and sharing are both set, and order decides: "
                                                                "drop sharing"),
            (self.window is not None and sch.windows != "full",
             f"window is replaced by schedule.windows = {sch.windows} (its sizes: schedule.window_range)"),
            (sch.width_range is not None and sch.widths == "uniform",
             "schedule.width_range applies to schedule.widths other than uniform"),
            (sch.window_range is not None and sch.windows == "full",
             "schedule.window_range applies to schedule.windows other than full"),
            (sch.global_every != default.global_every and sch.windows != "interleave",
             "schedule.global_every applies to schedule.windows = interleave"),
            ((sch.heads_scale, sch.ffn_scale) != (default.heads_scale, default.ffn_scale)
             and sch.layer_scaling != "openelm", "schedule.heads_scale and ffn_scale apply to layer_scaling = openelm"),
            (changed("attention_gamma") and not power, "attention_gamma applies to attention = power"),
            (changed("rope_base") and self.position != "rope", "rope_base applies to position = rope"),
            (changed("init_std") and self.ngpt, "init_std sizes the initial weights, and ngpt starts every matrix as "
                                                "random unit vectors"),
            (changed("norm_eps") and self.ngpt, "norm_eps applies to norm layers, and ngpt has none"),
            ((self.ffn is not None or changed("ffn_mult") or any(b.ffn for b in self.blocks)) and self.mlp == "none",
             "ffn and ffn_mult size an MLP, and mlp = none has none"),
            (self.ffn is not None and changed("ffn_mult"), "ffn_mult is replaced by ffn, which is set"),
            ((self.ffn is not None or changed("ffn_mult")) and sch.layer_scaling == "openelm"
             and not any(b.width for b in self.blocks),
             "ffn and ffn_mult are replaced by schedule.ffn_scale under layer_scaling = openelm"),
            (self.window is not None and every("window"), "window is replaced by every block record's own window"),
            ((self.ffn is not None or changed("ffn_mult")) and every("ffn"),
             "ffn and ffn_mult are replaced by every block record's own ffn"),
            (self.kv_heads is not None and every("kv_heads"), "kv_heads is replaced by every block record's own"),
            (changed("attention") and every("attention"), "attention is replaced by every block record's own"),
            (changed("attention_gamma") and every("attention_gamma"),
             "attention_gamma is replaced by every block record's own"),
            (sch.widths != "uniform" and every("width") and sch.layer_scaling != "openelm",  # openelm: FFN sizes
             f"schedule.widths = {sch.widths} is replaced by every block record's own width"),
            (sch.windows != "full" and every("window"),
             f"schedule.windows = {sch.windows} is replaced by every block record's own window"),
        ]
        idle += [(b.attention_gamma is not None and spec.attention != "power",
                  f"block {i}: attention_gamma applies to attention = power, and its attention is {spec.attention}")
                 for i, (b, spec) in enumerate(zip(self.blocks or [BlockConfig()] * len(specs), specs, strict=True))]
        _refuse_idle(idle)

    def depth_order(self) -> list[int]:
        """Which unique block runs at each depth: `order`, or the `sharing` preset."""
        if self.order is not None:
            if len(self.order) != self.depth and "depth" in self.model_fields_set:
                raise ValueError(f"order has {len(self.order)} entries but depth is {self.depth} (give "
                                 f"model.depth={len(self.order)} with it, or {self.depth} entries)")
            return list(self.order)
        n, depth = self.unique_blocks or max(1, self.depth // 2), self.depth
        if self.sharing == "none":
            return list(range(depth))
        if self.sharing == "all":
            return [0] * depth
        if depth % n:
            raise ValueError(f"{self.sharing} sharing needs depth {depth} divisible by unique_blocks {n}")
        if self.sharing == "immediate":  # MobileLLM: [0, 0, 1, 1]
            return [i // (depth // n) for i in range(depth)]
        return [i % n for i in range(depth)]  # cyclic: [0, 1, 0, 1]

    def peaked_schedule(self) -> bool:
        """Whether a small-large-small or large-small-large schedule lays out 4 or more blocks: laid out otherwise
        before 2026-12-07 (an even count's peak fell between two blocks, so no block reached the range's far
        end; some odd counts past 11 rounded otherwise), so a run begun before then may be another model now."""
        peaked = ("small-large-small", "large-small-large")
        return max(self.depth_order()) + 1 >= 4 and (self.schedule.widths in peaked or self.schedule.windows in peaked)

    def block_specs(self) -> list[BlockSpec]:
        """The resolved record of each unique block: defaults, then schedules, then `blocks` overrides."""
        from vslm import schedules

        n = max(self.depth_order()) + 1
        sch = self.schedule
        head_dim = self.head_dim or self.width // self.heads
        lo, hi = sch.width_range or (self.width, self.width)
        widths = schedules.widths(sch.widths, lo, hi, n, head_dim) if sch.widths != "uniform" else [self.width] * n
        heads = [w // head_dim for w in widths] if sch.widths != "uniform" else [self.heads] * n
        ffns = [self.ffn or round(self.ffn_mult * w) for w in widths]
        if sch.layer_scaling == "openelm":  # Mehta et al. 2024: heads and FFN grow with depth
            heads = [max(1, round(a * h)) for a, h in zip(schedules.linear(*sch.heads_scale, n), heads, strict=True)]
            ffns = [round(b * w) for b, w in zip(schedules.linear(*sch.ffn_scale, n), widths, strict=True)]
        if sch.windows == "full":
            windows: list[int | None] = [self.window] * n
        else:
            wlo, whi = sch.window_range or (max(1, self.context // 8), self.context)
            windows = list(schedules.windows(sch.windows, wlo, whi, n, sch.global_every))
        records = self.blocks or [BlockConfig() for _ in range(n)]
        specs = []
        for i, rec in enumerate(records):
            width = rec.width or widths[i]
            n_heads = rec.heads or (width // head_dim if rec.width else heads[i])
            if n_heads == 0 or (rec.width and not rec.heads and width % head_dim):
                raise ValueError(f"block {i}: width {width} is not a multiple of the head size {head_dim}")
            window = rec.window or windows[i]
            specs.append(BlockSpec(
                width=width,
                heads=n_heads,
                # a model-wide kv_heads is cut to the heads a schedule gives a block; given heads are checked
                kv_heads=rec.kv_heads or (min(self.kv_heads or n_heads, n_heads) if not rec.heads
                                          else self.kv_heads or n_heads),
                head_dim=head_dim,
                ffn=rec.ffn or (round(self.ffn_mult * width) if rec.width and not self.ffn else ffns[i]),
                window=None if window is None or window >= self.context else window,
                attention=rec.attention or self.attention,
                attention_gamma=self.attention_gamma if rec.attention_gamma is None else rec.attention_gamma,
            ))
        return specs

    def token_width(self, first_block: int | None = None) -> int:
        """Width of the token embedding: `embed_width`, else the first block's (token root, `first_block` if
        the caller has resolved it) or `width` (learned root)."""
        if self.embed_width is not None:
            return self.embed_width
        if self.root == "learned":
            return self.width
        return first_block if first_block is not None else self.block_specs()[self.depth_order()[0]].width

    def normalisation(self) -> str:
        """What normalises the stream, in words: the norm layer's kind, or nGPT's unit stream."""
        return "nGPT (unit stream, no norm layers)" if self.ngpt else self.norm

    def injects(self) -> bool:
        return self.root == "learned" if self.inject is None else self.inject

    def blind(self) -> str | None:
        """Why the model never sees its tokens, if it does not: a learned root without injection (RESEARCH.md's
        sanity check, which must fail: loss near the unigram's). Allowed, and said where it is built."""
        if self.root == "learned" and not self.injects():
            return ("root = learned without inject: the residual stream never receives the tokens, so the model "
                    "can learn no more than the unigram (the arch-root control); inject = true feeds them in")
        return None


# ------------------------------------------------------------------------------------------ data

GENERATED_SOURCES = ("stories", "repeats")  # vslm.data.registry.GENERATED: made by vslm, endless unless limited
LIST_ITEMS = 32  # the packing lists' distinct items (vslm.data.copying.ITEMS)


class CopyingConfig(_Section):
    """The built-in stories changed so that parts can only be copied from context (vslm.data.copying)."""

    names: Literal["common", "invented"] = Field("common", description="invented: each story's names made up")
    lists: Annotated[int, Field(ge=0, le=100)] = Field(0, description="cumulative packing lists per story")
    items: tuple[PositiveInt, Annotated[int, Field(gt=0, le=LIST_ITEMS)]] = Field(
        (3, 6), description="(min, max) items per packing list")
    songs: Literal["none", "near", "far"] = Field("none", description="a song of common words, sung again near or far")

    @model_validator(mode="after")
    def _items_ascend(self) -> CopyingConfig:
        if self.items[0] > self.items[1]:
            raise ValueError(f"items {list(self.items)} must be (min, max)")
        return self

    def active(self) -> bool:
        return self.names != "common" or self.lists > 0 or self.songs != "none"


class DataConfig(_Section):
    source: str = Field("stories", description="a registry name (`vslm data list`), NAME:SPLIT, or a path to a "
                                                "text, JSON lines or parquet file or a folder of them")
    tokenizer: Literal["char", "byte", "bpe", "gpt2"] = "char"
    vocab_size: int = Field(2048, description="bpe: the vocabulary learned, 260-65535 (256 bytes and the special "
                                               "tokens); char, byte and gpt2 have their own (another value refused)")
    val_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.1
    max_bytes: PositiveInt | None = Field(None, description="text generated or read at most; left out: 8 MB, "
                                                            "or no limit when max_tokens is set; \"none\": no "
                                                            "limit (data.max_bytes=none)")
    max_tokens: PositiveInt | None = Field(None, description="token budget: tokenizing stops there; None = no budget")
    bpe_train_bytes: PositiveInt = Field(100_000_000, description="bpe: learned from at most this much training text")
    text_field: str = Field("text", description="the field holding the text in JSON lines and parquet files given "
                                                "by path (registry names know their own)")
    origin: Literal["auto", "local", "hub"] = Field("auto", description="registry names: auto = a local copy in the "
                                                    "data folder, else the Hugging Face hub; local; hub")
    seed: int = Field(0, description="seed of generated corpora")
    doc_aligned: bool = Field(False, description="training windows start at document starts")
    answer_only: bool = Field(False, description="whole documents, loss on their answers only (data/answers.py)")
    copying: CopyingConfig = Field(default_factory=CopyingConfig, description="the built-in stories only: invented "
                                   "names, packing lists, songs (`vslm probe RUN --copying`)")

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _no_limit(cls, value: Any) -> Any:  # TOML has no null: "none" lifts a base config's limit
        return None if value == "none" else value

    @model_validator(mode="after")
    def _bpe_vocabulary(self, info: ValidationInfo) -> DataConfig:
        if self.tokenizer == "bpe" and not 260 <= self.vocab_size <= 65535:
            raise ValueError(f"vocab_size {self.vocab_size} of tokenizer=bpe must be 260-65535 "
                             "(256 bytes and the special tokens, token ids in 16 bits)")
        default = type(self).model_fields["vocab_size"].default  # what every saved config of another tokenizer holds
        kept = _flag(info, "saved") or _flag(info, "shared")  # a run's saved config; a plan's base, idle in this one
        if self.tokenizer != "bpe" and self.vocab_size != default and not kept:
            # else ignored without a word (and two runs of one corpus would differ in their data section)
            raise ValueError(f"vocab_size {self.vocab_size} is the size bpe learns; tokenizer={self.tokenizer} has "
                             "its own vocabulary: drop data.vocab_size, or set data.tokenizer=bpe")
        return self

    @model_validator(mode="after")
    def _copying_needs_stories(self) -> DataConfig:
        if self.copying.active() and self.source.partition(":")[0] != "stories":
            raise ValueError(f"copying changes the built-in stories, not data.source '{self.source}'")
        return self

    @model_validator(mode="after")
    def _default_budget(self) -> DataConfig:
        # 8 MB unless a token budget is given (a budget alone must be able to stream a large corpus) or
        # None is given (no limit: an evaluation reads all of a benchmark's split)
        if self.max_bytes is None and self.max_tokens is None and "max_bytes" not in self.model_fields_set:
            self.max_bytes = DEFAULT_MAX_BYTES
        if self.max_bytes is None and self.max_tokens is None and self.source.partition(":")[0] in GENERATED_SOURCES:
            raise ValueError(f"data.source {self.source} is generated without end: with max_bytes = none it needs "
                             "max_tokens")
        return self


# ----------------------------------------------------------------------------------------- train


DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?)$"  # train.device, and the commands' --device


class TrainConfig(_Section):
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 12
    grad_accum: PositiveInt = 1
    optimizer: Literal["adamw", "muon", "tangent"] = Field("adamw", description="update of the hidden matrices")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.95, description="Muon's momentum")
    tangent_update: Literal["raw", "adam", "muon"] = Field("adam", description="what tangent descent projects")
    tangent_retract: bool = Field(True, description="back to the row norm after each step (False: OrthoGrad)")
    tangent_when: Literal["always", "scale-invariant"] = Field(
        "always", description="project every step, or only where the weight looks scale-invariant, |cos(w, g)| "
                              "< 0.1 / sqrt(dim) per row (else the whole matrix), with weight decay at 0.1x there "
                              "(AdamP, Heo et al. 2021; with tangent_update = adam, tangent_retract = false)")
    hidden_lr_scale: PositiveFloat = Field(1.0, description="muon/tangent: lr of hidden matrices / lr")
    lr: PositiveFloat = 1e-3
    min_lr: NonNegativeFloat = 1e-4
    warmup: NonNegativeInt = 100
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    weight_decay: NonNegativeFloat = 0.1
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.99)
    eps: PositiveFloat = 1e-8
    grad_clip: NonNegativeFloat = Field(1.0, description="max global grad norm; 0 = off")
    eval_every: NonNegativeInt = Field(250, description="0 = evaluate only at the end")
    eval_windows: PositiveInt = Field(2400, description="fixed validation windows (whatever the batch size)")
    eval_lengths: list[Annotated[int, Field(ge=2, le=64)]] = Field(
        default_factory=list, description="multiples m of the context also evaluated at each evaluation: windows "
                                          "of m x context tokens, every position attending over all of its past "
                                          "(val_loss_xm, and val_loss_x1 on the same windows); RoPE models")
    seed: int = 1337
    device: str = Field("auto", pattern=DEVICE)
    threads: NonNegativeInt = Field(0, description="CPU threads of torch; 0 = torch's default (OMP_NUM_THREADS, "
                                                   "else one per core)")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode where it compiles: reduce-overhead replays CUDA graphs, "
                               "max-autotune also searches matrix-product kernels (minutes of compiling)")
    checkpoint_every: NonNegativeInt = Field(500, description="0 = only at the end")
    checkpoint_minutes: NonNegativeFloat = Field(5.0, description="also checkpoint when this long has passed "
                                                                  "since the last one; 0 = off")
    keep_last: PositiveInt = 2
    snapshots: bool = Field(True, description="keep weights at steps 0, 1, 2, 4, 8, ...")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> TrainConfig:
        if not (_flag(info, "saved") or _flag(info, "shared")):  # as ModelConfig._check_idle
            _refuse_idle([
                (_changed(self, "hidden_lr_scale") and self.optimizer == "adamw",
                 "hidden_lr_scale scales the hidden matrices' lr under optimizer = muon or tangent, and adamw takes "
                 "train.lr everywhere"),
                (_changed(self, "momentum") and not (self.optimizer == "muon" or (
                    self.optimizer == "tangent" and self.tangent_update == "muon")),
                 "momentum is Muon's (optimizer = muon, or tangent with tangent_update = muon)"),
                (any(_changed(self, f) for f in ("tangent_update", "tangent_retract")) and self.optimizer != "tangent",
                 "tangent_update and tangent_retract apply to optimizer = tangent")])
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}")
        if self.schedule == "wsd" and self.warmup > self.steps - round(self.decay_fraction * self.steps):
            raise ValueError(f"warmup {self.warmup} runs into the decay phase of the wsd schedule")
        if self.tangent_when == "scale-invariant" and (self.optimizer != "tangent" or self.tangent_retract):
            raise ValueError("tangent_when = scale-invariant (AdamP) needs optimizer = tangent and tangent_retract "
                             "= false: AdamP projects without retracting, and keeps weight decay where it does not "
                             "project")
        if self.eval_lengths != sorted(set(self.eval_lengths)):
            raise ValueError(f"eval_lengths {self.eval_lengths} must be ascending, without repeats")
        return self


class LoggingConfig(_Section):
    log_every: PositiveInt = 1
    probe_every: NonNegativeInt | Literal["auto"] = Field(
        "auto", description="probes at 0, 1, 2, 4, ... then every K steps; 0 = off; auto = log-spaced to the end")
    probe_windows: Annotated[int, Field(ge=8)] = Field(
        256, description="validation windows of the probe set (every one where fewer); the bootstrap se shrinks as "
                         "1/sqrt(windows), the probes' cost grows with them")
    induction_length: PositiveInt | None = Field(
        None, description="the induction probe's copy distance L (random sequences of L tokens, twice); "
                          "left out: half the context")
    induction_support: str | None = Field(
        None, min_length=1, description="characters whose tokens the induction probe draws its sequences from; "
                                        "left out: every token of the training text (a corpus whose separators "
                                        "end what can be copied, data.source=repeats, sets its letters)")
    icl_short: Literal["bands", "tokens"] = Field(
        "bands", description="the ICL score under 512 tokens of context: the mean loss of the last T/10 tokens "
                             "minus that of T/10 tokens around token T/10 (bands), or RESEARCH.md's single tokens "
                             "loss[T-1] - loss[T/10] (tokens, noisier)")
    tensorboard: bool | Literal["auto"] = Field("auto", description="event files; auto = if tensorboard is installed")
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers (extras); 'tensorboard' here = tensorboard = true")
    diagnostics_every: NonNegativeInt = Field(0, description="weight row norms, cos(w, g), update ratio; 0 = off")
    progress: bool = True
    samples: NonNegativeInt = Field(0, description="samples printed at the end of training")
    sample_tokens: PositiveInt = 200

    @model_validator(mode="after")
    def _check(self) -> LoggingConfig:
        if twice := repeated(self.trackers):
            raise ValueError(f"trackers lists {', '.join(twice)} more than once")
        if "tensorboard" in self.trackers and self.tensorboard is False:
            raise ValueError("trackers has 'tensorboard' but tensorboard = false: drop one of them")
        return self


class RunConfig(_Section):
    name: str = "run"
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _induction_fits(self, info: ValidationInfo) -> RunConfig:
        length, context = self.logging.induction_length, self.model.context
        if length is not None and not 2 <= length <= context // 2:
            raise ValueError(f"logging.induction_length {length} must be 2 to half the context ({context // 2}): "
                             "the probe's sequence is written twice")
        if length is None and self.logging.probe_every != 0 and context < 4 and not _flag(info, "saved"):
            raise ValueError(f"model.context {context} is too short for the induction probe (a sequence of 2 or "
                             "more tokens written twice): set logging.probe_every=0, or a context of 4 or more")
        if self.train.eval_lengths and (self.model.position == "learned" or self.model.root_per_position):
            needs = [w for w, bad in (("model.position=rope", self.model.position == "learned"),
                                      ("model.root_per_position=false", self.model.root_per_position)) if bad]
            why = "learned positions end" if self.model.position == "learned" else "a learned root per position ends"
            raise ValueError(f"train.eval_lengths runs past the context, where {why}: it needs {' and '.join(needs)}")
        return self

    def to_raw(self) -> dict[str, Any]:
        """The config as plain data (JSON and TOML types) that validates back to it: a None left out (a field's
        default), save data.max_bytes = "none" where the text has no limit (left out, it reads as the 8 MB
        default: a run's config.toml would then describe another corpus than the one it trained on)."""
        raw = self.model_dump(mode="json", exclude_none=True)
        if self.data.max_bytes is None:
            raw["data"]["max_bytes"] = "none"
        return raw

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_raw())

    def with_vocab_size(self, vocab_size: int | None) -> RunConfig:
        """This config with model.vocab_size filled in where it was left to the tokenizer."""
        if self.model.vocab_size is not None or vocab_size is None:
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"vocab_size": vocab_size})})

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none are named)."""
        dump = self.model_dump(mode="json")
        chosen = {k: dump[k] for k in (sections or dump)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------- load and save


def flat_values(tree: dict, prefix: str = "") -> dict[str, object]:
    """`model.width` -> 64: a nested config's leaves under dotted keys, each value as JSON has it."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_text(value: object) -> str:
    """A config value as a line shows it: strings bare, the rest (numbers, lists, null) as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def builtin_configs() -> dict[str, str]:
    """Built-in config names and their one-line descriptions."""
    out = {}
    for entry in sorted(resources.files("vslm.configs").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            raw = tomllib.loads(entry.read_text())
            out[entry.name.removesuffix(".toml")] = raw.get("description", "")
    return out


def bare_builtin(name: str, package: str) -> bool:
    """Whether `name` is a bare built-in name of `package` (`tiny`, not `./tiny` nor `tiny.toml`): the built-in,
    whatever file of that name lies in the working directory or beside a spec."""
    return name == Path(name).stem and builtin_file(name, package) is not None


def builtin_file(name: str, package: str):
    """The built-in TOML file `name` of `package` names (a resources Traversable), or None. Only a bare name
    is a built-in's: './tiny' or '../configs/tiny' that is no file here is not the package's tiny.toml."""
    if name != Path(name).name or name in (".", ".."):
        return None
    entry = resources.files(package) / f"{name}.toml"
    return entry if entry.is_file() else None


def _read_toml(name_or_path: str, seen: tuple[str, ...] = (), beside: Path | None = None,
               files: bool = True, chain: list[tuple[str, dict]] | None = None,
               named_by: str | None = None) -> dict[str, Any]:
    """A config's table with its `base` chain merged in. A bare built-in name (`tiny`) is the built-in config,
    whatever file of that name lies here (`./tiny` reads the file). A relative base is looked up beside the
    file that names it (`beside`), else taken as a built-in name; a built-in config's base is a built-in name.
    `chain` receives (label, own table) of each config read, the named one first; `named_by`: the label of
    the config whose base this is."""
    path = Path(name_or_path)
    if beside is not None and not path.is_absolute():
        path = beside / path
    if files and not bare_builtin(name_or_path, "vslm.configs") and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {path}: cannot read it ({e})") from None
        label, key, here = str(path), str(path.resolve()), path.parent
    else:
        entry = builtin_file(name_or_path, "vslm.configs")
        if entry is None:
            names = ", ".join(builtin_configs())
            where = f" ({path})" if beside is not None else ""
            what = f"'{name_or_path}'" + (f" (the base {named_by} names)" if named_by else "")
            if files and (path / "config.toml").is_file():  # a run folder: its config is the file inside
                raise ConfigError(f"no config {what}: a run folder (its config: {path / 'config.toml'}; "
                                  f"`vslm train --resume --out {path}` continues it)")
            raise ConfigError(f"no config {what}{did_you_mean(name_or_path, builtin_configs())}: not a "
                              f"file{where}, nor a built-in config ({names})")
        text, label, here = entry.read_text(), f"built-in config '{name_or_path}'", None
        key = f"built-in {name_or_path}"
    if key in seen:
        raise ConfigError(f"{label}: 'base' chain loops back to it")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML: {e}") from None
    base = raw.pop("base", None)
    if chain is not None:
        chain.append((label, raw))
    raw.setdefault("name", path.stem if here is not None else name_or_path)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{label}: base must be a built-in config name or a path, got {base!r}")
    parent = _read_toml(base, (*seen, key), beside=here, files=here is not None, chain=chain, named_by=label)
    parent.pop("description", None)
    parent["name"] = raw["name"]
    return _merge(parent, raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(word: str) -> tuple[list[str], Any]:
    """`model.width=192` -> (['model', 'width'], 192). Values are TOML; a bare word is a string."""
    key, sep, text = word.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{word}' is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        if text.lstrip()[:1] in ("[", "{", '"', "'"):  # meant as an array, a table or a quoted string
            cut = text.count("[") > text.count("]") or text.count("{") > text.count("}")
            hint = f"; the shell cut it at a space? quote the whole word: '{key}=...'" if cut else ""
            raise ConfigError(f"override '{word}': the value is not valid TOML ({e}){hint}") from None
        value = text  # a bare word: cpu, stories, path/to/file.txt
    return key.split("."), value


def fields_set_by(word: str, fields: Iterable[str]) -> list[str]:
    """The dotted fields among `fields` that the override `word` sets: the field itself, or a table above it
    (`train={lr=0.01}` replaces the whole train table, its seed and steps too). A word not of the form
    key=value sets none here; parse_override names it where the override is applied."""
    path = [part.strip() for part in word.partition("=")[0].split(".")]
    return [f for f in fields if f.split(".")[:len(path)] == path]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for word in overrides:
        path, value = parse_override(word)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{word}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def validate(raw: dict[str, Any], saved: bool = False, shared: bool = False) -> RunConfig:
    """A RunConfig from a raw dict, a one-line ConfigError if it does not validate. `saved`: a run folder's own
    config.toml, written by an earlier version maybe: the checks that only keep a new config from being
    wasted or failing later (a setting that changes nothing, an MLP of size 0, a context too short for the
    probes or ssmax) are skipped, so that what the run trained still reads. `shared`: as load_config's."""
    try:
        return RunConfig.model_validate(raw, context={"saved": saved, "shared": shared})
    except ValidationError as e:
        raise ConfigError(one_line_error(e, root=RunConfig)) from None


def _fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model that holds the field at `loc` (list indices skipped), [] if unknown."""
    from typing import get_args

    def model_in(annotation) -> type[BaseModel] | None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for a in get_args(annotation) if (m := model_in(a)) is not None), None)

    cls: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        cls = model_in(field.annotation) if field is not None else None
        if cls is None:
            return []
    return list(cls.model_fields)


def one_line_error(e: ValidationError, prefix: str = "config error", root: type[BaseModel] | None = None) -> str:
    """The first validation error as one line naming the field: `prefix: model.width: ...`; an unknown field
    of `root` (the model validated) with the near names: `unknown field 'train.step' (did you mean train.steps?)`.
    A field missing beside an unknown one is the unknown one misspelled: that one is named, with the field meant."""
    errors = e.errors()
    err = errors[0]
    if err["type"] == "missing":
        err = next((x for x in errors if x["type"] == "extra_forbidden"), err)
    field = ".".join(str(part) for part in err["loc"])
    where = f"{prefix}: {field}: " if field else f"{prefix}: "
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("tuple_type", "list_type", "set_type"):  # Python's words for what TOML calls an array
        msg = "should be a list, written [a, b, ...] (a TOML array; quoted on a command line: 'key=[a, b]')"
    if err["type"] == "extra_forbidden":
        loc = err["loc"]
        section = "".join(f"{part}." for part in loc[:-1])
        hint = did_you_mean(str(loc[-1]), _fields_at(root, loc), section) if root is not None and loc else ""
        if not hint and root is not None and len(loc) == 1:  # `steps=30`: a field of a section, without it
            homes = [f"{name}.{loc[0]}" for name, f in root.model_fields.items()  # sections, not lists of records
                     if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
                     and loc[0] in f.annotation.model_fields]
            hint = f" (did you mean {' or '.join(homes)}?)" if homes else ""
        return f"{prefix}: unknown field '{field}'{hint}"
    if err["type"] == "missing":
        return f"{where}missing"
    if err["type"] == "value_error":
        return f"{where}{msg}"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}{msg}, got {err['input']!r}{more}"


def overridden(cfg: RunConfig, overrides: list[str], saved: bool = False) -> RunConfig:
    """`cfg` with dotted overrides applied, validated again (`saved`: as validate's, for a run folder's config)."""
    return validate(apply_overrides(cfg.to_raw(), overrides), saved=saved)


def _changed(section: BaseModel, name: str) -> bool:
    """Whether a field is set to other than its default (an idle setting at its default passes: a base config
    may spell defaults out)."""
    return getattr(section, name) != type(section).model_fields[name].default


def _refuse_idle(idle: list[tuple[bool, str]]) -> None:
    """Refuse the first setting that would change nothing: (is idle, why) pairs, each naming the field."""
    if found := next((why for is_idle, why in idle if is_idle), None):
        raise ValueError(f"{found} (a setting that changes nothing is refused, not ignored)")


def _flag(info: ValidationInfo, key: str) -> bool:
    """A flag of the validation's context: "saved" (validate(raw, saved=True)) or "shared" (load_config's)."""
    return bool((info.context or {}).get(key))


def load_config(name_or_path: str | Path, overrides: list[str] | str | None = None, *, shared: bool = False,
                saved: bool = False) -> RunConfig:
    """A built-in config name or a TOML path, with dotted `key=value` overrides applied (a list of them,
    or one as a string: `load_config("tiny", "train.steps=50")`). `shared`: one of a plan's configs (an
    experiment's variants, a scaling grid), whose shared overrides may apply to some of them only: a setting
    idle in this one is let through (ModelConfig._check_idle). `saved`: as validate's (a resume's config)."""
    name_or_path, overrides = str(name_or_path), [overrides] if isinstance(overrides, str) else overrides
    if not isinstance(overrides, list | tuple | None) or not all(isinstance(w, str) for w in overrides or []):
        raise ConfigError(f"overrides: a list of 'section.key=value' strings, got {overrides!r}")
    raw = apply_overrides(_read_toml(name_or_path), list(overrides or []))
    try:
        return RunConfig.model_validate(raw, context={"shared": shared, "saved": saved})
    except ValidationError as e:
        err, chain = e.errors()[0], []
        _read_toml(name_or_path, chain=chain)  # read again, only now: which file brought in the failed check
        where = _brought_in_by(err, chain, list(overrides or []), {"shared": shared, "saved": saved})
        raise ConfigError(one_line_error(e, f"config error in {where}" if where else "config error",
                                         root=RunConfig)) from None


def _brought_in_by(err: dict, chain: list[tuple[str, dict]], overrides: list[str], context: dict) -> str | None:
    """The label of the base config (not the named one) that brings in the failed check `err`, with the named
    config's label. The chain is merged from the deepest base up, the overrides on top of each: the base named
    is the one below which the config validates, and from which up it fails this very check (its message, and
    for a field's check its value). A check across a section's fields (width against heads) is so blamed on the
    file that made the pair fail, not on every file that sets that section. None where the named config or an
    override brings it in (the user's own input, already named), or where a deeper merge fails another check
    of that section (which hides whether this one would pass)."""
    def same(x: dict) -> bool:  # a section validator's input is its whole section: its message says the values
        return x["loc"] == err["loc"] and x["msg"] == err["msg"] and (
            err["type"] == "value_error" or repr(x.get("input")) == repr(err.get("input")))

    def failures(tables: list[tuple[str, dict]]) -> list[dict] | None:
        merged: dict[str, Any] = {}
        for _, table in reversed(tables):
            merged = _merge(merged, table)
        try:
            RunConfig.model_validate(apply_overrides(copy.deepcopy(merged), overrides), context=context)
        except ValidationError as e:
            return e.errors()
        except ConfigError:  # an override that does not apply to this part of the chain: no telling
            return None
        return []

    for k in range(1, len(chain) + 1):  # k = len(chain): the overrides on the defaults alone
        found = failures(chain[k:])
        if found is None:
            return None
        if any(map(same, found)):
            continue
        # a field of the same section that fails skips that section's checks across fields (a check across
        # sections, loc (), is skipped by any): whether this one passes there is not known
        if any(not err["loc"] or x["loc"][:1] == err["loc"][:1] for x in found):
            return None
        return f"{chain[k - 1][0]} (a base of {chain[0][0]})" if k > 1 else None
    return None  # the overrides alone fail it


def _takes_none(annotation: Any) -> bool:
    """Whether a field of this type may hold None (`int | None`, Annotated[... | None, ...])."""
    from typing import get_args

    return annotation is None or annotation is type(None) or any(_takes_none(a) for a in get_args(annotation))


def none_where_not_taken(model: BaseModel, prefix: str = "") -> str | None:
    """The dotted name of the first field (sections and lists of records gone into) set to None where its type
    takes no None (assigned by hand: a dump leaves a None out, and validation would fill in the default), else
    None."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None and not _takes_none(info.annotation):
            return f"{prefix}{name}"
        for i, item in enumerate(value if isinstance(value, list | tuple) else [value]):
            if isinstance(item, BaseModel):
                here = f"{prefix}{name}." if not isinstance(value, list | tuple) else f"{prefix}{name}.{i}."
                if found := none_where_not_taken(item, here):
                    return found
    return None


def _refuse_none(model: BaseModel, prefix: str = "") -> None:
    if field := none_where_not_taken(model, prefix):
        raise ConfigError(f"config error: {field}: None is not one of its values (leave it out of a config "
                          "for its default)")


def checked_model(model: Any) -> ModelConfig:
    """A ModelConfig validated again, as GPT() builds it (a notebook may have assigned a field since it was made:
    `cfg.model.heads = 5` on width 32 is one line naming the field, not a model of 30-wide attention); a
    ConfigError for it, or for a config of another kind (GPT(cfg) where GPT(cfg.model) was meant)."""
    from pydantic_core import PydanticSerializationError

    if not isinstance(model, ModelConfig):
        raise ConfigError("a GPT is built from a model config: GPT(cfg.model)" if isinstance(model, RunConfig) else
                          f"a GPT is built from a ModelConfig (cfg.model), not a {type(model).__name__}")
    _refuse_none(model, "model.")
    try:
        with warnings.catch_warnings():  # pydantic's note on a value of the wrong type: the validation names it
            warnings.simplefilter("ignore")
            raw = model.model_dump(mode="json", exclude_none=True)
        return ModelConfig.model_validate(raw, context={"saved": True, "shared": True})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"config error: {'.'.join(['model', *map(str, err['loc'])])}: "
                          f"{err['msg'].removeprefix('Value error, ')}") from None
    except PydanticSerializationError as e:  # a value assigned that is not data at all
        raise ConfigError(f"config error: model: {str(e).splitlines()[0]}") from None


def revalidated(cfg: RunConfig) -> RunConfig:
    """A RunConfig validated again: a notebook may have assigned a field since it was loaded (`cfg.train.steps =
    "3"` is one line naming the field here, not a TypeError mid-run, nor a config.toml a later load refuses). The
    checks that a plan's configs skip (an idle shared setting) or a saved config skips stay skipped: they were
    passed where the config was made."""
    from pydantic_core import PydanticSerializationError

    _refuse_none(cfg)
    try:
        with warnings.catch_warnings():  # pydantic's note on a value of the wrong type: validate names it below
            warnings.simplefilter("ignore")
            raw = cfg.to_raw()
    except PydanticSerializationError as e:  # a value assigned that is not data at all
        where = unserialisable_field(cfg)
        raise ConfigError(f"config error: {where + ': ' if where else ''}{str(e).splitlines()[0]}") from None
    return validate(raw, saved=True, shared=True)


def unserialisable_field(model: BaseModel, prefix: str = "") -> str | None:
    """The dotted name of the first field of `model` (sections and lists of blocks gone into) whose value is
    not data (an object assigned by hand), None if every one is."""
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    for name in type(model).model_fields:
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, list | tuple) else [(None, value)]
        for i, item in items:
            here = f"{prefix}{name}" if i is None else f"{prefix}{name}.{i}"
            if isinstance(item, BaseModel):
                if found := unserialisable_field(item, here + "."):
                    return found
                continue
            try:
                to_jsonable_python(item)
            except PydanticSerializationError:
                return here
    return None


def save_config(cfg: RunConfig, path: Path) -> None:
    """cfg as TOML at path, validated again first (revalidated): what is written loads back."""
    write_text(path, revalidated(cfg).to_toml())
