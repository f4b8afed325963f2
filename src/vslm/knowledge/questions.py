"""Questions over a FactWorld: 1 to k hops, each with its answer, answer candidates and supporting facts.

A question is a small program run on the world:

* `chain`: start at a person and follow relations, "What is the country of the home city of the
  employer of X?" (3 hops: employer, home city, country);
* `older`: compare two people's birth years, each person named directly or through one kinship
  link, "Who was born first, X or the spouse of Y?" (3 facts: the marriage and two birth years).

`hops` is the number of facts the answer needs, and `support` lists them in the order they are used:
the gold context of the open-book setting. Questions are drawn evenly over the kinds of path of each
hop count, so that rare paths (grandparents) are not crowded out by common ones.

Each question comes with `choices`, the answer among other values of the same kind from the same pool
(people of its pool, companies, cities, countries, years); a model answers by picking the choice it
finds most likely, so chance is 1 / len(choices).

The seen pool's people are split: the questions of a `qa_fraction` of them are training text (split
`train`), the others are held out (`test`). A counterfactual question re-asks a seen test question
in the counterfactual world where its answer changed; its `original_answer` is the real world's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

from vslm.knowledge import render
from vslm.knowledge.world import RELATIONS, Fact, Kind, Pool, World, WorldConfig

KINSHIP = ((), ("parent",), ("spouse",))  # how an older-than question may name each person
TRAIN_QUOTA_SCALE = 5  # training questions per hop count, relative to questions_per_hop


@dataclass(frozen=True)
class Program:
    """What a question asks: `chain` follows paths[0] from starts[0]; `older` compares the people
    reached by paths[0] from starts[0] and paths[1] from starts[1]."""

    kind: Literal["chain", "older"]
    starts: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]

    def signature(self) -> tuple:
        return (self.kind, *self.paths)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    choices: tuple[str, ...]
    hops: int
    kind: Literal["chain", "older"]
    starts: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]
    support: tuple[str, ...]  # fact ids, in the order the answer uses them
    pool: Pool
    split: Literal["train", "test"]
    counterfactual: bool = False
    original_answer: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.counterfactual:
            del d["original_answer"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Question:
        d = dict(d)
        d["choices"], d["starts"], d["support"] = tuple(d["choices"]), tuple(d["starts"]), tuple(d["support"])
        d["paths"] = tuple(tuple(p) for p in d["paths"])
        return cls(**d)


def solve(world: World, program: Program) -> tuple[str, list[Fact]] | None:
    """(answer, supporting facts) of a program in a world; None when a link is missing, the chain
    comes back to its start or the two people compared are the same age."""
    if program.kind == "chain":
        facts = world.follow(program.starts[0], program.paths[0])
        if facts is None or world.end(program.starts[0], facts) == program.starts[0]:
            return None
        return world.name(world.end(program.starts[0], facts)), facts
    people, support, years = [], [], []
    for start, path in zip(program.starts, program.paths, strict=True):
        facts = world.follow(start, path)
        if facts is None:
            return None
        person = world.end(start, facts)
        year = world.lookup(person, "birth_year")
        if year is None:
            return None
        people.append(person)
        support += [*facts, year]
        years.append(int(year.object))
    if people[0] == people[1] or years[0] == years[1]:
        return None
    return world.name(people[0] if years[0] < years[1] else people[1]), support


def question_text(world: World, program: Program) -> str:
    if program.kind == "chain":
        return render.chain_question(world.name(program.starts[0]), program.paths[0])
    a, b = (render.noun_phrase(world.name(s), p) for s, p in zip(program.starts, program.paths, strict=True))
    return render.older_question(a, b)


def chain_paths(max_hops: int) -> list[tuple[str, ...]]:
    """Every well-typed relation path from a person of 1..max_hops relations (no spouse of a spouse)."""
    out: list[tuple[str, ...]] = []
    frontier: list[tuple[tuple[str, ...], Kind]] = [((), "person")]
    for _ in range(max_hops):
        frontier = [((*path, name), rel.target) for path, kind in frontier for name, rel in RELATIONS.items()
                    if rel.domain == kind and not (name == "spouse" and path[-1:] == ("spouse",))]
        out += [path for path, _ in frontier]
    return out


def _candidates(world: World, people: Sequence[str], pool_people: Sequence[str], max_hops: int,
                rng: random.Random) -> dict[int, dict[tuple, list[Program]]]:
    """hops -> signature -> programs with an answer: every chain from `people`, and one older-than
    comparison per person and hop count with a random partner from the pool."""
    out: dict[int, dict[tuple, list[Program]]] = {}

    def add(program: Program) -> None:
        solved = solve(world, program)
        if solved is not None:
            out.setdefault(len(solved[1]), {}).setdefault(program.signature(), []).append(program)

    paths = chain_paths(max_hops)
    for p in people:
        for path in paths:
            add(Program("chain", (p,), (path,)))
    shapes = [(a, b) for a in KINSHIP for b in KINSHIP if len(a) + len(b) + 2 <= max_hops]
    for p in people:
        for a, b in shapes:
            partner = p
            while partner == p:
                partner = rng.choice(pool_people)
            add(Program("older", (p, partner), (a, b)))
    return out


def _pick(groups: dict[tuple, list[Program]], quota: int, rng: random.Random) -> list[Program]:
    """Up to `quota` programs, taken in turn from each signature (each group in a random order)."""
    queues = {sig: rng.sample(progs, len(progs)) for sig, progs in sorted(groups.items())}
    picked: list[Program] = []
    while len(picked) < quota and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < quota:
                picked.append(queue.pop())
    return picked


def _choices(world: World, program: Program, answer: str, pool: Pool, n: int, rng: random.Random,
             must: Sequence[str] = ()) -> tuple[str, ...]:
    """The answer, the `must` values and random others of the answer's kind, sorted."""
    if program.kind == "older":
        return tuple(sorted({answer, *must, *(world.name(world.end(s, world.follow(s, p) or []))
                                               for s, p in zip(program.starts, program.paths, strict=True))}))
    kind = RELATIONS[program.paths[0][-1]].target
    if kind == "year":
        values = sorted({f.object for f in world.facts if f.relation == "birth_year" and f.pool == pool})
    else:
        values = [e.name for e in world.of_kind(kind) if e.pool in (pool, "shared")]
    fixed = {answer, *must}
    others = [v for v in values if v not in fixed]
    return tuple(sorted(fixed | set(rng.sample(others, max(0, min(n - len(fixed), len(others)))))))


def make_questions(world: World, cf_world: World, cfg: WorldConfig) -> list[Question]:
    """The questions of both pools and the counterfactual ones, numbered q00000, q00001, ..."""
    rng = random.Random(f"questions:{cfg.seed}")
    drafts: list[Question] = []
    for pool in ("seen", "novel"):
        people = [e.id for e in world.of_kind("person", pool)]
        shuffled = rng.sample(people, len(people))
        n_train = round(cfg.qa_fraction * len(people)) if pool == "seen" else 0
        for split, group in (("train", shuffled[:n_train]), ("test", shuffled[n_train:])):
            if not group:
                continue
            quota = (cfg.questions_per_hop * TRAIN_QUOTA_SCALE if split == "train"
                     else cfg.test_questions_per_hop or cfg.questions_per_hop)
            by_hops = _candidates(world, sorted(group, key=people.index), people, cfg.hops, rng)
            for hops in sorted(by_hops):
                for program in _pick(by_hops[hops], quota, rng):
                    answer, facts = solve(world, program)  # type: ignore[misc]
                    drafts.append(Question(
                        "", question_text(world, program), answer,
                        _choices(world, program, answer, pool, cfg.choices, rng), hops, program.kind,
                        program.starts, program.paths, tuple(f.id for f in facts), pool, split))  # type: ignore[arg-type]
    for q in [q for q in drafts if q.pool == "seen" and q.split == "test"]:
        program = Program(q.kind, q.starts, q.paths)
        solved = solve(cf_world, program)
        if solved is None or solved[0] == q.answer:
            continue
        answer, facts = solved
        drafts.append(replace(q, answer=answer, support=tuple(f.id for f in facts), hops=len(facts),
                              choices=_choices(cf_world, program, answer, "seen", cfg.choices, rng, (q.answer,)),
                              counterfactual=True, original_answer=q.answer))
    return [replace(q, id=f"q{i:05d}") for i, q in enumerate(drafts)]
