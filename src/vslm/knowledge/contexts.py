"""What a model reads before a question: nothing (closed book), the gold facts among distractors (open
book), the counterfactual facts (counterfactual context), or what the retriever found.

Distractors are cards about the same entities as the gold ones first (other facts of the same
people, companies and cities, so the model has to read which relation is asked), then random cards;
all from the question's pool (and the shared cities and countries). None states the same (subject,
relation) as a gold card, so the context never contradicts itself. Cards are shuffled: where the
gold facts stand tells nothing. Every choice is seeded by the question's id, so every model reads
the same contexts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from vslm.knowledge import render
from vslm.knowledge.questions import Question
from vslm.knowledge.retrieval import Card, Retriever
from vslm.knowledge.world import Fact

if TYPE_CHECKING:  # the folder's preloaded examples use this module's distractors
    from vslm.knowledge.folder import WorldFolder


def mentions(facts: Iterable[Fact]) -> dict[str, list[Fact]]:
    """entity id -> the facts that name it, as subject or as object."""
    out: dict[str, list[Fact]] = {}
    for f in facts:
        for e in dict.fromkeys((f.subject, f.object)):
            out.setdefault(e, []).append(f)
    return out


def with_distractors(gold: Sequence[Fact], near: Sequence[Fact], far: Sequence[Fact], n: int,
                     rng: random.Random) -> list[Fact]:
    """The gold facts and up to n distractors, `near` ones first, then `far` ones, each a (subject,
    relation) no other fact in the context has; shuffled."""
    taken = {(f.subject, f.relation) for f in gold}
    chosen: list[Fact] = []
    for group in (near, far):
        # a few times n candidates are plenty, and keep this cheap when `far` is a whole world
        for f in rng.sample(group, min(len(group), 4 * n + 8)):  # a list: sampled in place, not copied
            if len(chosen) < n and (f.subject, f.relation) not in taken:
                taken.add((f.subject, f.relation))
                chosen.append(f)
    out = [*gold, *chosen]
    rng.shuffle(out)
    return out


class Contexts:
    def __init__(self, folder: WorldFolder, distractors: int = 4, seed: int = 0):
        self.folder, self.distractors, self.seed = folder, distractors, seed
        self.facts = {f.id: f for f in folder.world.facts} | {f.id: f for f in folder.counterfactual.facts}
        self.pool = {e.id: e.pool for e in folder.world.entities.values()}
        self.by_entity = mentions(folder.world.facts)
        self.far: dict[str, list[Fact]] = {}  # distractor candidates by pool, built on first use

    def gold(self, q: Question) -> list[Card]:
        return [self.folder.cards[i] for i in q.support]

    def open_book_cards(self, q: Question) -> list[Card]:
        """The gold cards and `distractors` others, shuffled."""
        gold = [self.facts[i] for i in q.support]
        mine = (q.pool, "shared")
        entities = dict.fromkeys(e for f in gold for e in (f.subject, f.object) if e in self.pool)
        near = [f for e in entities for f in self.by_entity.get(e, []) if f.pool in mine]
        if q.pool not in self.far:  # the pool's facts and the shared ones, in the world's order
            self.far[q.pool] = [f for f in self.folder.world.facts if f.pool in mine]
        far = self.far[q.pool]
        chosen = with_distractors(gold, near, far, self.distractors, random.Random(f"{self.seed}:{q.id}"))
        return [self.folder.cards[f.id] for f in chosen]

    def closed_book(self, q: Question) -> str:
        return render.closed_book_prompt(q.question)

    def open_book(self, q: Question) -> str:
        return self.with_cards(q, self.open_book_cards(q))

    def retrieved_cards(self, q: Question, retriever: Retriever, k: int, hops: int) -> list[Card]:
        return retriever.retrieve(q.question, k=k, hops=hops)

    @staticmethod
    def with_cards(q: Question, cards: Sequence[Card]) -> str:
        """The prompt of the question after the given cards (the retriever's, say)."""
        return render.open_book_prompt([c.text for c in cards], q.question)
