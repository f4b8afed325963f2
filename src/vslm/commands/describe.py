"""`vslm describe`: the model a config builds, block by block, with parameters and FLOPs."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from vslm.config import RunConfig
from vslm.lab.runner import build_for_accounting
from vslm.model import parameter_count, training_flops_per_token
from vslm.model.accounting import depth_flops_per_token
from vslm.train.memory import device_memory, estimate_memory, size


def describe(cfg: RunConfig, console: Console) -> None:
    """One row per depth: the block it runs (shared blocks count their parameters once), its shape
    and its training FLOPs per token. The model is built on the meta device, so a shape too large to
    train here is described too, with a line saying so."""
    model = build_for_accounting(cfg)
    need = estimate_memory(cfg.with_vocab_size(model.cfg.vocab_size))  # the tokenizer's vocabulary now known
    table = Table(title=f"{cfg.name}: {cfg.description}" if cfg.description else cfg.name)
    for col in ("depth", "block", "width", "heads x size", "kv", "ffn", "window", "attention", "params",
                "FLOPs/token"):
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
        # the head size is model-wide: a block's own heads may attend over another width than its own
        heads = f"{spec.heads} x {spec.head_dim}" + (f" = {spec.heads * spec.head_dim}"
                                                      if spec.heads * spec.head_dim != spec.width else "")
        table.add_row(str(depth), str(b), str(spec.width), heads, str(spec.kv_heads), ffn,
                      str(spec.window or "full"), attention, f"{params:,}" if params else "shared",
                      f"{depth_flops_per_token(model, depth):,}")
    console.print(table)
    total = parameter_count(model)
    embed = model.embed.weight.numel() + (model.pos.weight.numel() if model.pos is not None else 0)
    m = cfg.model
    console.print(
        f"vocabulary {model.cfg.vocab_size}, context {m.context}, {m.position} positions, {m.normalisation()}, "
        f"{m.mlp}, "
        f"{'tied' if m.tie_embeddings else 'untied'} head, embedding width {model.embed.weight.shape[1]}"
        f"{' (the last block projected to it)' if model.unembed is not None else ''}, {m.root} root"
        f"{' with token injection' if m.injects() else ''}, order {model.order}\n"
        f"parameters {total:,} ({total - embed:,} without embeddings)\n"
        f"training FLOPs per token {training_flops_per_token(model):,}\n"
        f"training memory (estimate, float32, train.batch_size {cfg.train.batch_size}) {need.line()}",
        highlight=False,
    )
    if why := m.blind():
        console.print(f"note: {why}", highlight=False)
    have = device_memory(torch.device("cpu"))
    if have is not None and need.total > have:
        console.print(f"too large to train on this machine ({size(have)} of memory): `vslm train` would refuse it",
                      highlight=False)
