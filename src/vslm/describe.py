"""`vslm describe`: the model a config builds, block by block, with parameters and FLOPs."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from vslm.config import RunConfig
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.model.accounting import depth_flops_per_token

# vocabulary sizes known without reading data
_FIXED_VOCAB = {"byte": 257, "gpt2": 50257}


def vocab_size_of(cfg: RunConfig) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.tokenizer in _FIXED_VOCAB:
        return _FIXED_VOCAB[cfg.data.tokenizer]
    if cfg.data.tokenizer == "bpe":
        return cfg.data.vocab_size
    from vslm.data.shards import prepare_corpus  # char: the vocabulary is the corpus's characters

    return prepare_corpus(cfg.data).tokenizer.vocab_size


def build_for_accounting(cfg: RunConfig) -> GPT:
    model_cfg = cfg.model.model_copy(update={"vocab_size": vocab_size_of(cfg)})
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return GPT(model_cfg)


def describe(cfg: RunConfig, console: Console) -> None:
    """One row per depth: the block it runs (shared blocks count their parameters once), its shape
    and its training FLOPs per token."""
    model = build_for_accounting(cfg)
    table = Table(title=f"{cfg.name}: {cfg.description}" if cfg.description else cfg.name)
    for col in ("depth", "block", "width", "heads", "kv", "ffn", "window", "attention", "params", "FLOPs/token"):
        table.add_column(col, justify="right")
    counted: set[int] = set()
    for depth, b in enumerate(model.order):
        spec, key = model.specs[b], str(depth)
        params = 0 if b in counted else parameter_count(model.blocks[b])
        counted.add(b)
        params += sum(parameter_count(m) for m in (model.resize[key] if key in model.resize else None,
                                                   model.lora[key] if key in model.lora else None,
                                                   model.inject[depth] if model.inject is not None else None) if m)
        attention = spec.attention + (f" {spec.attention_gamma:g}" if spec.attention == "power" else "")
        ffn = str(spec.ffn) if cfg.model.mlp != "none" else "-"
        table.add_row(str(depth), str(b), str(spec.width), str(spec.heads), str(spec.kv_heads), ffn,
                      str(spec.window or "full"), attention, f"{params:,}" if params else "shared",
                      f"{sum(depth_flops_per_token(model, depth).values()):,}")
    console.print(table)
    total = parameter_count(model)
    embed = model.embed.weight.numel() + (model.pos.weight.numel() if model.pos is not None else 0)
    m = cfg.model
    console.print(
        f"vocabulary {model.cfg.vocab_size}, context {m.context}, {m.position} positions, {m.norm}, {m.mlp}, "
        f"{'tied' if m.tie_embeddings else 'untied'} head, {m.root} root"
        f"{' with token injection' if m.injects() else ''}, order {model.order}\n"
        f"parameters {total:,} ({total - embed:,} without embeddings)\n"
        f"training FLOPs per token {training_flops_per_token(model):,}",
        highlight=False,
    )
