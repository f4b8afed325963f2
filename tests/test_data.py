from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE
from vslm.config import DataConfig
from vslm.data.batches import WindowSampler, fixed_windows
from vslm.data.shards import prepare_corpus
from vslm.errors import VSLMError


def test_stories_shards_build_then_hit_the_cache(tmp_path):
    cfg = DataConfig(source="stories", max_bytes=100_000, seed=3)
    first = prepare_corpus(cfg, tmp_path)
    again = prepare_corpus(cfg, tmp_path)
    assert not first.cache_hit and again.cache_hit and again.folder == first.folder
    assert first.meta["documents"] > 20
    assert np.array_equal(np.asarray(first.train.tokens), np.asarray(again.train.tokens))
    tok, train = first.tokenizer, first.train
    # documents are whole stories separated by end-of-text; the last tenth of them is validation
    assert first.meta["documents"] == len(train.doc_starts) + len(first.val.doc_starts)
    assert len(first.val.doc_starts) == round(0.1 * first.meta["documents"])
    starts = train.doc_starts
    assert starts[0] == 0 and all(train.tokens[s - 1] == tok.eos_id for s in starts[1:])
    story = tok.decode(train.tokens[starts[0] : starts[1] - 1])
    assert story and "\n\n" not in story
    assert train.tokens.dtype == np.uint16


def test_damaged_or_abandoned_shards_are_built_again_not_read(tmp_path, capsys):
    """A cached folder without meta.json (an interrupted copy) made every later prepare fail with 'Directory not
    empty'; a train.bin cut short was read as the whole corpus; a build killed midway left its temporary folder
    for ever. The first two are built again, the third removed once its builder's lock is free."""
    from filelock import FileLock

    from vslm.data.shards import BUILDING

    cfg = DataConfig(source="stories", max_bytes=50_000, seed=3)
    whole = prepare_corpus(cfg, tmp_path)
    n = len(whole.train.tokens)
    (whole.folder / "meta.json").unlink()
    again = prepare_corpus(cfg, tmp_path)
    assert not again.cache_hit and len(again.train.tokens) == n and "incomplete (no meta.json)" in \
        capsys.readouterr().err
    with open(whole.folder / "train.bin", "r+b") as f:
        f.truncate(1000)
    again = prepare_corpus(cfg, tmp_path)
    assert not again.cache_hit and len(again.train.tokens) == n
    assert f"train.bin holds 1,000 bytes, meta.json says {n:,} tokens" in capsys.readouterr().err
    shards = whole.folder.parent
    abandoned, building, elsewhere = shards / ".abc-1", shards / ".abc-2", shards / ".abc-3"
    for tmp in (abandoned, building, elsewhere):
        (tmp / "train.bin").parent.mkdir()
        (tmp / "train.bin").write_bytes(b"0" * 100)
        Path(f"{tmp}{BUILDING}").touch()
    Path(f"{elsewhere}{BUILDING}.host").write_text("another-machine\n")  # its lock may not show here (NFS): kept
    with FileLock(f"{building}{BUILDING}"):  # a build in progress: kept
        other = prepare_corpus(DataConfig(source="stories", max_bytes=40_000, seed=3), tmp_path).folder
    assert not abandoned.exists() and not Path(f"{abandoned}{BUILDING}").exists() and building.exists()
    assert sorted(p.name for p in shards.iterdir()) == sorted([".abc-2", f".abc-2{BUILDING}", ".abc-3",
                                                             f".abc-3{BUILDING}", f".abc-3{BUILDING}.host",
                                                             whole.folder.name, other.name])  # nothing of its own


def test_cache_key_follows_content_and_settings(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world, " * 200)
    first = prepare_corpus(DataConfig(source=str(text)), tmp_path)
    text.write_text("goodbye world, " * 200)
    changed = prepare_corpus(DataConfig(source=str(text)), tmp_path)
    other_split = prepare_corpus(DataConfig(source=str(text), val_fraction=0.2), tmp_path)
    assert len({first.folder, changed.folder, other_split.folder}) == 3
    assert not changed.cache_hit and "g" in changed.tokenizer.chars


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared/data not present")
def test_single_text_splits_like_nanogpt(tmp_path):
    corpus = prepare_corpus(DataConfig(source="tinyshakespeare"), tmp_path)
    text = SHAKESPEARE.read_text()
    assert corpus.tokenizer.vocab_size == 65 and corpus.tokenizer.eos_id is None
    n = int(0.9 * len(text))
    assert len(corpus.train.tokens) == n and len(corpus.val.tokens) == len(text) - n
    assert corpus.tokenizer.decode(corpus.val.tokens[:50]) == text[n : n + 50]


def test_bad_sources(tmp_path):
    with pytest.raises(VSLMError, match="unknown data source 'nope'"):
        prepare_corpus(DataConfig(source="nope"), tmp_path)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(VSLMError, match="not UTF-8"):
        prepare_corpus(DataConfig(source=str(latin)), tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(VSLMError, match="holds no text"):
        prepare_corpus(DataConfig(source=str(empty)), tmp_path)


def test_sampler_is_seeded_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowSampler(tokens, context=8, batch_size=4, seed=5)
    x, y = a.next_batch()
    assert x.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, 0], x[:, 0] + 1)
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(3)]
    b = WindowSampler(tokens, context=8, batch_size=4, seed=999)
    b.load_state_dict(state)
    assert all(torch.equal(e, b.next_batch()[0]) for e in expected)


def test_doc_aligned_windows_start_at_documents():
    tokens = np.arange(500, dtype=np.uint16)
    starts = np.array([0, 100, 230, 400, 490])
    s = WindowSampler(tokens, context=16, batch_size=64, seed=0, doc_starts=starts)
    firsts = set(s.next_batch()[0][:, 0].tolist())
    assert firsts <= {0, 100, 230, 400} and len(firsts) > 1  # 490 is too close to the end


def test_fixed_windows_are_fixed():
    tokens = np.arange(300, dtype=np.uint16)
    a, b = fixed_windows(tokens, 10, 20, seed=0), fixed_windows(tokens, 10, 20, seed=0)
    assert torch.equal(a[0], b[0]) and a[0].shape == (20, 10)
    small = fixed_windows(np.arange(15, dtype=np.uint16), 10, 20, seed=0)
    assert small[0].shape == (5, 10)  # every offset once


def test_repeats_are_random_strings_written_twice(tmp_path):
    from vslm.data.repeats import LENGTHS, iter_repeats

    docs = list(iter_repeats(3, n_bytes=20_000))
    assert docs == list(iter_repeats(3, n_bytes=20_000)) and docs != list(iter_repeats(4, n_bytes=20_000))
    assert sum(len(d) + 1 for d in docs) <= 20_000 + 1
    lines = [line for d in docs for line in d.split("\n")][:-1]  # the last may be cut by the byte budget
    assert len(lines) > 300
    for line in lines:
        half = len(line) // 2
        assert line[:half] == line[half:] and LENGTHS[0] <= half <= LENGTHS[1] and line.isalpha()
    corpus = prepare_corpus(DataConfig(source="repeats", max_bytes=50_000), tmp_path)
    assert corpus.tokenizer.vocab_size == 26 + 2  # the letters, the newline, end-of-text
    first = corpus.tokenizer.decode(corpus.train.tokens[: corpus.train.doc_starts[1] - 1].tolist())
    assert first == next(iter_repeats(DataConfig().seed, n_bytes=50_000))  # documents as generated


def test_the_held_out_note_names_the_first_document_held_out_at_any_fraction():
    """The note named document round(0.5 / f) + 1 as the first held out: 7 at val_fraction 0.09 (6 is), 3 at 0.3
    (2 is). It follows is_validation now."""
    from vslm.data.shards import is_validation, split_note

    for fraction in (0.05, 0.09, 0.1, 0.13, 0.2, 0.3, 0.45):
        first = next(i for i in range(1000) if is_validation(i, fraction)) + 1
        meta = {"train_tokens": 2, "val_tokens": 98, "documents": 40, "last_document_held_out": False}
        assert f"from document {first})" in split_note(meta, fraction), fraction
        meta |= {"documents": first - 1, "last_document_held_out": True}
        assert f"the last of {first - 1:,} documents (under {first}," in split_note(meta, fraction), fraction
