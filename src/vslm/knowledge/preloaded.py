"""Preloaded-context training data (RESEARCH.md section 5b): facts, distractors, a question, its answer.

Every example is its own small world drawn afresh from the seen pool's names (people, companies,
cities and countries, and every fact between them), so no fact recurs often enough for the weights to
hold it: the only way to the answer is to read the context. An example is

    <card>\\n<card>\\n...\\nQ: <question>\\nA: <answer>

with the gold facts among `distractors` others of its world, shuffled, in the layout of the
evaluation's open-book prompts. Hop counts are drawn evenly from 1 to the world's `hops`, and within
a hop count each kind of question (path, or older-than shape) evenly. Trained with
`data.answer_only = true`, the loss falls on the answer alone.

The contrast arm (`fixed.txt`) holds the same kind of examples over the one fixed world of the world
folder (the questions of split `train`, each with freshly drawn distractors), after the world's own
training text, so that its facts can be learned into the weights.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from vslm.knowledge import render
from vslm.knowledge.contexts import mentions, with_distractors
from vslm.knowledge.questions import KINSHIP, Program, Question, chain_paths, question_text, solve
from vslm.knowledge.world import Fact, NamePool, World, small_world

PRELOADED = "preloaded.txt"
FIXED = "fixed.txt"
DISTRACTORS = 4
TRIES = 50  # draws of a start for a kind of question before giving up on this world


def signatures(hops: int) -> list[tuple]:
    """Every kind of question of exactly `hops` facts: chain paths and older-than shapes."""
    chains = [("chain", p) for p in chain_paths(hops) if len(p) == hops]
    older = [("older", a, b) for a in KINSHIP for b in KINSHIP if len(a) + len(b) + 2 == hops]
    return chains + older


def example_text(world: World, program: Program, answer: str, support: Sequence[Fact], rng: random.Random,
                 distractors: int = DISTRACTORS, by_entity: dict[str, list[Fact]] | None = None) -> str:
    """One example: the support among distractors of the same world (facts about the same entities
    first; never a novel one), the question, the answer. `by_entity` is mentions(world's known facts)."""
    known = [f for f in world.facts if f.pool != "novel"]
    by_entity = mentions(known) if by_entity is None else by_entity
    entities = dict.fromkeys(e for f in support for e in (f.subject, f.object) if e in world.entities)
    near = [f for e in entities for f in by_entity.get(e, [])]
    cards = [render.card_text(world, f) for f in with_distractors(support, near, known, distractors, rng)]
    return render.open_book_prompt(cards, question_text(world, program)) + render.answer_text(answer).rstrip("\n")


def _draw(world: World, signature: tuple, rng: random.Random) -> tuple[Program, str, list[Fact]] | None:
    people = [e.id for e in world.of_kind("person")]
    for _ in range(TRIES):
        if signature[0] == "chain":
            program = Program("chain", (rng.choice(people),), (signature[1],))
        else:
            program = Program("older", tuple(rng.sample(people, 2)), signature[1:])
        solved = solve(world, program)
        if solved is not None:
            return program, solved[0], solved[1]
    return None


def preloaded_examples(pool: NamePool, n: int, hops: int, seed: int, distractors: int = DISTRACTORS) -> list[str]:
    """n examples, each over a world of its own drawn from the name pool."""
    rng = random.Random(f"preloaded:{seed}")
    kinds = {h: signatures(h) for h in range(1, hops + 1)}
    out: list[str] = []
    while len(out) < n:
        world = small_world(pool, rng, people=rng.randint(6, 10))
        drawn = _draw(world, rng.choice(kinds[rng.randint(1, hops)]), rng)
        if drawn is not None:
            out.append(example_text(world, *drawn, rng, distractors))
    return out


def fixed_examples(world: World, questions: Sequence[Question], n: int, seed: int,
                   distractors: int = DISTRACTORS) -> list[str]:
    """n examples over the fixed world: its seen training questions, drawn with replacement."""
    rng = random.Random(f"fixed:{seed}")
    asked = [q for q in questions if q.pool == "seen" and q.split == "train" and not q.counterfactual]
    facts = {f.id: f for f in world.facts}
    by_entity = mentions(f for f in world.facts if f.pool != "novel")
    out = []
    for _ in range(n if asked else 0):
        q = rng.choice(asked)
        program = Program(q.kind, q.starts, q.paths)
        support = [facts[i] for i in q.support]
        out.append(example_text(world, program, q.answer, support, rng, distractors, by_entity))
    return out
