"""Do trained models copy from earlier in the context: the story characters' names, the items of a list?
(docs/EXPERIMENTS.md, training dynamics: induction.)

    python scripts/name_copying.py corpus OUT.txt --bytes 10000000 [--seed 0] [--common] [--lists [N]]
        [--items MIN MAX] [--songs [far]]
        the embedded stories with each story's names replaced by invented ones (2-3 consonant-vowel
        syllables, the same throughout the story), which can only be copied, not learned by heart
        (--common: the names kept); --lists: each story also gets N (1) cumulative packing lists of 3-6
        items (--items) after its opening ("Then the bag had a cup, a key, a shell."), every line the
        previous one plus an item, so that every item but a line's last can be copied, and only copied,
        from the line before; --songs: each story's main character makes up a song of 5-8 words drawn at
        random from the stories' 400 most frequent words, sings it again at once and once more later in the
        story (--songs far: only at the ends of the next two paragraphs), so that the song's words can only
        be copied, and the word after a word is not keyed on its kind (any common word can follow any other);
    python scripts/name_copying.py measure RUN [RUN ...] [--invented] [--lists] [--tokens] [--songs [far]]
        on held-out stories (a seed no run trained on; --invented: with invented names), the loss on a
        name's letters after its first, at the name's first occurrence in the window against a repeat,
        and per depth and head the attention from each letter of a repeat to the letter after it in the
        name's previous occurrence (the copy source; uniform attention gives about 1 / position);
        --lists: on held-out stories with packing lists, the loss on the first letter of a list item
        that repeats the line before against the line's new, last item, and the attention to the copy
        source; --tokens (any tokenizer): the loss on rare tokens already in the window against their
        first occurrence, and the attention to the copy source where copying is right; --songs [far] (any
        tokenizer): the loss on a song's tokens after its first, at its first rendition against its first
        repeat, and the attention from each token of the repeat to the token after it in the first rendition.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import torch

from vslm.data.stories import ALL_NAMES, iter_stories
from vslm.model.hooks import capture
from vslm.probes import latest_occurrences, token_nll
from vslm.train.run_folder import load_run

CONSONANTS, VOWELS = "bdfghjklmnprstvwz", "aeiou"
COMMON = re.compile(r"\b(" + "|".join(ALL_NAMES) + r")\b")
HELD_OUT_SEED = 4242  # stories no training run draws (data.seed is 0 unless changed)


def invent(rng: random.Random) -> str:
    name = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3)))
    return (name + rng.choice("nlrsk") if rng.random() < 0.4 else name).capitalize()


ITEMS = ("cup", "hat", "shell", "key", "bell", "spoon", "sock", "book", "kite", "drum", "ball", "comb", "map",
         "lamp", "pear", "plum", "rope", "coin", "boot", "fork", "brush", "scarf", "whistle", "candle", "feather",
         "pebble", "ribbon", "button", "blanket", "teapot", "rubber duck", "jar of jam")
LIST_LINE = re.compile(r"Then the bag had ([^.]*)\.")


def packing_list(rng: random.Random, who: str, sizes: tuple[int, int] = (3, 6)) -> str:
    """A cumulative list of `sizes` items (at least, at most): each line repeats the one before, in its order,
    and adds an item."""
    items = [f"a {item}" for item in rng.sample(ITEMS, rng.randint(*sizes))]
    lines = [f"{who} packed a bag for the trip. First {who} put in {items[0]}."]
    lines += [f"Then the bag had {', '.join(items[:k])}." for k in range(2, len(items) + 1)]
    return " ".join(lines)


@cache
def song_words() -> tuple[str, ...]:
    """The 400 most frequent lowercase words of 2000 stories no run trains on."""
    counts = Counter(re.findall(r"\b[a-z]+\b", " ".join(iter_stories(99, n_stories=2000))))
    return tuple(word for word, _ in counts.most_common(400))


SONG = re.compile(r'made up a silly song: "([a-z ]+)\.".*?sang (?:it|the song) again: "\1\."', re.DOTALL)


def add_song(rng: random.Random, story: str, who: str, far: bool = False) -> str:
    """The story with a song of 5-8 random common words: made up in its first paragraph and sung again right
    after, and once more at the end of a later paragraph; `far`: sung again only at the ends of the second
    and third paragraphs."""
    song = " ".join(rng.choice(song_words()) for _ in range(rng.randint(5, 8)))
    paragraphs = story.split("\n")
    paragraphs[0] += f' {who} made up a silly song: "{song}."'
    if far:
        for k in (1, 2):
            paragraphs[k] += f' {who} sang the song again: "{song}."'
    else:
        paragraphs[0] += f' {who} sang it again: "{song}."'
        paragraphs[rng.randrange(1, len(paragraphs))] += f' {who} sang the song again: "{song}."'
    return "\n".join(paragraphs)


def stories(seed: int, invented: bool, lists: int = 0, sizes: tuple[int, int] = (3, 6), songs: str = "",
            **limit: int) -> tuple[list[str], set[str]]:
    """Stories from the embedded generator, with invented names, `lists` packing lists each and a song
    (`songs`: "near" or "far", see add_song) if asked, and the names they use."""
    rng, out, names = random.Random(seed + 7), [], set()
    lists_rng, songs_rng = random.Random(seed + 11), random.Random(seed + 13)
    for story in iter_stories(seed, **limit):
        opening, rest = story.split("\n", 1)
        who = COMMON.search(opening).group(1)
        if lists:
            story = "\n".join([opening, *(packing_list(lists_rng, who, sizes) for _ in range(lists)), rest])
        if songs:
            story = add_song(songs_rng, story, who, far=songs == "far")
        if invented:
            chosen: dict[str, str] = {}  # each occurrence draws a name; the first one drawn for a name stays
            story = COMMON.sub(lambda m, chosen=chosen: chosen.setdefault(m.group(1), invent(rng)), story)
            names |= set(chosen.values())
        out.append(story)
    return out, names or set(ALL_NAMES)


class CopyAttention:
    """The mean attention per depth and head from queries to their copy sources, summed over forwards."""

    def __init__(self, model: torch.nn.Module):
        self.hooks = [f"attn.{d}" for d in range(len(model.order))]  # capture(model, *hooks)
        self.total, self.count = 0.0, 0

    def add(self, weights: dict[str, torch.Tensor], b: int, query: int, source: int) -> None:
        self.total = self.total + torch.stack([weights[h][b, :, query, source] for h in self.hooks])  # (depth, H)
        self.count += 1

    def heads(self) -> list:
        return (self.total / self.count).double().numpy().round(3).tolist() if self.count else []


@torch.no_grad()
def measure(run: Path, text: str, names: set[str], windows: int = 300) -> str:
    cfg, model, tok = load_run(run)  # in eval mode
    T, copies = cfg.model.context, CopyAttention(model)
    pattern = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    loss = {"first": [0.0, 0], "repeat": [0.0, 0]}
    for start in range(0, len(text) - T, T)[:windows]:
        window = text[start : start + T]
        idx = torch.tensor([tok.encode(window)])
        if idx.shape[1] != T:
            raise SystemExit(f"{run}: measure needs a character tokenizer (one token per character)")
        with capture(model, *copies.hooks) as weights:
            nll = token_nll(model(idx), idx)[0]  # nll[p - 1] scores the character at p
        previous: dict[str, int] = {}
        for m in pattern.finditer(window):
            s, e, name = m.start(), m.end(), m.group(1)
            kind = "repeat" if name in previous else "first"
            loss[kind][0] += float(nll[s : e - 1].sum())  # letters s+1 .. e-1
            loss[kind][1] += e - 1 - s
            if kind == "repeat":
                for k in range(e - s - 1):  # the query reads letter k, its source is letter k + 1 before
                    copies.add(weights, 0, s + k, previous[name] + k + 1)
            previous[name] = s
    first, repeat = (loss[k][0] / max(loss[k][1], 1) for k in ("first", "repeat"))
    return (f"{run}: letters after the first, first occurrence {first:.3f} ({loss['first'][1]}), repeat "
            f"{repeat:.3f} ({loss['repeat'][1]}); attention to the copy source per depth and head: {copies.heads()}")


@torch.no_grad()
def measure_lists(run: Path, text: str) -> str:
    """Loss on the first letter of each list item (after "a "): the items a line repeats from the line before,
    against each line's new item, on the window of `context` characters that ends with the line (lines longer
    than that are left out); and per depth and head the attention from the character before a repeated
    item's first letter to that letter in the line before (the copy source; where that line is in the
    window)."""
    cfg, model, tok = load_run(run)  # in eval mode
    T, copies = cfg.model.context, CopyAttention(model)
    loss, skipped, previous = {"repeated": [0.0, 0], "new": [0.0, 0]}, 0, None
    for m in LIST_LINE.finditer(text):
        before, previous = previous, m
        start = max(0, m.end() - T)
        if m.start() < start:  # the line does not fit in the context
            skipped += 1
            continue
        idx = torch.tensor([tok.encode(text[start : m.end()])])
        if idx.shape[1] != m.end() - start:
            raise SystemExit(f"{run}: measure needs a character tokenizer (one token per character)")
        with capture(model, *copies.hooks) as weights:
            nll = token_nll(model(idx), idx)[0]  # nll[p - 1] scores the character at p
        items = m.group(1).split(", ")
        letters = _first_letters(items, m.start(1) - start)
        same_list = before is not None and before.group(1).split(", ") == items[:-1] and before.start(1) >= start
        sources = _first_letters(items[:-1], before.start(1) - start) if same_list else []
        for k, p in enumerate(letters):
            kind = "new" if k == len(items) - 1 else "repeated"
            loss[kind][0] += float(nll[p - 1])
            loss[kind][1] += 1
            if kind == "repeated" and sources:
                copies.add(weights, 0, p - 1, sources[k])
    rep, new = (loss[k][0] / max(loss[k][1], 1) for k in ("repeated", "new"))
    return (f"{run}: first letter of a list item, repeated from the line before {rep:.3f} ({loss['repeated'][1]}), "
            f"the line's new item {new:.3f} ({loss['new'][1]}); attention to the copy source per depth and head "
            f"({copies.count} items): {copies.heads()}"
            + (f"; {skipped} lines longer than the context left out" if skipped else ""))


def _first_letters(items: list[str], p: int) -> list[int]:
    """Positions of each item's first letter after "a ", the items joined by ", " from position p."""
    out = []
    for item in items:
        out.append(p + 2)
        p += len(item) + 2
    return out


@torch.no_grad()
def measure_tokens(run: Path, text: str, windows: int = 200) -> str:
    """Any tokenizer. On `windows` held-out windows, among targets rarer than uniform (unigram share of the
    held-out text below 1 / V): the loss where the target already occurred in the window against its
    first occurrence; and, where copying is right (the latest earlier occurrence s of the current token t
    is followed by the target), the attention per depth and head from t to s + 1, against uniform."""
    cfg, model, tok = load_run(run)  # in eval mode
    T, V = cfg.model.context, cfg.model.vocab_size
    ids = torch.tensor(tok.encode(text))
    rare = torch.from_numpy(np.bincount(ids.numpy(), minlength=V) / len(ids) < 1 / V)
    x = ids[: len(ids) // T * T].view(-1, T)[:windows]
    copies, uniform = CopyAttention(model), 0.0  # uniform: what attention spread evenly would put there
    with capture(model, *copies.hooks) as weights:
        nll = token_nll(model(x), x)  # (N, T - 1), nll[:, t - 1] scores token t
    loss = {"seen": [0.0, 0], "first": [0.0, 0]}
    for t in range(1, T):
        target = x[:, t]
        seen = (x[:, :t] == target[:, None]).any(1)
        for kind, mask in (("seen", seen & rare[target]), ("first", ~seen & rare[target])):
            loss[kind][0] += float(nll[mask, t - 1].sum())
            loss[kind][1] += int(mask.sum())
    for b, row in enumerate(x.tolist()):
        for t, s in latest_occurrences(row):
            if s + 1 < t and row[s + 1] == row[t + 1] and rare[row[t + 1]]:
                copies.add(weights, b, t, s + 1)
                uniform += 1 / (t + 1)
    seen_loss, first_loss = (loss[k][0] / max(loss[k][1], 1) for k in ("seen", "first"))
    return (f"{run}: rare targets already in the window {seen_loss:.3f} ({loss['seen'][1]}), at their first "
            f"occurrence {first_loss:.3f} ({loss['first'][1]}); where copying is right ({copies.count} positions), "
            f"attention to the copy source per depth and head {copies.heads()}, uniform "
            f"{uniform / max(copies.count, 1):.3f}")


@torch.no_grad()
def measure_songs(run: Path, texts: list[str]) -> str:
    """Any tokenizer. In each story, on the last `context` tokens up to the end of the song's first repeat: the
    loss on the song's tokens after its first, at the first rendition against the repeat, and per depth and
    head the attention from each token of the repeat to the token after it in the first rendition (the copy
    source). The renditions are found by their tokens; a story whose two do not both fit, or whose
    song the tokenizer splits differently the second time, is left out."""
    cfg, model, tok = load_run(run)  # in eval mode
    T, copies = cfg.model.context, CopyAttention(model)
    loss, skipped = {"first": [0.0, 0], "repeat": [0.0, 0]}, 0
    for story in texts:
        m = SONG.search(story)
        ids, song = tok.encode(story[: m.end()])[-T:], tok.encode(m.group(1))
        n = len(song)
        at = [p for p in range(len(ids) - n + 1) if ids[p : p + n] == song]
        if len(at) < 2:
            skipped += 1
            continue
        first, repeat = at[-2], at[-1]
        idx = torch.tensor([ids])
        with capture(model, *copies.hooks) as weights:
            nll = token_nll(model(idx), idx)[0]  # nll[p - 1] scores the token at p
        for kind, p in (("first", first), ("repeat", repeat)):
            loss[kind][0] += float(nll[p : p + n - 1].sum())  # tokens p + 1 .. p + n - 1
            loss[kind][1] += n - 1
        for k in range(n - 1):  # the query reads the repeat's token k, its source is the first's token k + 1
            copies.add(weights, 0, repeat + k, first + k + 1)
    first, repeat = (loss[k][0] / max(loss[k][1], 1) for k in ("first", "repeat"))
    return (f"{run}: song tokens after the first, first rendition {first:.3f} ({loss['first'][1]}), repeat "
            f"{repeat:.3f} ({loss['repeat'][1]}); attention to the copy source per depth and head: "
            f"{copies.heads()}" + (f"; {skipped} stories left out" if skipped else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus")
    corpus.add_argument("out", type=Path)
    corpus.add_argument("--bytes", type=int, default=10_000_000)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--common", action="store_true", help="keep the generator's names")
    corpus.add_argument("--lists", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="add N cumulative packing lists (1 if N is left out) to every story")
    corpus.add_argument("--items", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                        help="items per list")
    corpus.add_argument("--songs", nargs="?", const="near", default="", choices=("near", "far"),
                        help="a song of random common words in every story, sung again near (the default) or far")
    probe = sub.add_parser("measure")
    probe.add_argument("runs", type=Path, nargs="+")
    probe.add_argument("--invented", action="store_true")
    probe.add_argument("--lists", action="store_true", help="the list items, not the names")
    probe.add_argument("--tokens", action="store_true", help="repeated rare tokens, any tokenizer")
    probe.add_argument("--songs", nargs="?", const="near", default="", choices=("near", "far"),
                       help="the songs' words, any tokenizer")
    args = ap.parse_args()
    if args.command == "corpus":
        text, _ = stories(args.seed, not args.common, args.lists, tuple(args.items), args.songs,
                          n_bytes=args.bytes)
        args.out.write_text("\n\n".join(text))
        print(args.out)
        return
    if args.tokens:
        text = "\n\n".join(iter_stories(HELD_OUT_SEED, n_bytes=400_000))
        for run in args.runs:
            print(measure_tokens(run, text))
        return
    text, names = stories(HELD_OUT_SEED, args.invented, int(args.lists), songs=args.songs, n_stories=300)
    joined = "\n\n".join(text)
    for run in args.runs:
        print(measure_songs(run, text) if args.songs else measure_lists(run, joined) if args.lists
              else measure(run, joined, names))


if __name__ == "__main__":
    main()
