"""Knowledge in adapters: a LoRA per group of facts (Hugging Face `peft` on our modules), chosen per
question by the retriever (RESEARCH.md section 5a).

`add_adapter` puts a named LoRA on every attention and MLP matrix of a trained GPT (`qkv`, `proj`,
`fc`); several can live side by side and `use_adapter` switches between them (None: the base model
alone). `fit_adapter` trains one adapter on a group's text with everything else frozen, so the base
model, and every other adapter, stays exactly as it was; it is a run of the one training loop
(train/finetune.py), in a folder of its own. `fact_groups` cuts a pool's people into
groups; `AdapterRouter` answers "which adapter for this question?" with the group most of the
retriever's cards are about.
"""

from __future__ import annotations

import random
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vslm.config import RunConfig
from vslm.data.answers import AnswerSampler
from vslm.data.shards import Corpus
from vslm.knowledge import render
from vslm.knowledge.retrieval import Card, Retriever
from vslm.knowledge.world import Pool, World
from vslm.model import GPT
from vslm.train.finetune import fine_tune, finetune_config

TARGETS = ("qkv", "proj", "fc")  # the Linear layers of attention and MLP (vslm.model.attention, layers)


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
    """Switch every LoRA layer to the named adapter, or off (None: the base model alone)."""
    for layer in lora_layers(model):
        layer.enable_adapters(name is not None)
        if name is not None:
            layer.set_adapter(name)


def adapter_state(model: GPT, name: str) -> dict[str, torch.Tensor]:
    """The named adapter's weights (what `save_adapter` writes)."""
    keys = (f".lora_A.{name}.", f".lora_B.{name}.")
    return {k: v for k, v in model.state_dict().items() if any(key in k for key in keys)}


def save_adapter(model: GPT, name: str, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in adapter_state(model, name).items()}, str(path))


def load_adapter(model: GPT, name: str, path: Path) -> None:
    """Load weights written by `save_adapter` into the adapter `name` (added beforehand with the same rank)."""
    weights = load_file(str(path))
    missing = set(adapter_state(model, name)) ^ set(weights)
    if missing:
        raise ValueError(f"{path} does not fit adapter {name!r} of this model: {sorted(missing)[:3]}")
    model.load_state_dict(weights, strict=False)


def fit_adapter(model: GPT, cfg: RunConfig, corpus: Corpus, name: str, documents: Sequence[str], out: Path,
                steps: int = 200, lr: float = 3e-3, batch_size: int = 16, seed: int = 0, device: str = "cpu") -> dict:
    """Train the adapter `name` on whole documents (loss on answers where there are some, on every
    token otherwise: vslm.data.answers), everything else frozen, by the one training loop into the run
    folder `out` (a finished one is reused, an interrupted one resumed). `cfg` and `corpus` are the
    base run's: its validation loss is measured at the end with the adapter on. Returns the last
    logged metrics; the model keeps the adapter's weights and the trainable flags it had."""
    use_adapter(model, name)
    trainable = {n for n, _ in model.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n}
    if not trainable:
        raise ValueError(f"the model has no adapter {name!r}; add_adapter first")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    try:
        batches = AnswerSampler(documents, corpus.tokenizer, model.cfg.context, batch_size, seed)
        return fine_tune(finetune_config(cfg, steps, lr, batch_size, seed, device), out, model, corpus,
                         batches=batches)
    finally:
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
