"""LoRA adapters for groups of facts: only the adapter's weights move, adapters switch cleanly, and
the retriever routes a question to the adapter of the people it is about."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.data.shards import prepare_corpus
from vslm.errors import VSLMError
from vslm.knowledge import render
from vslm.knowledge.adapters import (
    ROWS,
    AdapterRouter,
    adapter_state,
    add_adapter,
    fact_groups,
    fit_adapter,
    group_documents,
    load_adapter,
    save_adapter,
    unseen_tokens,
    use_adapter,
)
from vslm.knowledge.retrieval import Card, Retriever
from vslm.knowledge.world import WorldConfig, generate_world
from vslm.model import GPT

WORLD = generate_world(WorldConfig(seed=4, people=24, novel_people=8))


BASE = load_config("tiny", tiny_overrides(data__tokenizer="byte", model__context=128, model__depth=2, model__width=32,
                                          model__heads=2, model__vocab_size=257))


@pytest.fixture(scope="module")
def corpus():
    return prepare_corpus(BASE.data)


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(BASE.model)


def losses_of(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fitting_an_adapter_changes_only_its_own_weights(corpus, tmp_path):
    model = tiny_model()
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        base_out = model(x)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapter(model, "g0", rank=4)
    add_adapter(model, "g1", rank=4)
    other = {k: v.clone() for k, v in adapter_state(model, "g1").items()}
    with torch.no_grad():
        assert torch.allclose(model(x), base_out)  # B = 0: a new adapter changes nothing
    docs = group_documents(WORLD, fact_groups(WORLD, "seen", 6)["seen-0"])
    use_adapter(model, "g0")
    flags = [p.requires_grad for p in model.parameters()]
    final = fit_adapter(model, BASE, corpus, "g0", docs, tmp_path / "g0", steps=30, batch_size=8)
    losses = losses_of(tmp_path / "g0")
    assert len(losses) == 30 and final["loss"] == losses[-1] and losses[-1] < losses[0]
    assert "val_loss" in final  # the base corpus's validation windows, with the adapter on
    owned = model.__dict__[ROWS].ids["g0"].tolist()  # the years' digits: bytes the stories never hold
    assert owned == unseen_tokens(corpus, docs) and ord("1") in owned
    lora_size = sum(v.numel() for k, v in adapter_state(model, "g0").items() if ".lora_" in k)
    assert json.loads((tmp_path / "g0" / "summary.json").read_text())["trainable_params"] == lora_size + 32 * len(owned)
    after = model.state_dict()  # g0 in use: its rows written into the embedding, every other row the base's
    changed = (after["embed.weight"] != base["embed.weight"]).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(owned)
    use_adapter(model, None)
    after = model.state_dict()
    lora = {k for k in set(adapter_state(model, "g0")) | set(other) if not k.startswith("tokens.")}
    for name, value in base.items():  # peft renames a wrapped layer's weight to .base_layer.weight
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], value), name
    assert set(after) - {n if n in after else n.replace(".weight", ".base_layer.weight") for n in base} == lora
    use_adapter(model, "g0")
    assert all(torch.equal(after[k], v) for k, v in other.items())
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter_state(model, "g0").items() if "lora_B" in k)
    assert [p.requires_grad for p in model.parameters()] == flags  # as they were
    with torch.no_grad():
        use_adapter(model, None)
        assert torch.allclose(model(x), base_out)
        use_adapter(model, "g1")
        assert torch.allclose(model(x), base_out)
        use_adapter(model, "g0")
        assert not torch.allclose(model(x), base_out)


def test_an_adapter_owns_the_rows_of_the_tokens_its_base_never_trained_on(corpus, tmp_path):
    """Rows of tokens the base corpus lacks (here "Ω", two bytes the stories never hold) are the adapter's:
    only they move, each adapter keeps its own, and the base's come back when none is in use."""
    docs = [d + "\nΩmega works at Ωrdo." for d in group_documents(WORLD, fact_groups(WORLD, "seen", 6)["seen-0"])]
    trained = set(np.unique(np.asarray(corpus.train.tokens)).tolist())
    expected = sorted({t for d in docs for t in corpus.tokenizer.encode(d)} - trained)
    assert unseen_tokens(corpus, docs) == expected and {0xCE, 0xA9} <= set(expected)
    model = tiny_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapter(model, "g0", rank=4)
    add_adapter(model, "g1", rank=4)
    fit_adapter(model, BASE, corpus, "g0", docs, tmp_path / "g0", steps=10, batch_size=4, parts="tokens")
    summary = json.loads((tmp_path / "g0" / "summary.json").read_text())
    assert summary["adapter_tokens"] == len(expected) and summary["trainable_params"] == len(expected) * 32
    embed = model.embed.weight
    moved = (embed != base["embed.weight"]).any(dim=1).nonzero().flatten().tolist()
    assert {0xCE, 0xA9} <= set(moved) and set(moved) <= set(expected)  # Ω is in every document
    assert all(not v.any() for k, v in adapter_state(model, "g0").items() if "lora_B" in k)  # parts "tokens"
    g0 = embed.detach()[expected].clone()
    fit_adapter(model, BASE, corpus, "g1", docs, tmp_path / "g1", steps=10, batch_size=4, lr=1e-2)  # both parts
    g1 = embed.detach()[expected].clone()
    assert not torch.equal(g0, g1) and any(v.any() for k, v in adapter_state(model, "g1").items() if "lora_B" in k)
    for name, rows in (("g0", g0), (None, base["embed.weight"][expected]), ("g1", g1), ("g0", g0)):
        use_adapter(model, name)
        assert torch.equal(embed[expected], rows), name
        others = [i for i in range(embed.shape[0]) if i not in expected]
        assert torch.equal(embed[others], base["embed.weight"][others])
    # saved and loaded with its rows: a fresh model answers as this one does on text with Ω
    save_adapter(model, "g1", tmp_path / "g1.safetensors")
    fresh = add_adapter(tiny_model(), "g1", rank=4)
    load_adapter(fresh, "g1", tmp_path / "g1.safetensors")
    use_adapter(fresh, "g1")
    use_adapter(model, "g1")
    x = torch.tensor([corpus.tokenizer.encode("Ωmega works at Ωrdo.")])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        use_adapter(fresh, None)
        assert torch.equal(fresh.embed.weight, base["embed.weight"])
    # a refit of its LoRA alone, or a file without rows, leaves the adapter none of its earlier ones
    fit_adapter(model, BASE, corpus, "g1", docs, tmp_path / "g1-lora", steps=2, batch_size=4, parts="lora")
    assert "g1" not in model.__dict__[ROWS].ids and torch.equal(embed, base["embed.weight"])  # g1 in use
    use_adapter(model, "g0")
    assert torch.equal(embed[expected], g0)  # g0's rows kept
    save_adapter(model, "g1", tmp_path / "g1-lora.safetensors")
    load_adapter(fresh, "g1", tmp_path / "g1-lora.safetensors")
    assert torch.equal(fresh.embed.weight, base["embed.weight"]) and "g1" not in fresh.__dict__[ROWS].ids
    # rows saved from a model with an untied head (two tables) do not fit this tied one
    untied = load_config("tiny", tiny_overrides(data__tokenizer="byte", model__context=128, model__depth=2,
                                                model__width=32, model__heads=2, model__vocab_size=257,
                                                model__tie_embeddings="false"))
    torch.manual_seed(0)
    other = add_adapter(GPT(untied.model), "g1", rank=4)
    fit_adapter(other, untied, corpus, "g1", docs, tmp_path / "untied", steps=2, batch_size=4)
    assert len(other.__dict__[ROWS].fitted["g1"]) == 2  # the embedding's rows and the head's
    save_adapter(other, "g1", tmp_path / "untied.safetensors")
    with pytest.raises(ValueError, match="its token rows"):
        load_adapter(add_adapter(tiny_model(), "g1", rank=4), "g1", tmp_path / "untied.safetensors")
    with pytest.raises(VSLMError, match="parts 'tokens' leaves nothing to train"):
        fit_adapter(model, BASE, corpus, "g0", ["the cat sat"], tmp_path / "none", steps=2, parts="tokens")
    with pytest.raises(ValueError, match="adapter parts 'all'"):
        fit_adapter(model, BASE, corpus, "g0", docs, tmp_path / "none", steps=2, parts="all")


def test_an_ngpt_adapter_leaves_every_other_row_exactly(corpus, tmp_path):
    """nGPT renormalises a trainable table's every row after each step: the rows not the adapter's are put back."""
    cfg = load_config("tiny", tiny_overrides(data__tokenizer="byte", model__context=128, model__depth=2,
                                             model__width=32, model__heads=2, model__vocab_size=257,
                                             model__ngpt="true", model__position="rope"))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapter(model, "g0", rank=4)
    docs = group_documents(WORLD, fact_groups(WORLD, "seen", 6)["seen-0"])
    fit_adapter(model, cfg, corpus, "g0", docs, tmp_path / "g0", steps=5, batch_size=4)
    owned = model.__dict__[ROWS].ids["g0"].tolist()
    rows = model.embed.weight.detach()[owned]
    assert torch.allclose(rows.norm(dim=1), torch.ones(len(owned)), atol=1e-5)  # on the sphere, as nGPT's rows
    assert not torch.equal(rows, base["embed.weight"][owned])
    use_adapter(model, None)
    assert torch.equal(model.embed.weight, base["embed.weight"])


def test_an_adapter_saves_and_loads(corpus, tmp_path):
    model = tiny_model()
    add_adapter(model, "g0", rank=4)
    docs = group_documents(WORLD, fact_groups(WORLD, "seen", 6)["seen-1"])
    fit_adapter(model, BASE, corpus, "g0", docs, tmp_path / "run", steps=3, batch_size=4)
    save_adapter(model, "g0", tmp_path / "g0.safetensors")
    fresh = add_adapter(tiny_model(), "g0", rank=4)
    load_adapter(fresh, "g0", tmp_path / "g0.safetensors")
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))
        # and the adapter is what they share: the base model alone gives other logits (a save or load of
        # nothing, or an adapter left inactive, would pass the line above)
        assert not torch.allclose(tiny_model()(x), model(x), atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(add_adapter(tiny_model(), "other", rank=4), "other", tmp_path / "g0.safetensors")


def test_the_router_picks_the_group_of_the_person_asked_about():
    groups = fact_groups(WORLD, "seen", 6)
    grouped = sorted(p for people in groups.values() for p in people)
    assert grouped == sorted(e.id for e in WORLD.entities.values() if e.pool == "seen")
    cards = [render.card_text(WORLD, f) for f in WORLD.facts]
    retriever = Retriever(Card(f.id, t, (WORLD.name(f.subject),)) for f, t in zip(WORLD.facts, cards, strict=True))
    router = AdapterRouter(retriever, WORLD, groups, k=3)
    right = 0
    people = [p for people in groups.values() for p in people if p.startswith("person")]
    for p in people:
        question = render.chain_question(WORLD.name(p), ["employer"])
        right += router.route(question) == next(g for g, ps in groups.items() if p in ps)
    assert right / len(people) >= 0.9
    assert router.route("What is the employer of Nobody Here?") is None
