"""Facts loaded automatically: a BM25 retriever over fact cards, iterated for multi-hop questions.

BM25 (`bm25s`) scores a card by the question words it shares, weighted by how rare they are: a name
is rare, a relation noun common, so a question finds the cards about the entity it names. A
multi-hop question names only its first entity ("the home city of the employer of X"); the card
that says X's employer names the next one. So retrieval is iterated (In-Context RALM, Ram et al.
2023; IRCoT, Trivedi et al. 2023): each round adds the names on the cards just found to the query
and retrieves again. The words are lower-cased, stop words dropped and a plural "s" cut, identically
for cards and queries.

Cards can be added at any time (`add`): the index is rebuilt, which for the few thousand cards of a
FactWorld takes milliseconds; facts written after a model was trained are then found like the others.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

STOP_WORDS = frozenset("a an and are as at be by for from has have in is it its of on or the to was were who "
                       "what which with".split())
WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Card:
    """One fact as one sentence, with the names it mentions (the bridges multi-hop retrieval follows)."""

    id: str
    text: str
    entities: tuple[str, ...] = ()
    pool: str = "seen"
    counterfactual: bool = False


def words(text: str, synonyms: dict[str, str] | None = None) -> list[str]:
    """Lower-case words without stop words, a plural "s" removed, each replaced by its synonyms if
    it has some ("grandparent" -> "parent parent")."""
    out = []
    for w in WORD.findall(text.lower()):
        if w in STOP_WORDS:
            continue
        w = w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        out += (synonyms or {}).get(w, w).split()
    return out


def terms(ws: Sequence[str]) -> list[str]:
    """BM25's terms: the words and each pair of neighbours, so that a full name ("dora_dorn") and a
    relation next to its subject ("parent_dora") weigh more than their words apart."""
    return [*ws, *(f"{a}_{b}" for a, b in zip(ws, ws[1:], strict=False))]


def _without(ws: Sequence[str], used: Sequence[str]) -> list[str]:
    """ws minus used, as multisets, in ws's order: one "parent" of "parent parent" is used at a time."""
    left = Counter(used)
    out = []
    for w in ws:
        if left[w]:
            left[w] -= 1
        else:
            out.append(w)
    return out


class Retriever:
    def __init__(self, cards: Iterable[Card] = (), synonyms: dict[str, str] | None = None,
                 k1: float = 1.5, b: float = 0.75):
        self.k1, self.b, self.synonyms = k1, b, synonyms or {}
        self.cards: list[Card] = []
        self._ids: dict[str, int] = {}
        self._index = None
        self.add(cards)

    def __len__(self) -> int:
        return len(self.cards)

    def add(self, cards: Iterable[Card]) -> None:
        """Add cards (a card with an id already indexed replaces it) and rebuild the index."""
        for card in cards:
            if card.id in self._ids:
                self.cards[self._ids[card.id]] = card
            else:
                self._ids[card.id] = len(self.cards)
                self.cards.append(card)
        self._index = None
        if self.cards:
            import bm25s

            self._index = bm25s.BM25(k1=self.k1, b=self.b, backend="numpy")  # scores alike with numba installed
            # an empty card would break the index: give it a term no query has
            self._index.index([terms(self._words(c.text)) or ["<empty>"] for c in self.cards], show_progress=False)

    def _words(self, text: str) -> list[str]:
        return words(text, self.synonyms)

    def search(self, query: str | Sequence[str], k: int, exclude: Iterable[str] = ()) -> list[tuple[Card, float]]:
        """The k best cards for a query (text, or its words) with their scores, best first (equal scores in
        the order the cards were added), skipping the ids in `exclude`; cards that share no term with the
        query are never returned."""
        query_terms = terms(self._words(query) if isinstance(query, str) else query)
        skip = set(exclude)
        if self._index is None or not query_terms or k <= 0:
            return []
        # Cards often tie (two cards naming the same person and no other query word score alike), and
        # which of them makes the top k decides multi-hop recall. bm25s's own top-k leaves ties to
        # np.argpartition (whose order changes with numpy's version and the CPU's SIMD: AVX2 and
        # AVX-512 machines differ), to numba or to jax, whichever is installed. So the order is fixed
        # here: score, best first, then the order the cards were added in (a stable sort).
        scores = np.asarray(self._index.get_scores(query_terms), dtype=np.float64)
        hits = []
        for i in np.argsort(-scores, kind="stable"):
            if scores[i] <= 0 or len(hits) == k:
                break
            if self.cards[i].id not in skip:
                hits.append((self.cards[i], float(scores[i])))
        return hits

    def retrieve(self, question: str, k: int = 4, hops: int = 2) -> list[Card]:
        """At most k cards for a question, found over `hops` rounds of ceil(k / hops) new cards each.

        Each card found carries what is left of its query once its own words are taken out (the
        relation it answered, the names it was about). In the next round each card's bridges (the
        names on it not searched yet) are searched with what is left of its query: "the country of
        the birth city of X" finds "The birth city of X is Y." and then searches "country Y". The
        new cards are taken in turn from each parent, best parent first."""
        per_round = math.ceil(k / max(1, hops))
        found: list[Card] = []
        searched: set[str] = set()
        frontier: list[tuple[list[str], list[str]]] = [(self._words(question), [])]  # (query words, bridges)
        for _ in range(max(1, hops)):
            runs = []  # per query: hits with what is left of the query after each
            for left, bridges in frontier:
                query = left + [w for name in bridges for w in self._words(name)]
                hits = self.search(query, per_round, [c.id for c in found])
                runs.append([(card, _without(query, self._words(card.text))) for card, _ in hits])
            new: list[tuple[Card, list[str]]] = []
            for rank in range(per_round):  # the best hit of each query, then the second best, ...
                for hits in runs:
                    if rank < len(hits) and len(new) < min(per_round, k - len(found)) and \
                            all(hits[rank][0].id != c.id for c, _ in new):
                        new.append(hits[rank])
            found += [card for card, _ in new]
            searched |= {n for card, _ in new for n in card.entities if n in question}
            frontier = []
            for card, left in new:
                bridges = [n for n in card.entities if n not in searched]
                searched |= set(bridges)
                if bridges:
                    frontier.append((left, bridges))
            if not frontier or len(found) >= k:
                break
        return found


def support_recall(retrieved: Sequence[Card], support: Sequence[str]) -> tuple[float, bool]:
    """(share of the supporting facts retrieved, whether all of them were)."""
    got = {c.id for c in retrieved}
    hit = sum(1 for s in support if s in got)
    return hit / len(support), hit == len(support)
