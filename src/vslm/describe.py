"""`vslm describe`: the model a config builds, block by block, with parameters and FLOPs."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from vslm.config import RunConfig
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.model.accounting import block_flops_per_token

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
    model = build_for_accounting(cfg)
    table = Table(title=f"{cfg.name}: {cfg.description}" if cfg.description else cfg.name)
    for col in ("depth", "width", "heads", "kv heads", "ffn", "window", "params", "FLOPs/token"):
        table.add_column(col, justify="right")
    for i, (spec, block) in enumerate(zip(model.specs, model.blocks, strict=True)):
        flops = sum(block_flops_per_token(model, i).values())
        table.add_row(str(i), str(spec.width), str(spec.heads), str(spec.kv_heads), str(spec.ffn),
                      str(spec.window or "full"), f"{parameter_count(block):,}", f"{flops:,}")
    console.print(table)
    total = parameter_count(model)
    embed = model.embed.weight.numel() + (model.pos.weight.numel() if model.pos is not None else 0)
    console.print(
        f"vocabulary {model.cfg.vocab_size}, context {cfg.model.context}, {cfg.model.position} positions, "
        f"{cfg.model.norm}, {cfg.model.mlp}, {'tied' if cfg.model.tie_embeddings else 'untied'} head\n"
        f"parameters {total:,} ({total - embed:,} without embeddings)\n"
        f"training FLOPs per token {training_flops_per_token(model):,}",
        highlight=False,
    )
