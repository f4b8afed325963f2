"""The knowledge metrics (RESEARCH.md section 5), as arithmetic on questions and the answers picked.

A model answers a question by picking, among its `choices`, the answer it finds most likely after the
prompt (the whole answer's log-likelihood, `vslm.knowledge.scoring`; after the steps it writes first, for a
reader trained to write them). Picking among candidates suits
models of a few million parameters: free generation would score them near zero on everything and
hide the differences that matter; with choices every accuracy has a known chance level, reported
beside it (the mean of 1 / len(choices)).

* closed-book accuracy: the question alone;
* open-book accuracy: the gold facts among distractors, then the question, on the seen and the novel
  pool;
* counterfactual-context accuracy: the counterfactual facts in the context; right means the answer
  the context implies. The memorisation ratio M_R = n_orig / (n_orig + n_ctx) (Longpre et al. 2021)
  counts the answers that follow the weights (the real world's value) against those that follow
  the context; 0 is a model that reads, 1 one that recites;
* any of them by number of hops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from vslm.knowledge.questions import Question

# [(prompt, choices)] -> for each, the log-likelihood of each choice as the prompt's continuation
Scorer = Callable[[Sequence[tuple[str, Sequence[str]]]], list[list[float]]]


def pick(scorer: Scorer, prompts: Sequence[str], questions: Sequence[Question]) -> list[str]:
    """The choice with the highest score for each (prompt, question); ties go to the first choice."""
    scores = scorer([(p, q.choices) for p, q in zip(prompts, questions, strict=True)])
    return [q.choices[max(range(len(s)), key=s.__getitem__)] for q, s in zip(questions, scores, strict=True)]


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def per_hops(questions: Sequence[Question], n: int | None) -> list[Question]:
    """At most n questions of each hop count (the first ones; all with n None), by increasing hops."""
    kept: dict[int, list[Question]] = {}
    for q in questions:
        group = kept.setdefault(q.hops, [])
        if n is None or len(group) < n:
            group.append(q)
    return [q for hops in sorted(kept) for q in kept[hops]]


def accuracy(questions: Sequence[Question], answers: Sequence[str]) -> dict:
    """{accuracy, se, n, chance}: the share of answers equal to the question's answer, and its standard error
    over the questions, sqrt(a (1 - a) / n) (RESEARCH.md section 8: a measurement that samples questions
    reports its own error; the binomial one, which a bootstrap over the questions estimates)."""
    acc = mean([float(a == q.answer) for q, a in zip(questions, answers, strict=True)])
    n = len(questions)
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n) if n and math.isfinite(acc) else math.nan,
            "n": n, "chance": mean([1 / len(q.choices) for q in questions])}


def by_hops(questions: Sequence[Question], answers: Sequence[str]) -> dict[int, dict]:
    """accuracy() for each number of hops, in increasing order."""
    out = {}
    for hops in sorted({q.hops for q in questions}):
        chosen = [(q, a) for q, a in zip(questions, answers, strict=True) if q.hops == hops]
        out[hops] = accuracy([q for q, _ in chosen], [a for _, a in chosen])
    return out


def counterfactual(questions: Sequence[Question], answers: Sequence[str]) -> dict:
    """Under counterfactual contexts: accuracy against the context's answer, the shares of answers that
    are the context's, the original (memorised) value or something else, and the memorisation ratio."""
    n_ctx = sum(a == q.answer for q, a in zip(questions, answers, strict=True))
    n_orig = sum(a == q.original_answer for q, a in zip(questions, answers, strict=True))
    n = len(questions)
    return {**accuracy(questions, answers), "original": n_orig / n if n else math.nan,
            "other": (n - n_ctx - n_orig) / n if n else math.nan,
            "memorisation_ratio": n_orig / (n_orig + n_ctx) if n_orig + n_ctx else math.nan}
