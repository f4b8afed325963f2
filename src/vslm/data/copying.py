"""The embedded stories changed so that parts of them can only be copied from earlier in the context
(`data.copying`, measured by `vslm probe RUN --copying`; docs/EXPERIMENTS.md, training dynamics: induction).

* names = "invented": each story's names replaced by made-up ones (2-3 consonant-vowel syllables, the
  same throughout the story), which can only be copied, not learned by heart;
* lists = N: N cumulative packing lists of `items` (min, max) items after each story's opening
  ("Then the bag had a cup, a key, a shell."), every line the previous one plus an item, so that every
  item but a line's last can be copied, and only copied, from the line before;
* songs = "near": the main character makes up a song of 5-8 words drawn at random from the stories' 400
  most frequent words, sings it again at once and once more later in the story; "far": only at the ends
  of the next two paragraphs. The song's words can only be copied, and the word after a word is not
  keyed on its kind (any common word can follow any other).

Deterministic for a seed: the stories are `iter_stories(seed)`'s, the lists, songs and names draw from
their own random.Random(seed + 11), (seed + 13) and (seed + 7). Bump COPYING_VERSION whenever the
text for a seed changes (it is part of the shard cache key).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import cache

from vslm.config import CopyingConfig
from vslm.data.stories import ALL_NAMES, iter_stories

COPYING_VERSION = 1
CONSONANTS, VOWELS = "bdfghjklmnprstvwz", "aeiou"
COMMON = re.compile(r"\b(" + "|".join(ALL_NAMES) + r")\b")  # the generator's names
ITEMS = ("cup", "hat", "shell", "key", "bell", "spoon", "sock", "book", "kite", "drum", "ball", "comb", "map",
         "lamp", "pear", "plum", "rope", "coin", "boot", "fork", "brush", "scarf", "whistle", "candle", "feather",
         "pebble", "ribbon", "button", "blanket", "teapot", "rubber duck", "jar of jam")
LIST_LINE = re.compile(r"Then the bag had ([^.]*)\.")  # group 1: a line's items, joined by ", "
# group 1: the song, in its first rendition and in the repeat that follows it
SONG = re.compile(r'made up a silly song: "([a-z ]+)\.".*?sang (?:it|the song) again: "\1\."', re.DOTALL)
SONG_WORDS = 400


def invent(rng: random.Random) -> str:
    name = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3)))
    return (name + rng.choice("nlrsk") if rng.random() < 0.4 else name).capitalize()


def packing_list(rng: random.Random, who: str, sizes: tuple[int, int] = (3, 6)) -> str:
    """A cumulative list of `sizes` items (at least, at most): each line repeats the one before, in its order,
    and adds an item."""
    items = [f"a {item}" for item in rng.sample(ITEMS, rng.randint(*sizes))]
    lines = [f"{who} packed a bag for the trip. First {who} put in {items[0]}."]
    lines += [f"Then the bag had {', '.join(items[:k])}." for k in range(2, len(items) + 1)]
    return " ".join(lines)


@cache
def song_words() -> tuple[str, ...]:
    """The SONG_WORDS most frequent lowercase words of 2000 stories no run trains on (seed 99)."""
    counts = Counter(re.findall(r"\b[a-z]+\b", " ".join(iter_stories(99, n_stories=2000))))
    return tuple(word for word, _ in counts.most_common(SONG_WORDS))


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


def with_copying(stories: Iterable[str], seed: int, cfg: CopyingConfig) -> Iterator[tuple[str, list[str]]]:
    """Each story changed as `cfg` says, with the names it uses (the invented ones; with the generator's
    names: none, as any of ALL_NAMES may occur)."""
    rng, lists_rng, songs_rng = random.Random(seed + 7), random.Random(seed + 11), random.Random(seed + 13)
    for story in stories:
        opening, rest = story.split("\n", 1)
        who = COMMON.search(opening).group(1)
        if cfg.lists:
            story = "\n".join([opening, *(packing_list(lists_rng, who, cfg.items) for _ in range(cfg.lists)), rest])
        if cfg.songs != "none":
            story = add_song(songs_rng, story, who, far=cfg.songs == "far")
        chosen: dict[str, str] = {}
        if cfg.names == "invented":  # each occurrence draws a name; the first one drawn for a name stays
            story = COMMON.sub(lambda m, chosen=chosen: chosen.setdefault(m.group(1), invent(rng)), story)
        yield story, list(chosen.values())


def copying_stories(seed: int, cfg: CopyingConfig, n_bytes: int | None = None, n_stories: int | None = None,
                    endless: bool = False) -> Iterator[str]:
    """The stories of `seed` changed as `cfg` says, until their UTF-8 size reaches n_bytes (the story that
    crosses the limit is still yielded: the limit counts the changed text), or n_stories of them, or
    without end (`endless`)."""
    if endless + (n_bytes is not None) + (n_stories is not None) != 1:
        raise ValueError("give exactly one of n_bytes, n_stories or endless")
    source = iter_stories(seed, n_stories=n_stories) if n_stories is not None else _all_stories(seed)
    total = 0
    for story, _ in with_copying(source, seed, cfg):
        yield story
        total += len(story.encode("utf-8"))
        if n_bytes is not None and total >= n_bytes:
            return


def held_out(seed: int, cfg: CopyingConfig, n_stories: int) -> tuple[list[str], set[str]]:
    """n_stories changed stories and the names they use (ALL_NAMES with the generator's names)."""
    texts, names = [], set()
    for story, used in with_copying(iter_stories(seed, n_stories=n_stories), seed, cfg):
        texts.append(story)
        names.update(used)
    return texts, names or set(ALL_NAMES)


def identity(cfg: CopyingConfig) -> str:
    """What the shard cache key adds for these changes ('' for none)."""
    if not cfg.active():
        return ""
    return (f":copying=v{COPYING_VERSION}:names={cfg.names}:lists={cfg.lists}:items={cfg.items[0]}-{cfg.items[1]}"
            f":songs={cfg.songs}")


def _all_stories(seed: int) -> Iterator[str]:
    from vslm.data.stories import generate_story

    rng = random.Random(seed)
    while True:
        yield generate_story(rng)
