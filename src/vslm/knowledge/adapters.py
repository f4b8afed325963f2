"""Knowledge in adapters: a LoRA per group of facts (Hugging Face `peft` on our modules), chosen per
question by the retriever (RESEARCH.md section 5a).

`add_adapter` puts a named LoRA on every attention and MLP matrix of a trained GPT (`qkv`, `proj`,
`fc`); several can live side by side and `use_adapter` switches between them (None: the base model
alone). `fit_adapter` trains one adapter on a group's text with everything else frozen, so the base
model, and every other adapter, stays exactly as it was; it is a run of the one training loop
(train/finetune.py), in a folder of its own. `fact_groups` cuts a pool's people into groups;
`AdapterRouter` answers "which adapter for this question?" with the group most of the retriever's
cards are about.

An adapter also owns the embedding rows (and an untied head's) of the tokens in its text that the base
never trained on (`unseen_tokens`): a word-level model's names of new people, whose rows training only
ever pushed down as outputs. A LoRA on the matrices has to write such a name through rows that never
learned to stand for anyone; with the rows, an adapter answers far more (docs/EXPERIMENTS.md,
`knowledge-adapters`). `use_adapter` writes an adapter's rows into the embedding while it is in use and
puts the base's back when it is not, as peft merges an adapter. `PARTS` says what a fit trains.
"""

from __future__ import annotations

import random
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vslm.config import RunConfig
from vslm.data.answers import AnswerSampler
from vslm.data.shards import Corpus
from vslm.errors import VSLMError
from vslm.knowledge import render
from vslm.knowledge.retrieval import Card, Retriever
from vslm.knowledge.world import Pool, World
from vslm.model import GPT
from vslm.train.finetune import fine_tune, finetune_config
from vslm.train.run_folder import update_summary

TARGETS = ("qkv", "proj", "fc")  # the Linear layers of attention and MLP (vslm.model.attention, layers)
PARTS = ("both", "lora", "tokens")  # what fit_adapter trains: the LoRA and the unseen tokens' rows, or one of them
ROWS = "adapter_rows"  # the model's attribute holding its adapters' token rows (TokenRows)
TOKENS = "tokens."  # adapter_state's keys of the token rows


@dataclass
class TokenRows:
    """Per adapter, the embedding rows it owns (`ids`), their fitted values and the base model's, one tensor per
    table of `row_tables`; `written`: the adapter whose rows the tables hold now (None: the base's)."""
    ids: dict[str, torch.Tensor] = field(default_factory=dict)
    fitted: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    base: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    written: str | None = None


def row_tables(model: GPT) -> list[torch.nn.Parameter]:
    """The tables with a row per token: the embedding, and the head when it is not tied to it."""
    return [model.embed.weight] + ([model.head.weight] if model.head is not None else [])


def unseen_tokens(corpus: Corpus, documents: Sequence[str]) -> list[int]:
    """The tokens of `documents` that the corpus's training split never holds: rows its model never fitted, where
    the model trained on that corpus (a run that trained on batches of its own, as the reader or a distilled
    student, saw more than its configured text: some of these it did fit)."""
    ids = {t for doc in documents for t in corpus.tokenizer.encode(doc)}
    trained = np.bincount(np.asarray(corpus.train.tokens), minlength=max(ids, default=0) + 1)
    return sorted(t for t in ids if trained[t] == 0)


def own_tokens(model: GPT, name: str, ids: Sequence[int]) -> None:
    """Give the adapter `name` its own rows of the tokens `ids`, starting from the base model's. The tables hold
    the base's rows after: `use_adapter` then writes an adapter's in."""
    rows = model.__dict__.setdefault(ROWS, TokenRows())
    _write_rows(model, None)  # the tables hold the base's rows now
    index = torch.tensor(sorted(ids), dtype=torch.long, device=model.embed.weight.device)
    rows.ids[name] = index
    rows.base[name] = [t.detach()[index].clone() for t in row_tables(model)]
    rows.fitted[name] = [r.clone() for r in rows.base[name]]


def _write_rows(model: GPT, name: str | None) -> None:
    """The tables back to the base's rows, then the named adapter's written in (None: the base's alone)."""
    rows: TokenRows | None = model.__dict__.get(ROWS)
    if rows is None:
        return
    with torch.no_grad():  # (the model may have moved to another device since the rows were taken)
        if rows.written is not None:
            for table, base in zip(row_tables(model), rows.base[rows.written], strict=True):
                table[rows.ids[rows.written].to(table.device)] = base.to(table)
        if name in rows.ids:
            for table, fitted in zip(row_tables(model), rows.fitted[name], strict=True):
                table[rows.ids[name].to(table.device)] = fitted.to(table)
    rows.written = name if name in rows.ids else None


def _drop_rows(model: GPT, name: str) -> None:
    """The adapter `name` owns no rows any more (the base's written back where its were)."""
    rows: TokenRows | None = model.__dict__.get(ROWS)
    if rows is not None and name in rows.ids:
        active = rows.written
        _write_rows(model, None)
        for table in (rows.ids, rows.fitted, rows.base):
            del table[name]
        _write_rows(model, active)


def lora_layers(model: GPT) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def add_adapter(model: GPT, name: str, rank: int = 8, alpha: float = 16.0, seed: int = 0) -> GPT:
    """A LoRA named `name` on the model's attention and MLP matrices (B = 0: the model is unchanged
    until it is trained). The model is modified in place and returned; the new adapter is active.
    Its A matrices are drawn from a stream of (name, seed) alone, the session's left as it was: the same
    adapter whatever ran before it in the process (an experiment resumed with some groups done)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    device = next(model.parameters()).device
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # several side by side
        torch.manual_seed(zlib.crc32(f"adapter:{name}:{seed}".encode()))
        model = inject_adapter_in_model(config, model, adapter_name=name)
    use_adapter(model, name)
    return model


def use_adapter(model: GPT, name: str | None) -> None:
    """Switch every LoRA layer, and the token rows, to the named adapter, or off (None: the base model alone)."""
    for layer in lora_layers(model):
        layer.enable_adapters(name is not None)
        if name is not None:
            layer.set_adapter(name)
    _write_rows(model, name)


def adapter_state(model: GPT, name: str) -> dict[str, torch.Tensor]:
    """The named adapter's weights (what `save_adapter` writes): its LoRA matrices, and its token rows if it
    has some (`tokens.ids`, then `tokens.0` for the embedding's and `tokens.1` for an untied head's)."""
    keys = (f".lora_A.{name}.", f".lora_B.{name}.")
    state = {k: v for k, v in model.state_dict().items() if any(key in k for key in keys)}
    rows: TokenRows | None = model.__dict__.get(ROWS)
    if rows is not None and name in rows.ids:
        state[f"{TOKENS}ids"] = rows.ids[name]
        state |= {f"{TOKENS}{i}": r for i, r in enumerate(rows.fitted[name])}
    return state


def save_adapter(model: GPT, name: str, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in adapter_state(model, name).items()}, str(path))


def load_adapter(model: GPT, name: str, path: Path) -> None:
    """Load weights written by `save_adapter` into the adapter `name` (added beforehand with the same rank),
    its token rows too; the adapter is in use after."""
    weights = load_file(str(path))
    lora = {k: v for k, v in weights.items() if not k.startswith(TOKENS)}
    missing = {k for k in adapter_state(model, name) if not k.startswith(TOKENS)} ^ set(lora)
    tables = len(row_tables(model))
    rows = {k for k in weights if k.startswith(TOKENS)}
    expected = {f"{TOKENS}ids", *(f"{TOKENS}{i}" for i in range(tables))} if rows else set()
    if missing or rows != expected:  # rows for another head (tied, untied) than this model's are refused too
        what = sorted(missing)[:3] or f"its token rows ({', '.join(sorted(rows))}; this model takes {tables} table(s))"
        raise ValueError(f"{path} does not fit adapter {name!r} of this model: {what}")
    model.load_state_dict(lora, strict=False)
    if f"{TOKENS}ids" in weights:
        own_tokens(model, name, weights[f"{TOKENS}ids"].tolist())
        model.__dict__[ROWS].fitted[name] = [weights[f"{TOKENS}{i}"].to(model.embed.weight) for i in range(tables)]
    else:  # a file without rows: none of an earlier adapter of this name stay
        _drop_rows(model, name)
    use_adapter(model, name)


def tokens_to_own(corpus: Corpus, name: str, documents: Sequence[str], parts: str) -> list[int]:
    """The rows the adapter `name` fitted on `documents` with `parts` (PARTS) owns: `unseen_tokens`, none for the
    LoRA alone; refused where `parts` would leave nothing to train."""
    if parts not in PARTS:
        raise ValueError(f"adapter parts {parts!r}: choose one of {', '.join(PARTS)}")
    unseen = unseen_tokens(corpus, documents) if parts != "lora" else []
    if parts == "tokens" and not unseen:
        raise VSLMError(f"adapter {name!r}: its text has no token the base never trained on, so adapter parts "
                        "'tokens' leaves nothing to train (choose lora or both)")
    return unseen


def fit_adapter(model: GPT, cfg: RunConfig, corpus: Corpus, name: str, documents: Sequence[str], out: Path,
                steps: int = 200, lr: float = 3e-3, batch_size: int = 16, seed: int = 0, device: str = "cpu",
                parts: str = "both") -> dict:
    """Train the adapter `name` on whole documents (loss on answers where there are some, on every
    token otherwise: vslm.data.answers), everything else frozen, by the one training loop into the run
    folder `out` (a finished one is reused, an interrupted one resumed). `cfg` and `corpus` are the
    base run's: its validation loss is measured at the end with the adapter on. `parts` (PARTS): its LoRA
    matrices and the rows of the documents' tokens that `corpus` never trained (`unseen_tokens`), or one
    of the two. Returns the last logged metrics; the model keeps the adapter's weights and the trainable
    flags it had."""
    lora = {n for n, _ in model.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n}
    if not lora:
        raise ValueError(f"the model has no adapter {name!r}; add_adapter first")
    unseen = tokens_to_own(corpus, name, documents, parts)
    if unseen:
        own_tokens(model, name, unseen)
    else:  # a refit of the LoRA alone, or a text of trained tokens only: no rows of an earlier fit stay
        _drop_rows(model, name)
    use_adapter(model, name)  # peft marks the active adapter's matrices trainable: the flags are set after
    tables = row_tables(model) if unseen else []
    matrices = lora if parts != "tokens" else set()
    trainable = {id(t) for t in tables} | {id(p) for n, p in model.named_parameters() if n in matrices}
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    kept = [t.detach().clone() for t in tables]  # every other row, exactly (nGPT renormalises whole tables)
    mask = torch.zeros(model.embed.weight.shape[0], 1)
    mask[unseen] = 1.0
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    # only the adapter's rows move (on the device and in the dtype the trainer moved the model to)
    hooks = [t.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype)) for t in tables]
    try:
        batches = AnswerSampler(documents, corpus.tokenizer, model.cfg.context, batch_size, seed)
        final = fine_tune(finetune_config(cfg, steps, lr, batch_size, seed, device), out, model, corpus,
                          batches=batches)
        # what moves: the trainer counts every row of a trainable table, where the mask holds all but the owned ones
        update_summary(out, adapter_tokens=len(unseen), trainable_params=sum(
            p.numel() for n, p in model.named_parameters() if n in matrices) + len(unseen) * sum(
            t.shape[1] for t in tables))
        return final
    finally:
        for hook in hooks:
            hook.remove()
        if tables:
            rows: TokenRows = model.__dict__[ROWS]
            with torch.no_grad():
                rows.fitted[name] = [t.detach()[rows.ids[name].to(t.device)].clone() for t in tables]
                for t, k in zip(tables, kept, strict=True):
                    t.copy_(k)
                for t, fitted in zip(tables, rows.fitted[name], strict=True):
                    t[rows.ids[name].to(t.device)] = fitted
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])


def fact_groups(world: World, pool: Pool, size: int, seed: int = 0) -> dict[str, list[str]]:
    """The pool's people cut into groups of `size` (in a seeded order), the pool's companies dealt out
    over the groups: group name -> entity ids. A group's facts are the facts about its entities."""
    rng = random.Random(f"groups:{seed}")
    people = [e.id for e in world.of_kind("person", pool)]
    companies = [e.id for e in world.of_kind("company", pool)]
    rng.shuffle(people)
    rng.shuffle(companies)
    groups = {f"{pool}-{i // size}": people[i : i + size] for i in range(0, len(people), size)}
    names = list(groups)
    for i, c in enumerate(companies):
        groups[names[i % len(names)]].append(c)
    return groups


def group_documents(world: World, entities: Sequence[str], renderings: int = 4, seed: int = 0) -> list[str]:
    """What an adapter for a group learns from: each entity's facts written out `renderings` times
    (the wording varies, as in train.txt)."""
    rng = random.Random(f"group-text:{seed}")
    orders: dict[str, list[int]] = {}
    return [render.entity_document(world, e, rng, r, orders) for r in range(renderings) for e in entities
            if world.facts_about(e)]


class AdapterRouter:
    """Chooses an adapter for a question: the group that most of the retrieved cards are about (a
    card belongs to the group of its subject); None when no card is about a grouped entity. Only
    cards that name someone the question names vote: a card that shares only its relation word with
    the question ("employer" in "the employer of Nobody Here?") says nothing about who is asked about."""

    def __init__(self, retriever: Retriever, world: World, groups: dict[str, list[str]], k: int = 4, rounds: int = 1):
        self.retriever, self.k, self.rounds = retriever, k, rounds
        group_of = {p: g for g, people in groups.items() for p in people}
        self.card_group = {f.id: group_of[f.subject] for f in world.facts if f.subject in group_of}

    def group(self, cards: Sequence[Card]) -> str | None:
        votes = Counter(self.card_group[c.id] for c in cards if c.id in self.card_group)
        return votes.most_common(1)[0][0] if votes else None  # ties: the group seen first

    def route(self, question: str) -> str | None:
        cards = self.retriever.retrieve(question, self.k, self.rounds)
        return self.group([c for c in cards if any(name in question for name in c.entities)])
