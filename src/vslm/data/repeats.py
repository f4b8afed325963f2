"""A generated corpus where copying pays: random lowercase strings, each written twice on its line
(`data.source = "repeats"`).

Every line is a string s of 8 to 40 letters drawn uniformly at random, then s again: "qzkfe...qzkfe...".
Nothing in a first copy can be predicted beyond the letter frequencies (ln 26 = 3.26 nats a letter),
and every letter of a second copy but its first can be predicted exactly by copying from the line's
first half: only an induction head lowers the loss below ln 26 there. It is the control of
docs/EXPERIMENTS.md's induction section: a 2-layer attention-only model forms induction heads on it
within 3000 steps on a CPU (`vslm experiment dynamics-repeats`), where the stories need ten times the
tokens. What it does not show: that the same happens on natural text, where a copy after a 3-token match
is right about half the time instead of 95% (the repeat statistics in probes.jsonl say how often).

Deterministic for data.seed; documents of LINES lines (separated by end-of-text), up to max_bytes, or without
end where max_bytes is none (the token budget, data.max_tokens, stops it).
Bump REPEATS_VERSION whenever the text for a seed changes (it is part of the shard cache key).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

REPEATS_VERSION = 1
LENGTHS = (8, 40)  # letters per string, inclusive: the copy distance is the string's length
LINES = 64  # lines per document


def repeat_line(rng: random.Random) -> str:
    s = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*LENGTHS)))
    return s + s


def iter_repeats(seed: int, n_bytes: int | None = None) -> Iterator[str]:
    """Documents of LINES lines of strings written twice, until n_bytes are out; None: without end."""
    rng, left = random.Random(seed), n_bytes
    while left is None or left > 0:
        doc = "\n".join(repeat_line(rng) for _ in range(LINES))
        if left is not None:
            doc = doc[:left]
            left -= len(doc) + 1
        yield doc
