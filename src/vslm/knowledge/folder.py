"""A world folder: what `vslm facts generate` writes and `vslm facts eval` reads.

    DIR/
      world.json       {"format", "generator_version", "settings": the WorldConfig,
                        "entities": [{id, name, kind: person|company|city|country, pool: seen|novel|shared}],
                        "facts": [{id, subject, relation, object, pool}],
                        "counterfactual_facts": [{id: "c<id>", subject, relation, object, pool, replaces: <id>}]}
                       object is an entity id, or the year itself for birth_year; relations and what
                       they link are listed in vslm.knowledge.world.RELATIONS
      cards.jsonl      one line per fact, the counterfactual ones last: {id (the fact's), text (the fact
                       as one sentence), fact: {subject, relation, object}, entities: [names in the text],
                       pool, counterfactual: bool}
      questions.jsonl  one line per question: {id, question, answer, choices, hops, kind: chain|older,
                       starts, paths, support: [fact ids, in the order used], pool: seen|novel,
                       split: train|test, counterfactual: bool, original_answer (counterfactual only)}
      train.txt        the training text of the seen world: documents separated by <|endoftext|>, each
                       an entity's facts (one sentence per line, several wordings over the documents) or
                       a run of "Q: ...\\nA: ...\\n" lines (the questions of split train)
      preloaded.txt    with --preloaded N: N examples "<cards>\\nQ: ...\\nA: ...", each over a small world
                       of its own drawn from the seen pool's names (vslm.knowledge.preloaded)
      fixed.txt        with --preloaded N: train.txt's documents and N such examples over the fixed world

Train a model on it with `vslm train CONFIG data.source=DIR/train.txt` (a byte or BPE tokenizer, so
that the novel pool's names can be written at evaluation). Nothing of the novel pool, and none of
the counterfactual facts or the test questions, is in train.txt. docs/FACTS.md says more.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from vslm.config import one_line_error
from vslm.data.tokenizer import EOS
from vslm.errors import VSLMError
from vslm.files import default_mode, write_text
from vslm.knowledge import render
from vslm.knowledge.preloaded import FIXED, PRELOADED, fixed_examples, preloaded_examples
from vslm.knowledge.questions import Question, make_questions
from vslm.knowledge.retrieval import Card
from vslm.knowledge.world import (
    GENERATOR_VERSION,
    Entity,
    Fact,
    World,
    WorldConfig,
    counterfactual_world,
    generate_world,
    name_pools,
)

FORMAT = 1
FILES = ("world.json", "cards.jsonl", "questions.jsonl", "train.txt")
QA_PER_DOCUMENT = 8


@dataclass
class WorldFolder:
    settings: WorldConfig
    world: World
    counterfactual: World  # the world with the counterfactual facts in place of those they replace
    cards: dict[str, Card]  # fact id -> card, counterfactual ones included
    questions: list[Question]
    key: str  # of the files' bytes: what an evaluation or an adapter fitted on this world records


def build(cfg: WorldConfig) -> dict[str, str]:
    """The folder's files as {name: text}: the same settings give the same bytes."""
    world = generate_world(cfg)
    cf_world = counterfactual_world(world, cfg.seed)
    questions = make_questions(world, cf_world, cfg)
    changed = [f for f in cf_world.facts if f.replaces is not None]
    # a setting at its default that came after format 1 is left out, so older folders stay byte-identical
    settings = cfg.model_dump(exclude=set() if cfg.test_questions_per_hop else {"test_questions_per_hop"})
    header = {"format": FORMAT, "generator_version": GENERATOR_VERSION, "settings": settings}
    world_json = {**header, "entities": [vars(e) for e in world.entities.values()],
                  "facts": [f.to_dict() for f in world.facts], "counterfactual_facts": [f.to_dict() for f in changed]}
    cards = [_card(world, f) for f in world.facts] + [_card(cf_world, f) for f in changed]
    files = {
        "world.json": json.dumps(world_json, indent=1) + "\n",
        "cards.jsonl": "".join(json.dumps(c) + "\n" for c in cards),
        "questions.jsonl": "".join(json.dumps(q.to_dict()) + "\n" for q in questions),
        "train.txt": training_text(world, questions, cfg),
    }
    if cfg.preloaded:
        files |= preloaded_texts(world, questions, cfg, files["train.txt"])
    return files


def preloaded_texts(world: World, questions: list[Question], cfg: WorldConfig, train_text: str) -> dict[str, str]:
    """preloaded.txt (every example a world of its own) and fixed.txt (the fixed world's training text
    and examples over it), `cfg.preloaded` examples each."""
    fresh = preloaded_examples(name_pools(cfg.seed)["seen"], cfg.preloaded, cfg.preloaded_hops or cfg.hops, cfg.seed)
    fixed = [d.strip("\n") for d in train_text.split(EOS)] + fixed_examples(world, questions, cfg.preloaded, cfg.seed)
    random.Random(f"fixed-order:{cfg.seed}").shuffle(fixed)
    return {PRELOADED: f"\n{EOS}\n".join(fresh) + "\n", FIXED: f"\n{EOS}\n".join(fixed) + "\n"}


def _card(world: World, fact: Fact) -> dict:
    names = [world.name(fact.subject)] + ([world.name(fact.object)] if fact.object in world.entities else [])
    return {"id": fact.id, "text": render.card_text(world, fact),
            "fact": {"subject": fact.subject, "relation": fact.relation, "object": fact.object},
            "entities": names, "pool": fact.pool, "counterfactual": fact.replaces is not None}


def training_text(world: World, questions: list[Question], cfg: WorldConfig) -> str:
    """Every seen and shared entity written up `renderings` times, and the training questions with
    their answers, as documents in a seeded random order."""
    rng = random.Random(f"text:{cfg.seed}")
    orders: dict[str, list[int]] = {}
    docs = [render.entity_document(world, e.id, rng, r, orders)
            for r in range(cfg.renderings) for e in world.entities.values()
            if e.pool != "novel" and world.facts_about(e.id)]
    qa = [render.closed_book_prompt(q.question) + render.answer_text(q.answer)
          for q in questions if q.split == "train" and not q.counterfactual]
    rng.shuffle(qa)
    docs += ["".join(qa[i : i + QA_PER_DOCUMENT]).rstrip("\n") for i in range(0, len(qa), QA_PER_DOCUMENT)]
    rng.shuffle(docs)
    return f"\n{EOS}\n".join(docs) + "\n"


def write_world_folder(cfg: WorldConfig, out: Path) -> dict[str, str]:
    """Generate the world and write its folder; returns the files' texts. A folder that is not empty is
    refused, unless it already holds these very files (the same generator and settings): then nothing
    is written."""
    files = build(cfg)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if holds_world(out, files):
            return files
        raise VSLMError(f"{out} exists, is not empty and holds no world of these settings and seed"
                        f"{_other_settings(out, json.loads(files['world.json'])['settings'])}: facts generate writes "
                        "a new folder (--out another), nothing is overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:  # written whole, then renamed: a stop half-way leaves no half world that the rerun would refuse
        tmp.chmod(default_mode(folder=True))
        for name, text in files.items():
            write_text(tmp / name, text)  # each fsynced: the rename below publishes whole files
        os.replace(tmp, out)  # over nothing, or over an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _other_settings(folder: Path, asked: dict) -> str:
    """' (it holds ...: preloaded 0, asked 20000)' where `folder` holds a world of other settings, else ''."""
    try:
        held = json.loads((folder / "world.json").read_text(encoding="utf-8"))["settings"]
        defaults = WorldConfig().model_dump()
        differ = [f"{k} {held.get(k, defaults.get(k))} (asked {v})" for k, v in asked.items()
                  if held.get(k, defaults.get(k)) != v]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    return f" (it holds a world of {', '.join(differ)})" if differ else ""


def holds_world(folder: Path, files: dict[str, str]) -> bool:
    """Whether `folder` holds the world folder's `files` (build's) as they are, byte for byte."""
    return all((folder / name).is_file() and (folder / name).read_text(encoding="utf-8") == text
               for name, text in files.items())


def _key(texts: Iterable[str]) -> str:
    return hashlib.sha256("".join(texts).encode()).hexdigest()[:16]


def world_key(folder: Path) -> str | None:
    """WorldFolder.key of the world in `folder`, without parsing it; None where its files do not read."""
    try:
        return _key((Path(folder) / name).read_text(encoding="utf-8") for name in FILES[:3])
    except (OSError, UnicodeDecodeError):
        return None


def load_world_folder(folder: Path) -> WorldFolder:
    """The world folder's contents; a file missing, damaged or of another format is one VSLMError naming it."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise VSLMError(f"{folder} is not a world folder (no {', '.join(missing)}); "
                        "make one with `vslm facts generate`")
    texts, name = {}, FILES[0]
    try:
        for name in FILES[:3]:
            texts[name] = (folder / name).read_text(encoding="utf-8")
        name = "world.json"
        raw = json.loads(texts[name])
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise VSLMError(f"{folder}/world.json has format {got}, this vslm reads format {FORMAT}")
        try:
            settings = WorldConfig.model_validate(raw["settings"])
        except ValidationError as e:
            raise VSLMError(one_line_error(e, prefix=f"{folder}/world.json settings")) from None
        entities = {e["id"]: Entity(**e) for e in raw["entities"]}
        facts = [Fact(**f) for f in raw["facts"]]
        changed = {f["replaces"]: Fact(**f) for f in raw["counterfactual_facts"]}
        cards, name = {}, "cards.jsonl"
        for line in texts[name].splitlines():
            c = json.loads(line)
            cards[c["id"]] = Card(c["id"], c["text"], tuple(c["entities"]), c["pool"], c["counterfactual"])
        name = "questions.jsonl"
        questions = [Question.from_dict(json.loads(line)) for line in texts[name].splitlines()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise VSLMError(f"{folder}/{name} does not read as a world folder's ({type(e).__name__}: {e}); generate "
                        "the world again with `vslm facts generate`") from None
    if not questions:
        raise VSLMError(f"{folder}/questions.jsonl holds no questions; generate the world again with "
                        "`vslm facts generate`")
    # the files agree with each other (a file cut at a line's end, or another world's copied in, reads well alone)
    facts_ids = [f.id for f in facts] + [f.id for f in changed.values()]
    if missing := [i for i in facts_ids if i not in cards]:
        raise VSLMError(f"{folder}/cards.jsonl has no card for {len(missing)} of world.json's {len(facts_ids)} facts "
                        f"({missing[0]} first): it is cut short or another world's; generate the world again with "
                        "`vslm facts generate`")
    known = set(facts_ids)
    if stray := [(q.id, i) for q in questions for i in q.support if i not in known]:
        raise VSLMError(f"{folder}/questions.jsonl asks about facts world.json does not hold ({stray[0][0]} rests "
                        f"on {stray[0][1]}): it is another world's; generate the world again with "
                        "`vslm facts generate`")
    key = _key(texts[n] for n in FILES[:3])
    return WorldFolder(settings, World(entities, facts),
                       World(entities, [changed.get(f.id, f) for f in facts]), cards, questions, key)
