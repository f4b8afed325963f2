"""Do trained models copy from earlier in the context: the story characters' names, the items of a list,
rare tokens, a song's words? (docs/EXPERIMENTS.md, training dynamics: induction; the texts come from
`data.copying`, vslm/data/copying.py.)

Every measure reads windows of token ids and compares the loss on tokens that can be copied from earlier
in the window against the same kind of token where it cannot, and reads per depth and head the attention
from each copying query to its copy source (the token to copy). They differ only in which windows they
cut and which positions they score; `copy_probe` does the forward passes for all of them, several
windows at a time (padded at the end: under causal attention a window's positions never read its padding).

Positions are 0-based within a window: scoring position p means the loss of predicting token p from
tokens 0..p-1 (token_nll's column p - 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vslm.errors import VSLMError
from vslm.model.gpt import GPT
from vslm.model.hooks import capture
from vslm.probes.position import latest_occurrences, token_nll

Encode = Callable[[str], list[int]]


@dataclass
class CopyWindows:
    """What copy_probe reads: windows of token ids (each at most the context long), the positions to
    score by kind, and the (window, query, source) triples whose attention to read."""

    windows: list[list[int]] = field(default_factory=list)
    scored: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # kind -> [(window, position)]
    copies: list[tuple[int, int, int]] = field(default_factory=list)
    skipped: int = 0  # windows left out by the measure that cut them (too long, tokenized differently)

    def score(self, kind: str, window: int, positions: Sequence[int]) -> None:
        self.scored[kind].extend((window, p) for p in positions)


@dataclass
class CopyResult:
    """loss[kind]: the mean loss (nats) on the scored tokens of that kind (NaN: none), count[kind] how many;
    attention: per depth, the mean attention of each head from a copying query to its copy source (empty
    lists without copies); copies: how many queries; uniform: the mean of 1 / (query + 1), what attention
    spread evenly over the window would put on the source; skipped: windows left out."""

    loss: dict[str, float]
    count: dict[str, int]
    attention: list[list[float]]
    copies: int
    uniform: float
    skipped: int = 0

    def to_dict(self) -> dict:
        return {"loss": {k: None if math.isnan(v) else v for k, v in self.loss.items()}, "count": self.count,
                "attention": self.attention, "copies": self.copies, "uniform": self.uniform, "skipped": self.skipped}


@torch.no_grad()
def copy_probe(model: GPT, batch: CopyWindows, batch_size: int = 32) -> CopyResult:
    """The losses and the attention to the copy sources that `batch` asks for, `batch_size` windows a forward."""
    device = next(model.parameters()).device
    hooks = [f"attn.{d}" for d in range(len(model.order))]
    kinds = list(batch.scored)
    scored = {k: np.asarray(v, dtype=np.int64).reshape(-1, 2) for k, v in batch.scored.items()}
    copies = np.asarray(batch.copies, dtype=np.int64).reshape(-1, 3)
    sums = dict.fromkeys(kinds, 0.0)
    attention: list[torch.Tensor] | None = None
    for b0 in range(0, len(batch.windows), batch_size):
        rows = batch.windows[b0 : b0 + batch_size]
        length = max(len(r) for r in rows)
        if length < 2:
            continue
        idx = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        idx = idx.to(device)
        here = copies[(copies[:, 0] >= b0) & (copies[:, 0] < b0 + len(rows))]
        with capture(model, *(hooks if len(here) else ())) as weights:
            nll = token_nll(model(idx), idx).double().cpu()  # (B, L - 1), nll[b, p - 1] scores position p
        for kind in kinds:
            at = scored[kind][(scored[kind][:, 0] >= b0) & (scored[kind][:, 0] < b0 + len(rows))]
            at = torch.from_numpy(at)
            sums[kind] += float(nll[at[:, 0] - b0, at[:, 1] - 1].sum())
        if len(here):
            b, q, s = (torch.from_numpy(here[:, i]).to(device) for i in range(3))
            # weights[h]: (B, H, L, L) -> (copies, H) -> summed over the copies
            got = [weights[h][b - b0, :, q, s].double().sum(0).cpu() for h in hooks]
            attention = got if attention is None else [a + g for a, g in zip(attention, got, strict=True)]
    n = len(copies)
    return CopyResult(
        loss={k: sums[k] / len(scored[k]) if len(scored[k]) else math.nan for k in kinds},
        count={k: len(scored[k]) for k in kinds},
        attention=[(a / n).tolist() for a in attention] if attention is not None and n else [],
        copies=n,
        uniform=float(np.mean(1 / (copies[:, 1] + 1))) if n else math.nan,
        skipped=batch.skipped,
    )


def _check_chars(ids: Sequence[int], text: str) -> None:
    if len(ids) != len(text):
        raise VSLMError("this copying measure needs a character tokenizer (one token per character)")


# ------------------------------------------------------------------------------- the measures


def name_windows(text: str, names: set[str], context: int, encode: Encode, windows: int = 300) -> CopyWindows:
    """Character tokenizer. The first `windows` consecutive windows of `context` characters of `text`; in each,
    the letters of a name after its first, at the name's first occurrence in the window ("first") against a
    repeat ("repeat"); copies: from each letter of a repeat to the letter after it in the name's previous
    occurrence (the copy source)."""
    pattern = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    out = CopyWindows(scored={"first": [], "repeat": []})
    for b, start in enumerate(range(0, len(text) - context, context)[:windows]):
        window = text[start : start + context]
        ids = encode(window)
        _check_chars(ids, window)
        out.windows.append(ids)
        previous: dict[str, int] = {}
        for m in pattern.finditer(window):
            s, e, name = m.start(), m.end(), m.group(1)
            kind = "repeat" if name in previous else "first"
            out.score(kind, b, range(s + 1, e))  # the letters after the first
            if kind == "repeat":  # the query reads letter k, its source is letter k + 1 of the previous one
                out.copies += [(b, s + k, previous[name] + k + 1) for k in range(e - s - 1)]
            previous[name] = s
    return out


def list_windows(text: str, line: re.Pattern, context: int, encode: Encode) -> CopyWindows:
    """Character tokenizer. For each packing-list line (`line`: a pattern whose group 1 is the line's items,
    "a cup, a key", joined by ", "), the window of `context` characters that ends with it (lines longer than
    that are skipped): the first letter of each item (after "a ") that repeats the line before ("repeated")
    against the line's new, last item ("new"); copies: from the character before a repeated item's first
    letter to that letter in the line before (the copy source). A line's repeated items are scored only where
    their source is in the window: the list line before it, or for a list's first line the sentence before it
    ("First Tom put in a cup."); elsewhere they repeat what the model cannot see, and are left out."""
    out, previous = CopyWindows(scored={"repeated": [], "new": []}), None
    for m in line.finditer(text):
        before, previous = previous, m
        start = max(0, m.end() - context)
        if m.start() < start:  # the line does not fit in the context
            out.skipped += 1
            continue
        ids = encode(text[start : m.end()])
        _check_chars(ids, text[start : m.end()])
        b = len(out.windows)
        out.windows.append(ids)
        items = m.group(1).split(", ")
        letters = _first_letters(items, m.start(1) - start)
        same_list = before is not None and before.group(1).split(", ") == items[:-1] and before.start(1) >= start
        opening = f"put in {items[0]}. "  # a list's first line repeats its opening sentence's one item
        if same_list:
            sources = _first_letters(items[:-1], before.start(1) - start)
        elif len(items) == 2 and text.endswith(opening, start, m.start()):
            sources = _first_letters(items[:1], m.start() - len(opening) + len("put in ") - start)
        else:
            sources = []
        out.score("repeated", b, letters[:len(sources)])
        out.score("new", b, letters[-1:])
        out.copies += [(b, p - 1, s) for p, s in zip(letters, sources, strict=False)]
    return out


def _first_letters(items: list[str], p: int) -> list[int]:
    """Positions of each item's first letter after "a ", the items joined by ", " from position p."""
    out = []
    for item in items:
        out.append(p + 2)
        p += len(item) + 2
    return out


def token_windows(ids: torch.Tensor | np.ndarray, context: int, vocab_size: int, windows: int = 200) -> CopyWindows:
    """Any tokenizer. The first `windows` consecutive windows of `context` tokens of `ids`; among targets rarer
    than uniform (unigram share of `ids` below 1 / vocab_size): those that already occurred in the window
    ("seen") against their first occurrence ("first"); copies where copying is right: from the current token
    t, whose latest earlier occurrence s is followed by the target (s + 1 < t), to s + 1."""
    ids = np.asarray(ids, dtype=np.int64)
    rare = np.bincount(ids, minlength=vocab_size) / len(ids) < 1 / vocab_size
    x = ids[: len(ids) // context * context].reshape(-1, context)[:windows]
    out = CopyWindows(windows=x.tolist(), scored={"seen": [], "first": []})
    for b, row in enumerate(out.windows):
        seen: set[int] = {row[0]}
        for t in range(1, context):
            if rare[row[t]]:
                out.scored["seen" if row[t] in seen else "first"].append((b, t))
            seen.add(row[t])
        out.copies += [(b, t, s + 1) for t, s in latest_occurrences(row)
                       if s + 1 < t and row[s + 1] == row[t + 1] and rare[row[t + 1]]]
    return out


def song_windows(texts: Sequence[str], song: re.Pattern, context: int, encode: Encode) -> CopyWindows:
    """Any tokenizer. In each text, the last `context` tokens up to the end of the song's first repeat (`song`:
    a pattern over the first rendition and its repeat, group 1 the song): the song's tokens after its first, at
    the first rendition ("first") against the repeat ("repeat"); copies: from each token of the repeat to
    the token after it in the first rendition. The renditions are found by their tokens; a text whose two
    do not both fit, or whose song the tokenizer splits differently the second time, is skipped."""
    out = CopyWindows(scored={"first": [], "repeat": []})
    for text in texts:
        m = song.search(text)
        ids, tune = encode(text[: m.end()])[-context:], encode(m.group(1))
        n = len(tune)
        at = [p for p in range(len(ids) - n + 1) if ids[p : p + n] == tune]
        if len(at) < 2:
            out.skipped += 1
            continue
        first, repeat = at[-2], at[-1]
        b = len(out.windows)
        out.windows.append(ids)
        out.score("first", b, range(first + 1, first + n))
        out.score("repeat", b, range(repeat + 1, repeat + n))
        out.copies += [(b, repeat + k, first + k + 1) for k in range(n - 1)]
    return out


def name_copying(model: GPT, text: str, names: set[str], encode: Encode, windows: int = 300,
                 batch_size: int = 32) -> CopyResult:
    return copy_probe(model, name_windows(text, names, model.cfg.context, encode, windows), batch_size)


def list_copying(model: GPT, text: str, line: re.Pattern, encode: Encode, batch_size: int = 32) -> CopyResult:
    return copy_probe(model, list_windows(text, line, model.cfg.context, encode), batch_size)


def token_copying(model: GPT, ids: torch.Tensor | np.ndarray, vocab_size: int, windows: int = 200,
                  batch_size: int = 32) -> CopyResult:
    return copy_probe(model, token_windows(ids, model.cfg.context, vocab_size, windows), batch_size)


def song_copying(model: GPT, texts: Sequence[str], song: re.Pattern, encode: Encode,
                 batch_size: int = 32) -> CopyResult:
    return copy_probe(model, song_windows(texts, song, model.cfg.context, encode), batch_size)
