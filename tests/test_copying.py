"""data.copying (invented names, packing lists, songs in the built-in stories) and the copying probes
(vslm.probes.copying, `vslm probe RUN --copying`)."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from vslm.cli import main
from vslm.config import LIST_ITEMS, CopyingConfig, load_config
from vslm.data import copying as corpus
from vslm.data.sources import open_source
from vslm.data.stories import ALL_NAMES
from vslm.errors import ConfigError
from vslm.model import GPT
from vslm.probes import copying
from vslm.train.probing import HELD_OUT_SEED, probe_copying
from vslm.train.trainer import Trainer


def stories(seed: int, n_stories: int, **options) -> tuple[list[str], set[str]]:
    return corpus.held_out(seed, CopyingConfig(**options), n_stories)


def list_lines(story: str) -> list[list[str]]:
    return [m.group(1).split(", ") for m in corpus.LIST_LINE.finditer(story)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny character run trained for one step at a learning rate of 1e-9 (its initialisation) on stories
    with a packing list and a song each (':' and every letter in the vocabulary), context 256."""
    folder = tmp_path_factory.mktemp("copying") / "r"
    cfg = load_config("tiny", tiny_overrides(train__steps=1, train__lr=1e-9, train__min_lr=0, train__warmup=0,
                                             model__context=256, data__copying__lists=1,
                                             data__copying__songs="near"))
    Trainer(cfg, folder).fit()
    return folder


def log_vocab(folder) -> float:
    return math.log(len(json.loads((folder / "tokenizer.json").read_text())["chars"]) + 1)  # + end of text


# ------------------------------------------------------------------------------------ the corpus


# sha256 of the first 100 kB of what scripts/name_copying.py's `corpus` command wrote (before it was
# replaced by data.copying): `corpus OUT --seed S ...` with the flags in the comment
OLD_CORPUS = {
    ("data.seed=0", "data.copying.names=invented"):  # (no flags: invented names)
        "abfb8e7e28ab64c4217a72b981a74f8d926ca95191674c28e14558a377bcb3d2",
    ("data.seed=0", "data.copying.lists=2", "data.copying.items=[6, 8]"):  # --common --lists 2 --items 6 8
        "72ad6f6f1e53df1f3ec21e8b6ae49610ff779fa09672e40ef590285b294afb21",
    ("data.seed=0", "data.copying.songs=near"):  # --common --songs
        "cfe5f0732461251d99b8ace14fc4622368042e5bcf8dfddfbca42c8d0f99f372",
    ("data.seed=7", "data.copying.names=invented", "data.copying.lists=3", "data.copying.items=[2, 4]",
     "data.copying.songs=far"):  # --seed 7 --lists 3 --items 2 4 --songs far
        "06a28c930a6101fa1ea0f98c4285e9ac7cbb2cf02606d92f05f02c00bb4d4ea3",
}


@pytest.mark.parametrize("overrides", list(OLD_CORPUS))
def test_the_data_option_gives_the_old_scripts_text_byte_for_byte(overrides):
    cfg = load_config("tiny", [*overrides, "data.max_bytes=100000"])
    source = open_source(cfg.data)
    raw = "\n\n".join(source.documents()).encode()
    assert len(raw) >= 100_000  # the limit counts the changed text; the story that crosses it is kept
    assert hashlib.sha256(raw[:100_000]).hexdigest() == OLD_CORPUS[overrides]
    assert ":copying=v1:" in source.identity


def test_the_plain_stories_keep_their_identity_and_text():
    cfg = load_config("tiny", ["data.max_bytes=50000"])
    source = open_source(cfg.data)
    assert source.identity == "stories:v1:seed=0:bytes=50000"  # the shard cache of every earlier run stays valid
    assert not cfg.data.copying.active()
    assert "\n\n".join(source.documents()) == "\n\n".join(corpus.iter_stories(0, n_bytes=50000))


def test_bad_copying_values_are_one_line_config_errors(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    for words, message in (
        (["data.copying.items=[5, 3]"], "config error: data.copying: items [5, 3] must be (min, max)"),
        (["data.copying.songs=loud"], "config error: data.copying.songs: Input should be 'none', 'near' or 'far'"),
        (["data.copying.lists=-1"], "config error: data.copying.lists: Input should be greater than or equal to 0"),
        ([f"data.copying.items=[3, {LIST_ITEMS + 1}]"], "config error: data.copying.items.1: Input should be less"),
        (["data.copying.name=invented"], "config error: unknown field 'data.copying.name'"),
        ([f"data.source={tmp_path / 'a.txt'}", "data.copying.lists=1"],
         "config error: data: copying changes the built-in stories, not data.source"),
    ):
        with pytest.raises(ConfigError) as e:
            load_config("tiny", words)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert len(corpus.ITEMS) == LIST_ITEMS == len(set(corpus.ITEMS))


def test_every_list_line_repeats_the_one_before_and_adds_an_item():
    texts, names = stories(3, 40, lists=1)
    assert names == set(ALL_NAMES)  # common names and lists: the generator's names kept
    for story in texts:
        opening, packing = story.split("\n")[:2]
        who = corpus.COMMON.search(opening).group(1)
        assert packing.startswith(f"{who} packed a bag for the trip. First {who} put in a ")
        lines = list_lines(story)
        assert 2 <= len(lines) <= 5  # 3-6 items: one in the first sentence, then a line per item after it
        first = re.search(r"First \w+ put in (a [^.]*)\.", packing).group(1)
        assert lines[0][0] == first
        for before, line in zip(lines, lines[1:], strict=False):
            assert line[:-1] == before and line[-1] not in before
        assert all(item.removeprefix("a ") in corpus.ITEMS for item in lines[-1])


def test_several_lists_of_chosen_sizes():
    texts, _ = stories(4, 20, lists=2, items=(6, 8))
    for story in texts:
        packings = story.split("\n")[1:3]
        assert all("packed a bag for the trip" in p for p in packings)
        assert [6 <= len(list_lines(p)) + 1 <= 8 for p in packings] == [True, True]


def test_lists_take_the_story_characters_invented_name():
    texts, names = stories(5, 10, names="invented", lists=1)
    for story in texts:
        opening, packing = story.split("\n")[:2]
        who = packing.split(" packed a bag")[0]
        assert who in names and who in opening and not corpus.COMMON.search(story)


def test_every_story_sings_one_song_of_common_words_three_times():
    for names in ("common", "invented"):
        texts, _ = stories(6, 40, names=names, songs="near")
        for story in texts:
            songs = re.findall(r'"([a-z ]+)\."', story)
            assert len(songs) == 3 and len(set(songs)) == 1
            words = songs[0].split()
            assert 5 <= len(words) <= 8 and set(words) <= set(corpus.song_words())
            assert corpus.SONG.search(story.split("\n")[0]).group(1) == songs[0]  # twice in the opening
    assert len(corpus.song_words()) == 400
    for story in stories(6, 40, songs="far")[0]:
        paragraphs = story.split("\n")
        song = corpus.SONG.search(story).group(1)
        assert paragraphs[0].endswith(f'made up a silly song: "{song}."') and paragraphs[0].count('"') == 2
        assert all(p.endswith(f'sang the song again: "{song}."') for p in paragraphs[1:3])
        assert story.count(song) == 3


# ------------------------------------------------------------------------------------ the probes


def test_list_probe_counts_every_item_and_is_flat_at_initialisation(run):
    texts, _ = stories(HELD_OUT_SEED, 30, lists=1)
    result = probe_copying(run, "lists", stories=30)
    lines = [items for story in texts for items in list_lines(story)]
    assert result["count"] == {"repeated": sum(len(items) - 1 for items in lines), "new": len(lines)}
    # every repeated item has its copy source in the window (256 characters): the line before, or for a list's
    # first line the sentence "First Tom put in a cup."
    assert result["copies"] == result["count"]["repeated"] and result["skipped"] == 0
    assert result["loss"]["repeated"] == pytest.approx(log_vocab(run), abs=0.3)
    assert result["loss"]["new"] == pytest.approx(log_vocab(run), abs=0.3)
    assert len(result["attention"]) == 2 and all(len(heads) == 2 for heads in result["attention"])


def test_list_items_whose_source_is_outside_the_window_are_not_scored_as_repeated():
    from vslm.probes.copying import list_windows

    text = ("Tom packed a bag for the trip. First Tom put in a cup. Then the bag had a cup, a key. "
            "Then the bag had a cup, a key, a hat.")
    encode = lambda s: [ord(c) for c in s]  # noqa: E731  (a character tokenizer)
    wide = list_windows(text, corpus.LIST_LINE, 128, encode)
    assert [len(wide.scored[k]) for k in ("repeated", "new")] == [3, 2] and len(wide.copies) == 3
    for b, query, source in wide.copies:  # the query reads the character before the item, its source the item
        window = "".join(map(chr, wide.windows[b]))
        assert window[query + 1] == window[source] and window[query - 1:query + 1] == "a "
    # 40 characters hold a line but neither the line nor the sentence before it: nothing there to copy
    narrow = list_windows(text, corpus.LIST_LINE, 40, encode)
    assert [len(narrow.scored[k]) for k in ("repeated", "new")] == [0, 2] and narrow.copies == []


def test_song_probe_counts_every_song_token_and_is_flat_at_initialisation(run):
    texts, _ = stories(HELD_OUT_SEED, 30, songs="near")
    result = probe_copying(run, "songs", stories=30)
    # a character tokenizer: a song of c characters has c - 1 after its first, in each rendition
    n = sum(len(corpus.SONG.search(s).group(1)) - 1 for s in texts)
    assert result["count"] == {"first": n, "repeat": n} and result["copies"] == n and result["skipped"] == 0
    assert result["loss"]["first"] == pytest.approx(log_vocab(run), abs=0.3)
    assert result["loss"]["repeat"] == pytest.approx(log_vocab(run), abs=0.3)


def test_name_probe_counts_every_letter_after_a_names_first(run):
    texts, names = stories(HELD_OUT_SEED, 30)
    text = "\n\n".join(texts)
    result = probe_copying(run, "names", stories=30, windows=10)
    first = repeat = 0
    for start in range(0, 10 * 256, 256):
        seen = set()
        for m in re.finditer(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b",
                             text[start : start + 256]):
            if m.group(1) in seen:
                repeat += len(m.group(1)) - 1
            else:
                first += len(m.group(1)) - 1
            seen.add(m.group(1))
    assert result["count"] == {"first": first, "repeat": repeat} and result["copies"] == repeat > 0
    assert result["held_out"]["windows"] == 10
    for loss in result["loss"].values():
        assert loss == pytest.approx(log_vocab(run), abs=0.3)
    # attention spread evenly over a causal window puts 1 / (query + 1) on the source: at initialisation
    # the attention is close to even
    mean = float(np.mean(result["attention"]))
    assert result["uniform"] == pytest.approx(mean, rel=0.3)


def test_token_probe_splits_rare_targets_into_seen_and_first():
    ids = np.array([0, 1, 2, 3, 1, 2, 4, 0, 0, 0, 0, 0, 5, 1, 2, 0])  # 16 tokens; V = 8: rare = below 1/8
    batch = copying.token_windows(ids, context=8, vocab_size=8)
    # counts: 0 x6, 1 x3, 2 x3, 3 x1, 4 x1, 5 x1 -> rare (share < 1/8 = 2 of 16): 3, 4, 5
    assert batch.windows == [ids[:8].tolist(), ids[8:].tolist()]
    assert batch.scored == {"seen": [], "first": [(0, 3), (0, 6), (1, 4)]}
    assert batch.copies == []  # no rare target follows a token's earlier occurrence
    ids = np.array([5, 6, 3, 0, 5, 6, 3, 0] + [0] * 24)  # 3, 5, 6 occur twice in 32, V = 8: rare
    batch = copying.token_windows(ids, context=8, vocab_size=8, windows=1)
    assert batch.scored == {"seen": [(0, 4), (0, 5), (0, 6)], "first": [(0, 1), (0, 2)]}
    # at t = 4 (token 5, seen at 0) copying predicts 6 (right, rare): source 1; at t = 5: source 2
    assert batch.copies == [(0, 4, 1), (0, 5, 2)]


def test_batching_and_padding_change_nothing():
    """Windows of several lengths padded into one forward give what one window a forward gives."""
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.vocab_size=20", "model.context=32"]).model
    model = GPT(cfg).eval()
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 20, n).tolist() for n in (32, 7, 20, 32, 12)]
    batch = copying.CopyWindows(windows=windows, scored={"a": [(0, 5), (1, 6), (2, 19), (4, 11)], "b": [(3, 31)]},
                                copies=[(0, 5, 2), (1, 6, 0), (2, 19, 18), (4, 11, 3)])
    one, five = copying.copy_probe(model, batch, batch_size=1), copying.copy_probe(model, batch, batch_size=5)
    assert one.count == five.count == {"a": 4, "b": 1} and one.copies == five.copies == 4
    for kind in ("a", "b"):
        assert one.loss[kind] == pytest.approx(five.loss[kind], abs=1e-6)
    assert np.allclose(one.attention, five.attention, atol=1e-6)
    assert one.uniform == pytest.approx(np.mean([1 / 6, 1 / 7, 1 / 20, 1 / 12]))
    with torch.no_grad():  # against the loss read directly off one unpadded window
        logits = model(torch.tensor([windows[3]]))
    direct = -torch.log_softmax(logits[0, 30], -1)[windows[3][31]].item()
    assert five.loss["b"] == pytest.approx(direct, abs=1e-5)


def test_character_measures_refuse_another_tokenizer():
    with pytest.raises(Exception, match="needs a character tokenizer"):
        copying.name_windows("Tom and Tom " * 20, {"Tom"}, 16, lambda s: list(range(len(s) // 2)))


def test_probe_copying_on_the_command_line(run, capsys):
    assert main(["probe", str(run), "--copying", "lists", "--stories", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == probe_copying(run, "lists", stories=10)
    assert result["copying"] == "lists" and result["held_out"]["copying"]["lists"] == 1
    assert main(["probe", str(run), "--copying", "lists", "--stories", "10"]) == 0
    table = capsys.readouterr().out
    assert f"{result['loss']['repeated']:.3f} nats  ({result['count']['repeated']} tokens)" in table
    assert " ".join(f"{a:.3f}" for a in result["attention"][1]) in " ".join(table.split())
