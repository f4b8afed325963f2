"""scripts/name_copying.py: the packing lists it adds to the stories, and its measure on them."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest

from conftest import REPO, tiny_overrides
from vslm.config import load_config
from vslm.train.trainer import Trainer

spec = importlib.util.spec_from_file_location("name_copying", REPO / "scripts" / "name_copying.py")
copying = importlib.util.module_from_spec(spec)
spec.loader.exec_module(copying)


def list_lines(story: str) -> list[list[str]]:
    return [m.group(1).split(", ") for m in copying.LIST_LINE.finditer(story)]


def test_every_list_line_repeats_the_one_before_and_adds_an_item():
    texts, names = copying.stories(3, invented=False, lists=1, n_stories=40)
    assert names == set(copying.ALL_NAMES)  # --common --lists: the generator's names kept
    for story in texts:
        opening, packing = story.split("\n")[:2]
        who = copying.COMMON.search(opening).group(1)
        assert packing.startswith(f"{who} packed a bag for the trip. First {who} put in a ")
        lines = list_lines(story)
        assert 2 <= len(lines) <= 5  # 3-6 items: one in the first sentence, then a line per item after it
        first = re.search(r"First \w+ put in (a [^.]*)\.", packing).group(1)
        assert lines[0][0] == first
        for before, line in zip(lines, lines[1:], strict=False):
            assert line[:-1] == before and line[-1] not in before
        assert all(item.removeprefix("a ") in copying.ITEMS for item in lines[-1])


def test_several_lists_of_chosen_sizes():
    texts, _ = copying.stories(4, invented=False, lists=2, sizes=(6, 8), n_stories=20)
    for story in texts:
        packings = story.split("\n")[1:3]
        assert all("packed a bag for the trip" in p for p in packings)
        assert [6 <= len(list_lines(p)) + 1 <= 8 for p in packings] == [True, True]


def test_lists_take_the_story_characters_invented_name():
    texts, names = copying.stories(5, invented=True, lists=1, n_stories=10)
    for story in texts:
        opening, packing = story.split("\n")[:2]
        who = packing.split(" packed a bag")[0]
        assert who in names and who in opening and not copying.COMMON.search(story)


def test_measure_lists_counts_every_item_and_is_flat_at_initialisation(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=1, train__lr=1e-9, train__min_lr=0, train__warmup=0,
                                             model__context=128))
    Trainer(cfg, tmp_path / "r").fit()
    texts, _ = copying.stories(copying.HELD_OUT_SEED, invented=False, lists=1, n_stories=30)
    text = "\n\n".join(texts)
    line = copying.measure_lists(tmp_path / "r", text)
    repeated, n_rep, new, n_new = re.search(r"before ([\d.]+) \((\d+)\), the line's new item ([\d.]+) \((\d+)\)",
                                            line).groups()
    lines = [items for story in texts for items in list_lines(story)]
    assert int(n_new) == len(lines) and int(n_rep) == sum(len(items) - 1 for items in lines)
    log_v = math.log(len(json.loads((tmp_path / "r" / "tokenizer.json").read_text())["chars"]) + 1)
    assert float(repeated) == pytest.approx(log_v, abs=0.3) and float(new) == pytest.approx(log_v, abs=0.3)
    assert "left out" not in line


def test_every_story_sings_one_song_of_common_words_three_times():
    for invented in (False, True):
        texts, _ = copying.stories(6, invented=invented, songs="near", n_stories=40)
        for story in texts:
            songs = re.findall(r'"([a-z ]+)\."', story)
            assert len(songs) == 3 and len(set(songs)) == 1
            words = songs[0].split()
            assert 5 <= len(words) <= 8 and set(words) <= set(copying.song_words())
            assert copying.SONG.search(story.split("\n")[0]).group(1) == songs[0]  # twice in the opening
    assert len(copying.song_words()) == 400
    for story in copying.stories(6, invented=False, songs="far", n_stories=40)[0]:
        paragraphs = story.split("\n")
        song = copying.SONG.search(story).group(1)
        assert paragraphs[0].endswith(f'made up a silly song: "{song}."') and paragraphs[0].count('"') == 2
        assert all(p.endswith(f'sang the song again: "{song}."') for p in paragraphs[1:3])
        assert story.count(song) == 3


def test_measure_songs_counts_every_song_token_and_is_flat_at_initialisation(tmp_path):
    train, _ = copying.stories(0, invented=False, songs="near", n_bytes=200_000)  # ':' in the vocabulary
    (tmp_path / "songs.txt").write_text("\n\n".join(train))
    cfg = load_config("tiny", tiny_overrides(train__steps=1, train__lr=1e-9, train__min_lr=0, train__warmup=0,
                                             model__context=256, data__source=tmp_path / "songs.txt"))
    Trainer(cfg, tmp_path / "r").fit()
    texts, _ = copying.stories(copying.HELD_OUT_SEED, invented=False, songs="near", n_stories=30)
    line = copying.measure_songs(tmp_path / "r", texts)
    first, n_first, repeat, n_repeat = re.search(r"rendition ([\d.]+) \((\d+)\), repeat ([\d.]+) \((\d+)\)",
                                                 line).groups()
    # a character tokenizer: a song of c characters has c - 1 after its first, in each rendition
    assert int(n_first) == int(n_repeat) == sum(len(copying.SONG.search(s).group(1)) - 1 for s in texts)
    log_v = math.log(len(json.loads((tmp_path / "r" / "tokenizer.json").read_text())["chars"]) + 1)
    assert float(first) == pytest.approx(log_v, abs=0.3) and float(repeat) == pytest.approx(log_v, abs=0.3)
    assert "left out" not in line
