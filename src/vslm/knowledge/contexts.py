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
from collections.abc import Sequence

from vslm.knowledge import render
from vslm.knowledge.folder import WorldFolder
from vslm.knowledge.questions import Question
from vslm.knowledge.retrieval import Card, Retriever


class Contexts:
    def __init__(self, folder: WorldFolder, distractors: int = 4, seed: int = 0):
        self.folder, self.distractors, self.seed = folder, distractors, seed
        self.facts = {f.id: f for f in folder.world.facts} | {f.id: f for f in folder.counterfactual.facts}
        self.real = [c for c in folder.cards.values() if not c.counterfactual]
        self.by_name: dict[str, list[Card]] = {}
        for card in self.real:
            for name in card.entities:
                self.by_name.setdefault(name, []).append(card)

    def gold(self, q: Question) -> list[Card]:
        return [self.folder.cards[i] for i in q.support]

    def open_book_cards(self, q: Question) -> list[Card]:
        """The gold cards and `distractors` others, shuffled."""
        rng = random.Random(f"{self.seed}:{q.id}")
        gold = self.gold(q)
        taken = {(self.facts[c.id].subject, self.facts[c.id].relation) for c in gold}
        chosen: list[Card] = []

        def take(pool: Sequence[Card]) -> None:
            for card in rng.sample(list(pool), len(pool)):
                key = (self.facts[card.id].subject, self.facts[card.id].relation)
                if len(chosen) < self.distractors and key not in taken:
                    taken.add(key)
                    chosen.append(card)

        near = [c for name in dict.fromkeys(n for g in gold for n in g.entities) for c in self.by_name.get(name, [])]
        take([c for c in near if c.pool in (q.pool, "shared")])
        take([c for c in self.real if c.pool in (q.pool, "shared")])
        cards = gold + chosen
        rng.shuffle(cards)
        return cards

    def closed_book(self, q: Question) -> str:
        return render.closed_book_prompt(q.question)

    def open_book(self, q: Question) -> str:
        return render.open_book_prompt([c.text for c in self.open_book_cards(q)], q.question)

    def retrieved_cards(self, q: Question, retriever: Retriever, k: int, hops: int) -> list[Card]:
        return retriever.retrieve(q.question, k=k, hops=hops)

    def retrieved(self, q: Question, retriever: Retriever, k: int, hops: int) -> str:
        return render.open_book_prompt([c.text for c in self.retrieved_cards(q, retriever, k, hops)], q.question)
