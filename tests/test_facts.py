"""FactWorld: the generator (determinism, answers, pools, format) and the retriever.

The answers are checked by `resolve`, written here apart from the generator: it parses each question's
words and reaches its answer from the question's supporting facts alone, read from the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vslm.knowledge import render
from vslm.knowledge.folder import build, load_world_folder, write_world_folder
from vslm.knowledge.retrieval import Card, Retriever, support_recall
from vslm.knowledge.world import WorldConfig

SMALL = WorldConfig(seed=3, people=60, novel_people=20, hops=3, questions_per_hop=30)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world_folder(SMALL, out)
    return out


def read(folder: Path) -> tuple[dict, list[dict], list[dict], str]:
    world = json.loads((folder / "world.json").read_text())
    cards = [json.loads(line) for line in (folder / "cards.jsonl").read_text().splitlines()]
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines()]
    return world, cards, questions, (folder / "train.txt").read_text()


# ------------------------------------------------------------------------ an independent resolver

NOUNS = {"parent": ["parent"], "grandparent": ["parent", "parent"], "spouse": ["spouse"], "employer": ["employer"],
         "birth city": ["birth_city"], "home city": ["based_in"], "country": ["country"]}


def parse_phrase(phrase: str) -> tuple[str, list[str]]:
    """"the home city of the employer of Alma Dorn" -> ("Alma Dorn", ["employer", "based_in"])."""
    relations = []
    while m := re.match(r"the (parent|grandparent|spouse|employer|birth city|home city|country) of (.+)$", phrase):
        relations = NOUNS[m.group(1)] + relations
        phrase = m.group(2)
    return phrase, relations


def resolve(question: str, facts: list[dict], names: dict[str, str]) -> tuple[str, set[str]]:
    """The answer reached from `facts` alone, and the ids of the facts it used."""
    table: dict[tuple[str, str], tuple[str, str]] = {}
    for f in facts:
        obj = names.get(f["object"], f["object"])
        table[(names[f["subject"]], f["relation"])] = (obj, f["id"])
        if f["relation"] == "spouse":
            table[(obj, "spouse")] = (names[f["subject"]], f["id"])
    used: set[str] = set()

    def walk(name: str, relations: list[str]) -> str:
        for r in relations:
            name, fid = table[(name, r)]  # a KeyError: the support lacks a fact the question needs
            used.add(fid)
        return name

    if m := re.fullmatch(r"Who was born first, (.+) or (.+)\?", question):
        a, b = (walk(*parse_phrase(m.group(i))) for i in (1, 2))
        ya, yb = int(walk(a, ["birth_year"])), int(walk(b, ["birth_year"]))
        assert ya != yb
        return (a if ya < yb else b), used
    if m := re.fullmatch(r"In what year was (.+) born\?", question):
        name, relations = parse_phrase(m.group(1))
        return walk(name, [*relations, "birth_year"]), used
    m = re.fullmatch(r"(Who|What) is (.+)\?", question)
    assert m, question
    return walk(*parse_phrase(m.group(2))), used


def test_a_world_folder_stopped_half_way_is_not_left_half_written(tmp_path, monkeypatch):
    """The world is written in a temporary folder and renamed: a stop after its first file leaves nothing
    that the rerun would refuse as "not empty and holds no world"."""
    from vslm.knowledge import folder

    out, write, calls = tmp_path / "world", folder.write_text, []

    def stop_at_second(path, text):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(path, text)

    monkeypatch.setattr(folder, "write_text", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        write_world_folder(SMALL, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert write_world_folder(SMALL, out) == build(SMALL) and load_world_folder(out)


def test_every_answer_follows_from_its_supporting_facts(world_dir):
    world, _, questions, _ = read(world_dir)
    names = {e["id"]: e["name"] for e in world["entities"]}
    facts = {f["id"]: f for f in world["facts"] + world["counterfactual_facts"]}
    kinds = set()
    for q in questions:
        support = [facts[i] for i in q["support"]]
        answer, used = resolve(q["question"], support, names)
        assert answer == q["answer"], q
        assert used == set(q["support"]) and len(q["support"]) == q["hops"], q  # every fact needed, no other
        assert q["answer"] in q["choices"] and len(set(q["choices"])) == len(q["choices"]) <= SMALL.choices
        if q["counterfactual"]:
            assert q["original_answer"] in q["choices"] and q["original_answer"] != q["answer"]
            assert any(facts[i].get("replaces") for i in q["support"])
        kinds.add((q["pool"], q["split"], q["counterfactual"], q["hops"]))
    for hops in (1, 2, 3):
        for group in (("seen", "train", False), ("seen", "test", False), ("novel", "test", False),
                      ("seen", "test", True)):
            assert (*group, hops) in kinds, (group, hops)


def test_the_resolver_catches_a_wrong_answer(world_dir):
    world, _, questions, _ = read(world_dir)
    names = {e["id"]: e["name"] for e in world["entities"]}
    facts = {f["id"]: f for f in world["facts"]}
    q = next(q for q in questions if q["hops"] == 2 and q["question"].startswith("What is"))
    support = [dict(facts[i]) for i in q["support"]]
    with pytest.raises(KeyError):  # a missing link is noticed
        resolve(q["question"], support[:1], names)
    other = next(e["id"] for e in world["entities"] if e["kind"] == "city" and names[e["id"]] != q["answer"])
    support[-1]["object"] = other
    assert resolve(q["question"], support, names)[0] != q["answer"]


# ---------------------------------------------------------------------------- the generator


def test_same_seed_same_bytes_other_seed_other_world():
    assert build(SMALL) == build(SMALL)
    other = build(SMALL.model_copy(update={"seed": 4}))
    assert all(other[name] != text for name, text in build(SMALL).items())


def test_more_test_questions_leave_the_training_text_and_questions_as_they_were():
    """test_questions_per_hop draws more held-out questions (a narrower accuracy) from the same world:
    the training side is the same bytes, and the default leaves world.json as before the setting."""
    base = build(SMALL)
    more = build(SMALL.model_copy(update={"test_questions_per_hop": 60}))
    assert more["train.txt"] == base["train.txt"] and more["cards.jsonl"] == base["cards.jsonl"]

    def questions(files: dict[str, str]) -> list[dict]:
        return [json.loads(line) for line in files["questions.jsonl"].splitlines()]

    def ids_free(qs: list[dict]) -> list[tuple]:
        return [(q["question"], q["answer"], tuple(q["choices"])) for q in qs]

    assert ids_free(q for q in questions(more) if q["split"] == "train") == \
        ids_free(q for q in questions(base) if q["split"] == "train")
    held = {key: sum(1 for q in questions(files) if q["split"] == "test" and not q["counterfactual"]
                     and q["pool"] == "seen" and q["hops"] == 2) for key, files in (("base", base), ("more", more))}
    assert held == {"base": 30, "more": 60}
    assert "test_questions_per_hop" not in json.loads(base["world.json"])["settings"]
    assert json.loads(more["world.json"])["settings"]["test_questions_per_hop"] == 60


def test_no_novel_entity_nor_held_out_question_is_in_the_training_text(world_dir):
    world, cards, questions, text = read(world_dir)
    words = set(re.findall(r"[A-Za-z]+", text))
    novel = [e for e in world["entities"] if e["pool"] == "novel"]
    assert {e["kind"] for e in novel} == {"person", "company"}
    for e in novel:
        assert e["name"] not in text
        distinct = e["name"].split() if e["kind"] == "person" else e["name"].split()[:1]  # "Lumen" of "Lumen Labs"
        assert not words & set(distinct), e
    for q in questions:
        if q["split"] == "test":
            assert q["question"] not in text
    for c in cards:
        assert (c["text"] in text) == (c["pool"] != "novel" and not c["counterfactual"]), c
    assert "Q: " in text and "<|endoftext|>" in text


def test_every_trained_fact_is_written_in_several_wordings(world_dir):
    folder = load_world_folder(world_dir)
    text = (world_dir / "train.txt").read_text()
    for fact in folder.world.facts:
        if fact.pool == "novel":
            continue
        wordings = {render.fact_text(folder.world, fact, t) for t in range(len(render.TEMPLATES[fact.relation]))}
        found = sum(w in text for w in wordings)
        assert found >= min(SMALL.renderings, len(wordings)) - (fact.relation == "spouse"), fact


def test_the_folder_reads_back_as_it_was_written(world_dir):
    folder = load_world_folder(world_dir)
    files = build(SMALL)
    assert [json.dumps(q.to_dict()) + "\n" for q in folder.questions] == files["questions.jsonl"].splitlines(True)
    assert len(folder.cards) == files["cards.jsonl"].count("\n")
    assert folder.settings == SMALL
    changed = [f for f in folder.counterfactual.facts if f.replaces]
    assert changed and all(f.id == "c" + f.replaces for f in changed)


def test_bad_settings_and_folders_are_one_line_errors(tmp_path):
    from vslm.errors import VSLMError

    with pytest.raises(ValueError, match="distinct names"):
        WorldConfig(people=100_000)
    with pytest.raises(VSLMError, match="not a world folder"):
        load_world_folder(tmp_path)


# ---------------------------------------------------------------------------- the retriever


def recall(folder, retriever: Retriever, hops: int, k: int, rounds: int, pool: str = "seen") -> float:
    qs = [q for q in folder.questions if q.pool == pool and q.hops == hops and not q.counterfactual]
    return sum(support_recall(retriever.retrieve(q.question, k, rounds), q.support)[1] for q in qs) / len(qs)


def test_retrieval_recall_on_a_small_world(world_dir):
    folder = load_world_folder(world_dir)
    retriever = Retriever((c for c in folder.cards.values() if not c.counterfactual), synonyms=render.SYNONYMS)
    assert recall(folder, retriever, hops=1, k=3, rounds=1) >= 0.95
    assert recall(folder, retriever, hops=2, k=6, rounds=2) >= 0.9
    assert recall(folder, retriever, hops=2, k=2, rounds=1) < 0.5  # one round cannot cross the bridge
    assert recall(folder, retriever, hops=3, k=9, rounds=3) >= 0.7


def test_facts_added_after_the_index_are_found(world_dir):
    folder = load_world_folder(world_dir)
    seen = [c for c in folder.cards.values() if c.pool != "novel" and not c.counterfactual]
    novel = [c for c in folder.cards.values() if c.pool == "novel"]
    retriever = Retriever(seen, synonyms=render.SYNONYMS)
    assert recall(folder, retriever, hops=1, k=3, rounds=1, pool="novel") < 0.2
    retriever.add(novel)
    assert recall(folder, retriever, hops=1, k=3, rounds=1, pool="novel") >= 0.95
    at_once = Retriever(seen + novel, synonyms=render.SYNONYMS)
    for hops, k, rounds in ((1, 3, 1), (2, 6, 2), (3, 9, 3)):  # as well as if they had been there from the start
        assert recall(folder, retriever, hops, k, rounds, "novel") == recall(folder, at_once, hops, k, rounds, "novel")
    assert recall(folder, retriever, hops=2, k=6, rounds=2, pool="novel") >= 0.75
    new = Card("late", "The employer of Zed Quux is Nova Works.", ("Zed Quux", "Nova Works"))
    retriever.add([new])
    assert retriever.retrieve("What is the employer of Zed Quux?", k=1, hops=1) == [new]
    # a card with an id already indexed replaces it
    retriever.add([Card("late", "The employer of Zed Quux is Orbit Works.", ("Zed Quux", "Orbit Works"))])
    assert retriever.retrieve("What is the employer of Zed Quux?", k=1, hops=1)[0].text.endswith("Orbit Works.")
    assert len(retriever) == len(seen) + len(novel) + 1


def test_tied_cards_come_in_the_order_they_were_added(monkeypatch):
    """Equal scores are ordered by when the card was added, whatever numpy's SIMD or bm25s's backend would
    pick: on an AVX2 machine np.argpartition ordered ties otherwise and multi-hop recall fell (0.77 -> 0.67)."""
    cards = [Card(f"c{i}", f"Ann Berg was born in the year {1900 + i}.", ("Ann Berg",)) for i in range(200)]
    r = Retriever(cards)
    assert [c.id for c, _ in r.search("the year of Ann Berg", 5)] == ["c0", "c1", "c2", "c3", "c4"]
    assert [c.id for c, _ in r.search("the year of Ann Berg", 3, exclude=["c0", "c2"])] == ["c1", "c3", "c4"]
    monkeypatch.setattr(np, "argpartition", lambda *a, **k: pytest.fail("top-k left to np.argpartition"))
    r.add([Card("c5", "Ann Berg was born in the year 1999.", ("Ann Berg",))])  # replaced in place
    assert [c.id for c, _ in r.search("the year of Ann Berg", 7)] == [f"c{i}" for i in range(7)]
    assert r.search("an unknown word", 3) == []


def test_retrieval_follows_the_bridge_entity():
    cards = [Card("a", "The employer of Ann Berg is Acme Labs.", ("Ann Berg", "Acme Labs")),
             Card("b", "The home city of Acme Labs is Oslo.", ("Acme Labs", "Oslo")),
             Card("c", "The country of Oslo is Norway.", ("Oslo", "Norway")),
             Card("d", "The birth city of Ann Berg is Rome.", ("Ann Berg", "Rome")),
             Card("e", "The home city of Zeta Works is Rome.", ("Zeta Works", "Rome"))]
    r = Retriever(cards)
    q = "What is the country of the home city of the employer of Ann Berg?"
    assert [c.id for c in r.retrieve(q, k=3, hops=3)] == ["a", "b", "c"]
    assert support_recall(r.retrieve(q, k=1, hops=1), ["a", "b", "c"]) == (1 / 3, False)
    assert Retriever().retrieve(q) == [] and r.search("the of is", 3) == []
