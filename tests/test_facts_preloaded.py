"""Preloaded-context training: the examples (answers follow from their context, names and values
change from one example to the next, nothing of the novel pool) and the answer-only loss mask."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from conftest import tiny_overrides
from test_facts import parse_phrase
from vslm.config import load_config
from vslm.data.answers import IGNORE, AnswerSampler, segments
from vslm.data.registry import squad_text
from vslm.data.tokenizer import ByteTokenizer
from vslm.knowledge.folder import build
from vslm.knowledge.world import WorldConfig
from vslm.train.trainer import Trainer

WORLD = WorldConfig(seed=2, people=40, novel_people=12, hops=3, questions_per_hop=10, preloaded=300)

CARD = [(re.compile(r"The (parent|employer|birth city|home city|country) of (.+) is (.+)\."), None),
        (re.compile(r"(.+) is the spouse of (.+)\."), "spouse"),
        (re.compile(r"(.+) was born in the year (\d+)\."), "birth_year")]
RELATION = {"parent": "parent", "employer": "employer", "birth city": "birth_city", "home city": "based_in",
            "country": "country"}


def read_context(lines: list[str]) -> dict[tuple[str, str], str]:
    """(subject, relation) -> object from card sentences, written apart from the generator's templates."""
    table = {}
    for line in lines:
        for pattern, relation in CARD:
            if m := pattern.fullmatch(line):
                if relation is None:
                    table[(m.group(2), RELATION[m.group(1)])] = m.group(3)
                else:
                    table[(m.group(1), relation)] = m.group(2)
                    if relation == "spouse":
                        table[(m.group(2), relation)] = m.group(1)
                break
        else:
            raise AssertionError(f"not a card: {line!r}")
    return table


def answer_from_context(example: str) -> tuple[str, str]:
    """(the answer the context implies, the example's answer)."""
    *cards, question, answer = example.split("\n")
    table = read_context(cards)

    def walk(name: str, relations: list[str]) -> str:
        for r in relations:
            name = table[(name, r)]
        return name

    question = question.removeprefix("Q: ")
    if m := re.fullmatch(r"Who was born first, (.+) or (.+)\?", question):
        a, b = (walk(*parse_phrase(m.group(i))) for i in (1, 2))
        return (a if int(walk(a, ["birth_year"])) < int(walk(b, ["birth_year"])) else b), answer.removeprefix("A: ")
    if m := re.fullmatch(r"In what year was (.+) born\?", question):
        name, relations = parse_phrase(m.group(1))
        return walk(name, [*relations, "birth_year"]), answer.removeprefix("A: ")
    m = re.fullmatch(r"(?:Who|What) is (.+)\?", question)
    return walk(*parse_phrase(m.group(1))), answer.removeprefix("A: ")


@pytest.fixture(scope="module")
def files():
    return build(WORLD)


def documents(text: str) -> list[str]:
    return [d.strip("\n") for d in text.split("<|endoftext|>")]


def test_every_preloaded_example_is_answered_by_its_context(files):
    examples = documents(files["preloaded.txt"])
    assert len(examples) == WORLD.preloaded
    hops = Counter()
    for example in examples:
        implied, given = answer_from_context(example)
        assert implied == given, example
        hops[example.count("\n") - 1 - 4] += 1  # cards - distractors = the facts the answer needs
    assert set(hops) == {1, 2, 3} and min(hops.values()) > WORLD.preloaded / 6
    assert max(len(e.encode()) for e in examples) < 512


def test_preloaded_hops_caps_the_examples_but_not_the_questions():
    capped = build(WORLD.model_copy(update={"preloaded": 60, "preloaded_hops": 2}))
    hops = Counter(example.count("\n") - 1 - 4 for example in documents(capped["preloaded.txt"]))
    assert set(hops) == {1, 2}
    assert '"hops": 3' in capped["questions.jsonl"]  # the world still asks 3-hop questions


def test_names_and_values_change_from_one_example_to_the_next(files):
    facts = Counter()
    people = Counter()
    for example in documents(files["preloaded.txt"]):
        *cards, _, _ = example.split("\n")
        facts.update(read_context(cards).items())
        people.update({n for (n, _) in read_context(cards)})
    # a fact seldom comes back: the weights cannot learn the world of the examples
    assert sum(n for n in facts.values() if n > 1) / sum(facts.values()) < 0.1
    assert len(people) > 2 * WORLD.preloaded  # about three new subjects per example


def test_no_novel_name_in_the_preloaded_or_the_fixed_text(files):
    import json

    world = json.loads(files["world.json"])
    for name in ("preloaded.txt", "fixed.txt"):
        words = set(re.findall(r"[A-Za-z]+", files[name]))
        for e in world["entities"]:
            if e["pool"] == "novel":
                distinct = e["name"].split() if e["kind"] == "person" else e["name"].split()[:1]
                assert not words & set(distinct), (name, e)


def test_the_fixed_arm_holds_the_world_text_and_examples_over_the_fixed_world(files):
    fixed = documents(files["fixed.txt"])
    assert set(documents(files["train.txt"])) < set(fixed)
    examples = [d for d in fixed if d.count("\nQ: ") == 1 and not d.startswith("Q: ")]
    assert len(examples) == WORLD.preloaded
    for example in examples[:50]:
        implied, given = answer_from_context(example)
        assert implied == given


# ------------------------------------------------------------------------------ the loss mask


def test_segments_split_prompts_from_answers():
    assert segments("a\nQ: x?\nA: Ann\nQ: y?\nA: Bo") == [("a\nQ: x?\nA:", False), (" Ann\n", True),
                                                          ("Q: y?\nA:", False), (" Bo\n", True)]
    assert segments("Ann was born.") == [("Ann was born.", True)]  # no answer: plain text, every token counts
    squad = squad_text("Paris is in France.", "Where is Paris?", ["France"])  # the registry's SQuAD documents
    assert segments(squad) == [("Paris is in France.\nQuestion: Where is Paris?\nAnswer:", False), (" France\n", True)]
    assert segments("Q: A: or not?\nA: yes\nmore") == [("Q: A: or not?\nA:", False), (" yes\n", True),
                                                       ("more", False)]


def test_the_loss_mask_covers_only_the_answer_tokens():
    docs = ["card one\ncard two\nQ: Who?\nA: Ann Berg", "Q: What?\nA: Oslo\nQ: When?\nA: 1950", "Plain text."]
    tok = ByteTokenizer()
    sampler = AnswerSampler(docs, tok, context=64, batch_size=16, seed=0)
    x, y = sampler.next_batch()
    expected = {docs[0]: " Ann Berg\n", docs[1]: " Oslo\n 1950\n", docs[2]: "Plain text."}
    for b in range(x.shape[0]):
        row = x[b].tolist()
        assert row[0] == tok.eos_id
        doc = next(d for d in docs if tok.decode(row[1:]).startswith(d[:-1]))  # inputs lack the last token
        assert tok.decode(t for t in y[b].tolist() if t != IGNORE) == expected[doc]
        n = len(doc.encode()) + 1 + (doc != docs[2])  # eos, the text, the final answer's newline
        assert (x[b, n:] == 0).all() and (y[b, n - 1 :] == IGNORE).all()  # padding counts for nothing
    assert len({tuple(r) for r in x.tolist()}) == 3  # all three documents were drawn


def test_a_document_longer_than_the_context_loses_its_oldest_tokens():
    sampler = AnswerSampler(["x" * 100 + "\nQ: Who?\nA: Ann"], ByteTokenizer(), context=16, batch_size=1, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == (1, 16) and ByteTokenizer().decode(x[0].tolist()).endswith("Q: Who?\nA: Ann")
    assert ByteTokenizer().decode(t for t in y[0].tolist() if t != IGNORE) == " Ann\n"


def test_answer_only_training_runs_and_the_sampler_state_is_the_data_position(tmp_path, files):
    (tmp_path / "preloaded.txt").write_text(files["preloaded.txt"])
    words = tiny_overrides(train__steps=6, train__checkpoint_every=3, train__eval_every=0, model__context=128)
    cfg = load_config("tiny", [*words, f"data.source={tmp_path / 'preloaded.txt'}", "data.tokenizer=byte",
                               "data.answer_only=true"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.batches, AnswerSampler)
    state = trainer.batches.state_dict()
    first = trainer.batches.next_batch()
    trainer.batches.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(first, trainer.batches.next_batch(), strict=True))
    trainer.batches.load_state_dict(state)
    final = trainer.fit()
    assert torch.isfinite(torch.tensor(final["loss"])) and final["step"] == 6
