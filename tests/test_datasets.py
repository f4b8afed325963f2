"""The dataset registry, streaming sources and shards, and evaluation on corpora.

Each registry entry is read from a small local copy in the hub's own schema (parquet or JSON lines
written with `datasets`, SQuAD's original nested JSON), the way a user's offline copy is read."""

import json
import math
import os
import re

import datasets  # conftest, imported first, has set its environment (no network, caches in a temporary folder)
import numpy as np
import pytest
import torch

from conftest import SHARED, tiny_overrides
from vslm.config import DataConfig, load_config
from vslm.data import sources
from vslm.data.answers import training_documents
from vslm.data.registry import GENERATED, REGISTRY, squad_text
from vslm.data.shards import is_validation, prepare_corpus
from vslm.data.sources import open_source
from vslm.data.tokenizer import ByteTokenizer, HFTokenizer
from vslm.errors import ConfigError, VSLMError
from vslm.eval.corpus import score_tokens
from vslm.train.trainer import default_batches

DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data folder that is the only one searched."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("VSLM_DATA_DIR", str(folder))
    monkeypatch.setattr(sources, "data_dirs", lambda: [folder])
    return folder


def test_the_shared_data_beside_the_checkout_is_found_from_any_folder(tmp_path, monkeypatch):
    """From a folder that has no ../shared beside it (a subfolder of the checkout, say), the study group's
    shared/data beside the checkout is still searched; ../shared/data from where one stands too."""
    monkeypatch.delenv("VSLM_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    dirs = sources.data_dirs()
    assert dirs[1] == (SHARED / "data").resolve() and dirs[-1] == tmp_path / "shared" / "data"
    assert all(d.is_absolute() for d in dirs) and len(set(dirs)) == len(dirs)


def documents(source: str, **data) -> list[str]:
    return list(open_source(DataConfig(source=source, **data)).documents())


# --------------------------------------------------------------------------- the registry


def test_every_entry_names_its_hub_source_license_and_text(capsys):
    from vslm.cli import main

    expected = {"stories", "repeats", "tinystories", "openwebtext", "books", "wikitext-2", "wikitext-103", "dolma",
                "squad", "tinyshakespeare"}
    assert set(REGISTRY) == expected
    for e in REGISTRY.values():
        assert e.license and e.text and (e.hub or e.name in GENERATED)
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in expected) and "Salesforce/wikitext" in out and "CDLA-Sharing-1.0" in out
    # the notes that make one copy's numbers differ from another's, under the table
    assert "wikitext-2: the local wiki.*.tokens files are the tokenized release (<unk>, @-@)" in out


def test_plain_text_entries_read_the_hubs_parquet_files(data_dir):
    stories = ["Once upon a time there was a cat.", "Tom had a red ball.\n\nHe played all day."]
    write_parquet(data_dir / "tinystories" / "data" / "validation-00000-of-00001.parquet",
                  [{"text": t} for t in stories])
    assert documents("tinystories:validation") == stories
    web = ["A web page about lobsters.", "", "Another page."]
    write_parquet(data_dir / "openwebtext" / "plain_text" / "train-00000-of-00002.parquet", [{"text": t} for t in web])
    assert documents("openwebtext") == ["A web page about lobsters.", "Another page."]  # empty records skipped
    write_parquet(data_dir / "tinyshakespeare" / "data" / "train-00000-of-00001.parquet",
                  [{"text": "First Citizen:\nBefore we proceed any further, hear me speak.\n"}])
    assert documents("tinyshakespeare") == ["First Citizen:\nBefore we proceed any further, hear me speak.\n"]


def test_dolma_reads_json_lines_in_dolmas_schema(data_dir):
    rows = [{"id": "a1", "text": "Web text one.", "source": "common-crawl", "added": "2023-04-07",
             "created": "2020-03-29", "metadata": {"url": "http://x"}},
            {"id": "a2", "text": "Web text two.", "source": "common-crawl", "added": "2023-04-07",
             "created": "2020-03-30", "metadata": {"url": "http://y", "lang": "en"}}]
    write_jsonl(data_dir / "dolma" / "cc_en_head-0001.jsonl", rows)
    assert documents("dolma") == ["Web text one.", "Web text two."]


def test_an_end_of_text_marker_inside_a_record_ends_its_document(tmp_path):
    """In a text file <|endoftext|> separates documents; inside a JSON-lines record it was text to the shards'
    bulk encoder past the first 100k characters, and end-of-text (no bytes) to Tokenizer.encode. It now ends
    the document there, as in a text file, whatever the tokenizer and wherever it stands."""
    path = tmp_path / "records.jsonl"
    write_jsonl(path, [{"text": "record one<|endoftext|>its second half"}, {"text": "record two"}] +
                      [{"text": f"filler {i} " * 30} for i in range(400)])  # past the first 100k characters too
    write_jsonl(tmp_path / "late.jsonl", [{"text": f"filler {i} " * 30} for i in range(400)] +
                [{"text": "late<|endoftext|>record"}])
    assert documents(str(path))[:3] == ["record one", "its second half", "record two"]
    assert documents(str(tmp_path / "late.jsonl"))[-2:] == ["late", "record"]
    for source, docs in ((path, 403), (tmp_path / "late.jsonl", 402)):
        corpus = prepare_corpus(DataConfig(source=str(source), tokenizer="byte"), tmp_path / "cache")
        tokens = np.concatenate([np.asarray(corpus.train.tokens), np.asarray(corpus.val.tokens)])
        text = bytes(int(t) for t in tokens if t < 256)
        assert b"<|endoftext|>" not in text and corpus.meta["documents"] == docs


def test_squad_records_become_context_question_answer_text(data_dir):
    """SQuAD's original nested JSON (articles > paragraphs > qas) and the hub's flat rows give the same text."""
    context = "Normandy is a region in France. The Normans gave their name to it."
    nested = {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "In what country is Normandy?", "answers": [{"answer_start": 24, "text": "France"}]},
        {"id": "q2", "question": "Who gave Normandy its name?", "answers": [{"answer_start": 36, "text": "The Normans"},
                                                                          {"answer_start": 40, "text": "Normans"}]},
    ]}]}]}
    (data_dir / "squad").mkdir()
    (data_dir / "squad" / "dev-v1.1.json").write_text(json.dumps(nested))
    expected = [f"{context}\nQuestion: In what country is Normandy?\nAnswer: France",
                f"{context}\nQuestion: Who gave Normandy its name?\nAnswer: The Normans"]
    assert documents("squad:validation") == expected
    flat = [{"id": "q1", "title": "Normans", "context": context, "question": "In what country is Normandy?",
             "answers": {"text": ["France"], "answer_start": [24]}},
            {"id": "q2", "title": "Normans", "context": context, "question": "Who gave Normandy its name?",
             "answers": {"text": ["The Normans", "Normans"], "answer_start": [36, 40]}}]
    write_parquet(data_dir / "squad" / "plain_text" / "train-00000-of-00001.parquet", flat)
    assert documents("squad") == expected
    assert squad_text(" c ", "q?", []) == "c\nQuestion: q?\nAnswer: unanswerable"  # SQuAD 2.0


WIKI_LINES = ["", " = Lobster = \n", "", " The lobster is a crustacean . \n", "", " = = Habitat = = \n",
              " It lives in the sea . \n", "", " = Crab = \n", "", " A crab walks sideways . \n"]


def test_wikitext_lines_are_grouped_into_articles(data_dir):
    """The hub serves WikiText one row per line; the classic release is a text file of the same lines."""
    articles = ["= Lobster = \n\n The lobster is a crustacean . \n\n = = Habitat = = \n It lives in the sea .",
                "= Crab = \n\n A crab walks sideways ."]
    write_parquet(data_dir / "wikitext-2" / "wikitext-2-raw-v1" / "validation-00000-of-00001.parquet",
                  [{"text": t} for t in WIKI_LINES])
    assert documents("wikitext-2:validation") == articles
    (data_dir / "wikitext-103").mkdir()
    (data_dir / "wikitext-103" / "wiki.test.tokens").write_text("".join(t or "\n" for t in WIKI_LINES))
    assert documents("wikitext-103:test") == articles


def test_books_drop_the_gutenberg_licence_and_come_in_parts(data_dir):
    rows = [{"short_book_title": "Tiny Book", "publication_date": 1900, "url": "http://g/1",
             "text": "\n\n".join(f"Paragraph {i}. " + "word " * 400 for i in range(60))}]
    write_parquet(data_dir / "pg19" / "data" / "train-00000-of-00001.parquet", rows)
    parts = documents("books")
    assert len(parts) > 1 and all(len(p) < 40_000 for p in parts)
    assert "\n\n".join(parts) == rows[0]["text"] and parts[0].startswith("Paragraph 0.")
    gutenberg = data_dir / "gutenberg" / "x"
    gutenberg.mkdir(parents=True)
    (data_dir / "pg19" / "data" / "train-00000-of-00001.parquet").unlink()
    (gutenberg / "alice.txt").write_bytes(b"\xef\xbb\xbfThe Project Gutenberg eBook\r\n*** START OF THE PROJECT "
                                          b"GUTENBERG EBOOK ALICE ***\r\nDown the rabbit hole.\r\n\r\nThe end.\r\n"
                                          b"    *** END OF THE PROJECT GUTENBERG EBOOK ALICE ***\r\nLicence text\r\n")
    assert documents("books") == ["Down the rabbit hole.\n\nThe end."]
    (gutenberg / "bible.txt").write_text("".join(f"Ge1:{i} And God said, Let there be light.\n" for i in range(8000)))
    verses = documents("books")[1:]  # no blank line at all: cut at line ends after 4 x 32k characters
    assert len(verses) == 3 and all(p.endswith("light.") for p in verses) and len(verses[0]) < 4 * 32_000 + 50


def test_stories_is_the_embedded_generator():
    from vslm.data.stories import iter_stories

    assert documents("stories", max_bytes=5000, seed=4) == list(iter_stories(4, n_bytes=5000))


# ------------------------------------------------------------------------- errors


def test_a_split_typed_wrong_is_a_config_error_before_anything_is_read(data_dir):
    """Not a trip to the hub that ends in "check the connection", nor a generated corpus trained silently."""
    with pytest.raises(ConfigError) as e:
        open_source(DataConfig(source="wikitext-2:tset"))
    assert str(e.value) == ("data source 'wikitext-2:tset': no split 'tset' (did you mean wikitext-2:test?); "
                            "wikitext-2 has wikitext-2:train, wikitext-2:validation, wikitext-2:test")
    with pytest.raises(ConfigError, match=r"^data source 'stories:tset': stories is generated, one text without"):
        open_source(DataConfig(source="stories:tset"))
    assert open_source(DataConfig(source="stories:train", max_bytes=1000)).name == "stories"


def test_offline_without_a_local_copy_says_what_to_do(data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_parquet(data_dir / "tinystories" / "data" / "validation-00000-of-00001.parquet", [{"text": "x y"}])
    with pytest.raises(VSLMError) as e:
        open_source(DataConfig(source="tinystories"))
    message = str(e.value)
    assert "\n" not in message and "no local copy of its train split" in message and "offline" in message
    assert "tinystories:validation" in message and "VSLM_DATA_DIR" in message
    with pytest.raises(VSLMError, match="data.origin = local"):
        open_source(DataConfig(source="squad", origin="local"))


def test_online_with_a_hub_that_does_not_resolve_says_so_at_once(data_dir, monkeypatch, capsys):
    """Without HF_HUB_OFFLINE and with no name resolution (a machine offline), the hub library retried five
    times, about 25 s, before its error; the host's name that does not resolve now says it in one line."""
    import socket
    import time

    for name in (*sources.OFFLINE, *sources.PROXIES, "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    asked = []

    def unknown(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    source = open_source(DataConfig(source="wikitext-2:validation"))  # shards cached from the hub need no hub:
    assert asked == []                                                  # asked only when it is read
    started = time.monotonic()
    with pytest.raises(VSLMError) as e:
        next(source.documents())
    assert time.monotonic() - started < sources.RESOLVE_WAIT_S and asked == ["huggingface.co"]
    assert "\n" not in str(e.value) and "the Hugging Face hub cannot be reached (huggingface.co does not resolve)" \
        in str(e.value)
    # the files it looked for and where, as offline: a folder holding another split is no puzzle
    assert re.search(r"no local copy of its validation split \(wikitext-2/\S+", str(e.value)), str(e.value)
    assert "train on a file by its path" in str(e.value)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org/mirror")
    assert sources.hub_unresolvable() == "hub.example.org"
    monkeypatch.setenv("HF_ENDPOINT", "mirror.example.org:8080")  # a mirror without a scheme: its own host
    assert sources.hub_unresolvable() == "mirror.example.org"
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: "hub..x".encode("idna"))  # UnicodeError
    monkeypatch.setenv("HF_ENDPOINT", "https://hub..x")
    assert sources.hub_unresolvable() == "hub..x" and "Traceback" not in capsys.readouterr().err  # not a thread's
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy resolves names: the hub library decides
    assert sources.hub_unresolvable() is None and asked[-1] == "mirror.example.org"


def test_bad_files_give_one_line(tmp_path):
    with pytest.raises(VSLMError, match=r"^unknown data source 'nope\.txt'.*vslm data list"):
        open_source(DataConfig(source="nope.txt"))
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"body": "text under another name"}])
    with pytest.raises(VSLMError, match=r"no field 'text'.*data.text_field"):
        prepare_corpus(DataConfig(source=str(rows)), tmp_path)
    assert documents(str(rows), text_field="body") == ["text under another name"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.bin").write_bytes(b"\0")
    with pytest.raises(VSLMError, match="holds no text, JSON lines or parquet files"):
        open_source(DataConfig(source=str(tmp_path / "empty")))
    latin = tmp_path / "many.txt"
    latin.write_bytes(b"ok <|endoftext|> caf\xe9 <|endoftext|> fine")
    with pytest.raises(VSLMError, match=r"not UTF-8 text \(byte 20\); convert it to UTF-8"):
        prepare_corpus(DataConfig(source=str(latin), tokenizer="byte"), tmp_path)
    nulls = tmp_path / "nulls.jsonl"  # the field is there, its value null: said so, not "no field 'text'"
    write_jsonl(nulls, [{"text": "a line"}, {"text": None}])
    with pytest.raises(VSLMError, match=r"nulls.jsonl, line 2: a record is not in the expected schema \(its field "
                                        r"'text' is null, not text\)"):
        documents(str(nulls))
    bom = tmp_path / "bom.txt"  # a byte-order mark is not text: not a character of the vocabulary
    bom.write_bytes("\ufeffOnce upon a time".encode())
    assert documents(str(bom)) == ["Once upon a time"]


def test_a_folder_skips_hidden_paths_and_says_once_which_files_it_skips(tmp_path, capsys):
    """A notebook's checkpoints and a hub cache inside a corpus folder are not read; files of other kinds are
    skipped with one note; a README.md is text like any other."""
    folder = tmp_path / "corpus"
    (folder / "part").mkdir(parents=True)
    (folder / "a.txt").write_text("the first text")
    (folder / "part" / "b.txt").write_text("the second text")
    (folder / "README.md").write_text("the readme")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("an old copy")
    write_jsonl(folder / ".cache" / "huggingface" / "x.jsonl", [{"text": "a cached record"}])
    (folder / ".notes.txt").write_text("hidden notes")
    (folder / "labels.csv").write_text("id,label\n1,a\n")
    (folder / "part" / "plot.png").write_bytes(b"\x89PNG")
    cfg = DataConfig(source=str(folder), tokenizer="byte")
    docs = list(open_source(cfg).documents())
    assert sorted(docs) == ["the first text", "the readme", "the second text"]
    err = capsys.readouterr().err
    assert err == (f"note: data folder {folder}: 2 files of other kinds skipped (e.g. labels.csv); it reads .txt, "
                   ".text, .md, .tokens, .raw, JSON lines / JSON and parquet files\n")
    open_source(cfg)
    assert capsys.readouterr().err == ""  # once


def test_a_corpus_name_beside_a_folder_of_that_name_is_the_corpus_and_says_so(tmp_path, capsys, monkeypatch):
    """`data.source=stories` beside a folder ./stories is the generated corpus (a name, as `tiny` is a config):
    one note says so and how to read the folder, ./stories, which then reads it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "mine.txt").write_text("my own story")
    first = next(iter(open_source(DataConfig(source="stories", max_bytes=2000)).documents()))
    assert first != "my own story"
    assert capsys.readouterr().err == ("note: data.source=stories is the corpus of that name (`vslm data list`), not "
                                       "./stories here; data.source=./stories reads that\n")
    assert list(open_source(DataConfig(source="./stories")).documents()) == ["my own story"]
    assert capsys.readouterr().err == ""


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    from vslm.cli import main

    assert main(["data", "prepare", "no-such-corpus"]) == 2  # a name typed wrong: a config error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vslm: error: unknown data source 'no-such-corpus'")
    empty = tmp_path / "e.txt"
    empty.write_text(" \n\n")
    assert main(["data", "prepare", str(empty), "--tokenizer", "byte"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no text" in err
    for words, line in [(["data.vocab_sise=3"], "data: unknown field 'vocab_sise' (did you mean vocab_size?)"),
                        (["max_bytes=9"], "data prepare takes data.* overrides only, got max_bytes=9 (did you mean "
                                          "data.max_bytes or data.max_tokens?)"),
                        (["--vocab-size", "300"], "--vocab-size applies to --tokenizer bpe; char has its own "
                                                  "vocabulary"),
                        (["data.vocab_size=500"], "data: vocab_size 500 is the size bpe learns; tokenizer=char has its "
                                                  "own vocabulary: drop data.vocab_size, or set data.tokenizer=bpe"),
                        # a setting given twice (the override won, silently): refused
                        (["data.tokenizer=byte"], "data.tokenizer=byte sets what --tokenizer sets; give one of them"),
                        (["data.source=repeats"], "data.source=repeats sets what the NAME argument sets; give one of "
                                                  "them")]:
        assert main(["data", "prepare", str(empty), "--tokenizer", "char", *words]) == 2
        assert capsys.readouterr().err == f"vslm: error: {line}\n"
    short = tmp_path / "short.txt"
    short.write_text("a few words <|endoftext|> and a few more")
    meta = prepare_corpus(DataConfig(source=str(short), tokenizer="char", max_tokens=1000)).meta
    total = meta["train_tokens"] + meta["val_tokens"]
    assert 20 < total < 40 and not meta["truncated_by_budget"]
    for tokens, note in (("1k", f"note: {short} ran out at {total} tokens, short of the 1,000 asked for: all of it "
                                "is used\n"), ("20", "")):
        assert main(["data", "prepare", str(short), "--tokenizer", "char", "--tokens", tokens, "--quiet"]) == 0
        err = capsys.readouterr().err  # the budget met: no note of it (2 documents: the held-out share's, apart)
        assert [ln + "\n" for ln in err.splitlines() if not ln.startswith("note: validation is")] == [note] * bool(note)
    assert main(["data", "prepare", "stories", "--tokenizer", "char", "--tokens", "1M", "--max-bytes", "20000",
                 "--quiet"]) == 0  # an endless generator, stopped by the bytes asked for
    assert capsys.readouterr().err.startswith("note: data.max_bytes=20,000 stopped stories at ")


# ------------------------------------------------------------------------- shards


def test_held_out_documents_are_spread_evenly_and_counted_like_before():
    for n in range(1, 60):
        assert sum(is_validation(i, 0.1) for i in range(n)) == round(0.1 * n)
    held = [i for i in range(30) if is_validation(i, 0.1)]
    assert [i // 10 for i in held] == [0, 1, 2]  # one in every ten


def test_answer_only_documents_are_the_shards_training_split(tmp_path):
    docs = [f"document {i}: " + "words " * (i % 5) + "\nA: yes" * (i % 3 == 0) if i % 7 else "  \n"
            for i in range(60)]  # some blank, some with an answer
    path = tmp_path / "docs.txt"
    path.write_text("<|endoftext|>".join(docs))
    cfg = DataConfig(source=str(path), tokenizer="byte", max_bytes=None)
    corpus = prepare_corpus(cfg, tmp_path)
    train = corpus.tokenizer.decode(t for t in corpus.train.tokens.tolist() if t != corpus.tokenizer.eos_id)
    val = corpus.tokenizer.decode(t for t in corpus.val.tokens.tolist() if t != corpus.tokenizer.eos_id)
    kept = training_documents(cfg, corpus)
    assert kept and all(f"{d.split(':')[0]}:" in train and f"{d.split(':')[0]}:" not in val for d in kept)
    assert len(kept) + val.count("document ") == sum(1 for d in docs if d.strip())
    assert set(kept) <= set(docs)  # whole documents, as written
    plain = tmp_path / "plain.txt"  # no answer anywhere: answer_only would train on every token, so refused
    plain.write_text("<|endoftext|>".join(f"document {i}" for i in range(20)))
    plain_cfg = DataConfig(source=str(plain), tokenizer="byte", answer_only=True)
    with pytest.raises(VSLMError, match=r"data.answer_only: no training document of .*plain.txt has an answer"):
        training_documents(plain_cfg, prepare_corpus(plain_cfg, tmp_path))


@pytest.mark.parametrize("tokenizer", ["byte", "char"])
def test_answer_only_trains_on_the_documents_within_the_token_budget(tmp_path, tokenizer):
    """data.max_tokens stops the shards; answer_only's rows are the documents they hold, not those past it
    (whose characters a char vocabulary may not know)."""
    path = tmp_path / "qa.txt"
    docs = [f"Tom has a red ball {i}.\nQ: What color?\nA: red" for i in range(400)]
    docs += [f"Zoë has a blue ball {i}.\nQ: What color?\nA: blue" for i in range(40)]
    path.write_text("<|endoftext|>".join(docs), encoding="utf-8")
    cfg = load_config("tiny", tiny_overrides(data__source=str(path), data__tokenizer=tokenizer,
                                             data__max_tokens="15000", data__answer_only="true"))
    corpus = prepare_corpus(cfg.data, tmp_path)
    sampler = default_batches(cfg.with_vocab_size(corpus.tokenizer.vocab_size), corpus)
    assert len(sampler.rows) == len(corpus.train.doc_starts) < 300  # the budget's documents, not the file's
    rows = {corpus.tokenizer.decode(x.tolist()) for x, _ in sampler.rows}
    assert not any("Zoë" in r for r in rows)


def test_token_budget_and_streaming_pieces(tmp_path):
    text = tmp_path / "one.txt"
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(20_000)]
    text.write_text("\n".join(lines) + "\n")  # 1.2 MB: streamed in pieces of about 1 MB
    bpe = prepare_corpus(DataConfig(source=str(text), tokenizer="bpe", vocab_size=300, max_bytes=None), tmp_path)
    assert bpe.meta["documents"] == 1 and len(bpe.train.doc_starts) == 1
    whole = bpe.tokenizer.hf.encode(text.read_text()).ids  # the pieces tokenize as the whole text does
    assert np.array_equal(np.concatenate([bpe.train.tokens, bpe.val.tokens]), whole)
    assert len(bpe.train.tokens) == int(0.9 * len(whole))
    for tokenizer in ("byte", "char", "bpe"):  # char: no character past the budget is ever encoded
        vocab = {"vocab_size": 300} if tokenizer == "bpe" else {}
        budget = prepare_corpus(DataConfig(source="stories", tokenizer=tokenizer, max_tokens=12_345, **vocab), tmp_path)
        assert len(budget.train.tokens) + len(budget.val.tokens) == 12_345 and budget.meta["truncated_by_budget"]
        assert budget.meta["val_tokens"] > 0 and budget.meta["val_words"] > 0


def test_bpe_learns_from_a_single_texts_training_part_under_a_token_budget(tmp_path, monkeypatch):
    """Under data.max_tokens, a single text's validation part is the tail of the budget's tokens, not of the
    file: BPE learned from up to 8 bytes a token of the file, past where validation starts."""
    from vslm.data import shards

    text = tmp_path / "one.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(4000)))
    learned = []
    train = shards.HFTokenizer.train.__func__

    def spy(cls, texts, vocab_size):
        learned.append("".join(texts))
        return train(cls, learned[-1:], vocab_size)

    monkeypatch.setattr(shards.HFTokenizer, "train", classmethod(spy))
    corpus = prepare_corpus(DataConfig(source=str(text), tokenizer="bpe", vocab_size=300, max_tokens=2000), tmp_path)
    training_text = corpus.tokenizer.decode(corpus.train.tokens.tolist())
    assert learned and learned[0] and training_text.startswith(learned[0])


def test_a_hub_stream_is_read_once(tmp_path, monkeypatch):
    reads = []

    def stream():
        reads.append(1)
        yield from (f"Document number {i} is about a red kite and a blue ball." for i in range(300))

    monkeypatch.setattr(sources, "open_source", lambda cfg: sources.Source("fake", "hub:fake", stream, remote=True))
    monkeypatch.setattr("vslm.data.shards.open_source", sources.open_source)
    corpus = prepare_corpus(DataConfig(source="fake", tokenizer="bpe", vocab_size=300), tmp_path)
    assert reads == [1]  # learning BPE and encoding read the spool, not the stream
    assert corpus.meta["documents"] == 300 and len(corpus.val.doc_starts) == 30
    assert not (corpus.folder / "spool.bin").exists()


def test_cache_follows_a_local_copys_text(data_dir, tmp_path):
    path = data_dir / "dolma" / "part.jsonl"
    write_jsonl(path, [{"id": str(i), "text": f"document {i} " * 20} for i in range(20)])
    first = prepare_corpus(DataConfig(source="dolma", tokenizer="byte"), tmp_path)
    again = prepare_corpus(DataConfig(source="dolma", tokenizer="byte"), tmp_path)
    write_jsonl(path, [{"id": str(i), "text": f"changed {i} " * 20} for i in range(20)])
    changed = prepare_corpus(DataConfig(source="dolma", tokenizer="byte"), tmp_path)
    assert again.cache_hit and again.folder == first.folder
    assert not changed.cache_hit and changed.folder != first.folder


def test_cache_follows_an_edit_past_the_first_max_bytes_of_a_json_lines_file(tmp_path):
    """data.max_bytes counts the text read: records' other fields sit around it, so the text read comes from
    far past the file's first max_bytes raw bytes, and an edit there must build anew, not hit a stale cache."""
    import os

    path = tmp_path / "records.jsonl"
    rows = [{"meta": "x" * 500, "text": f"record {i} alpha"} for i in range(100)]
    write_jsonl(path, rows)
    cfg = DataConfig(source=str(path), tokenizer="byte", max_bytes=2000)  # ~1,600 bytes of text, 52 KB of file
    first = prepare_corpus(cfg, tmp_path)
    rows[60]["text"] = "record 60 omega"  # the same size, past the first 2,000 bytes of the file
    write_jsonl(path, rows)
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # an edit a second later (a clock tick could hide it here)
    changed = prepare_corpus(cfg, tmp_path)
    assert not changed.cache_hit and changed.folder != first.folder
    text = changed.tokenizer.decode(np.concatenate([changed.train.tokens, changed.val.tokens]).tolist())
    assert "record 60 omega" in text and "record 60 alpha" not in text


def test_tiktoken_path_encodes_like_tokenizers():
    docs = [f"Story {i}: Mia said \"héllo\" to the café ☕ at {i}:{i * 3} o'clock.\n\n  Tabs\tand  spaces. "
            for i in range(200)]
    bpe = HFTokenizer.train(docs, vocab_size=400)
    for tok in [bpe] + ([HFTokenizer.gpt2(DATA / "tokenizers/gpt2")] if (DATA / "tokenizers/gpt2").is_dir() else []):
        reference = [tok.hf.encode(d).ids for d in docs]
        assert tok.encode_batch(docs[:50]) == reference[:50]  # the first batch: checked against tokenizers
        assert tok._fast is not None
        assert tok.encode_batch(docs) == reference


# ----------------------------------------------------------------------- evaluation


class Uniform(torch.nn.Module):
    """Logits of zero: every token has probability 1 / V."""

    def __init__(self, vocab: int, context: int):
        super().__init__()
        self.cfg = type("Cfg", (), {"context": context})()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab)


def test_bits_per_byte_by_hand():
    """Byte tokens under a uniform model over 257 symbols: log2(257) bits per byte. Text 'héllo' is 6 bytes,
    6 tokens; after an end-of-text prefix the 6 targets are all text. With an end-of-text inside, it is
    a target (in the loss) but not text (not in bits per byte)."""
    tok = ByteTokenizer()
    sizes = tok.token_bytes()
    ids = np.array(tok.encode("héllo"))
    s = score_tokens(Uniform(257, context=4), ids, sizes, prefix=tok.eos_id)
    assert (s.tokens, s.bytes) == (6, 6)
    assert s.loss == pytest.approx(math.log(257)) and s.bpb == pytest.approx(math.log2(257))
    with_eos = np.concatenate([ids, [tok.eos_id], ids])
    s = score_tokens(Uniform(257, context=5), with_eos, sizes, prefix=tok.eos_id, batch_size=1)
    assert (s.tokens, s.bytes) == (13, 12)
    assert s.bpb == pytest.approx(12 * math.log2(257) / 12) and s.nll == pytest.approx(13 * math.log(257))
    # 3 tokens standing for 2, 1 and 3 bytes under a vocabulary of 8: 3 * 3 bits over 6 bytes
    s = score_tokens(Uniform(8, context=2), np.array([1, 2, 3]), np.array([0, 2, 1, 3, 1, 1, 1, 1]), prefix=0)
    assert s.bpb == pytest.approx(9 / 6)


def test_eval_word_perplexity_on_a_local_wikitext_without_the_shared_data(tmp_path, data_dir, capsys):
    """The test below reads the study group's copy; this one runs anywhere (CI without ../shared): the words are
    the articles' whitespace-separated words, counted an article at a time, and the perplexity is e to the
    text's nats per word."""
    from vslm.cli import main

    lines = [line.replace("Lobster", f"Lobster {i}").replace("Crab", f"Crab {i}") for i in range(40)
             for line in WIKI_LINES]
    write_parquet(data_dir / "wikitext-2" / "wikitext-2-raw-v1" / "validation-00000-of-00001.parquet",
                  [{"text": t} for t in lines])
    articles = documents("wikitext-2:validation")
    assert len(articles) == 80
    run = tmp_path / "run"
    assert main(["train", "tiny", "data.tokenizer=byte", "train.steps=3", "train.eval_every=0",
                 "logging.progress=false", "train.eval_windows=8", "data.max_bytes=100000", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--on", "wikitext-2", "--json"]) == 0
    wiki = json.loads(capsys.readouterr().out)["corpora"][0]
    assert wiki["split"] == "validation" and wiki["words"] == sum(len(a.split()) for a in articles) == 1200
    assert wiki["bytes"] == sum(len(a.encode()) for a in articles)
    nats = wiki["bpb"] * math.log(2) * wiki["bytes"]
    assert wiki["word_perplexity"] == pytest.approx(math.exp(nats / wiki["words"]), rel=1e-9)
    assert 1 < wiki["word_perplexity"] < math.exp(math.log(257) * wiki["bytes"] / wiki["words"]) * 2


@needs_shared
def test_eval_reports_word_perplexity_on_wikitext(tmp_path, capsys):
    from vslm.cli import main

    run = tmp_path / "run"
    assert main(["train", "tiny", "data.tokenizer=byte", "train.steps=3", "train.eval_every=0",
                 "logging.progress=false", "train.eval_windows=8", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--on", "wikitext-2", "stories", "--json"]) == 0
    wiki, stories = json.loads(capsys.readouterr().out)["corpora"]
    text = (DATA / "wikitext-2" / "wiki.valid.tokens").read_text()
    assert wiki["split"] == "validation" and wiki["words"] == len(text.split()) == 213_886
    # bytes: the articles' text (the blank lines and spaces between articles are not part of them)
    assert 0.99 * len(text.encode()) < wiki["bytes"] <= len(text.encode())
    nats = wiki["bpb"] * math.log(2) * wiki["bytes"]
    assert wiki["word_perplexity"] == pytest.approx(math.exp(nats / wiki["words"]), rel=1e-9)
    assert stories["split"] == "train, held out" and "word_perplexity" not in stories
    held_out = prepare_corpus(DataConfig(source="stories", max_bytes=300_000, tokenizer="byte"))
    assert stories["tokens"] == len(held_out.val.tokens)  # the documents the run held out
    # the table, with the note on which release was read, once per corpus
    assert main(["eval", str(run), "--on", "wikitext-2", "wikitext-2:test", "--max-bytes", "20000"]) == 0
    assert capsys.readouterr().out.count("wikitext-2: the local wiki.*.tokens files are the tokenized") == 1


def test_eval_max_bytes_help_says_what_it_reads(tmp_path, capsys):
    """An evaluation scores a whole split or file; only a training corpus's held-out part follows the run's
    data.max_bytes. The help said the run's limit for all."""
    from vslm.cli import main
    from vslm.eval.corpus import eval_data

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--on: corpus text read at most (default: all of an evaluation split or a file; the run's "
            "data.max_bytes for a corpus's held-out documents)") in help_text
    path = tmp_path / "corpus.txt"
    path.write_text("some text " * 100)
    run_data = DataConfig(max_bytes=1000)
    assert eval_data(str(path), run_data)[0].max_bytes is None  # a file: all of it
    assert eval_data("stories", run_data)[0].max_bytes == 1000  # held out: as the run read it
    assert eval_data(str(path), run_data, 500)[0].max_bytes == 500


def test_eval_reads_json_lines_of_another_field_with_text_field(tmp_path, capsys):
    """A run trained on records whose text is under 'content' evaluated on a file whose text is under 'text':
    the error named data.text_field, which eval could not set; --text-field sets it."""
    from vslm.cli import main

    write_jsonl(tmp_path / "train.jsonl", [{"content": f"record {i}: the cat sat on the mat."} for i in range(300)])
    write_jsonl(tmp_path / "other.jsonl", [{"text": f"note {i}: the cat sat on the mat."} for i in range(50)])
    assert main(["train", "tiny", f"data.source={tmp_path / 'train.jsonl'}", "data.text_field=content",
                 "train.steps=2", "logging.progress=false", "train.eval_windows=2", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--on", str(tmp_path / "other.jsonl")]) == 1
    assert "has no field 'content' (the text is content); give --text-field (text_field= in Python), the field " \
           "holding the text" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "r"), "--on", str(tmp_path / "other.jsonl"), "--text-field", "text",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corpora"][0]["tokens"] > 1000


def test_eval_on_the_runs_own_file_or_corpus_scores_what_the_run_held_out(tmp_path, capsys, monkeypatch):
    """`--on` the file a run trained on scored all of it, its training text too; `--on` its corpus dropped the
    run's token budget, so the 'held out' text was not the run's. Both now score the run's own held-out part."""
    from vslm.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("".join(f"line {i}: the cat sat on the mat.\n" for i in range(3000)))
    for source, run in (("mine.txt", "a"), ("stories", "b")):
        assert main(["train", "tiny", f"data.source={source}", "data.max_tokens=20000", "train.steps=2",
                     "logging.progress=false", "train.eval_windows=2", "--out", run]) == 0
        held = json.loads((tmp_path / run / "summary.json").read_text())["val_tokens"]
        capsys.readouterr()
        assert main(["eval", run, "--on", source, "--json"]) == 0
        scored = json.loads(capsys.readouterr().out)["corpora"][0]
        assert held - 1 <= scored["tokens"] <= held and scored["split"].endswith("held out"), (source, scored, held)
        # --max-bytes caps the held-out text scored, never moves it (a shorter read would hold out other text)
        assert main(["eval", run, "--on", source, "--max-bytes", "1000", "--json"]) == 0
        capped = json.loads(capsys.readouterr().out)["corpora"][0]
        assert 900 <= capped["bytes"] <= 1000 and capped["tokens"] < scored["tokens"]
        assert capped["words"] < scored["words"]  # the words of the text scored (word perplexity's denominator)
        assert main(["eval", run, "--on", source, "--max-bytes", "1"]) == 2  # under 2 tokens: nothing to score
        assert "--max-bytes 1 (max_bytes= in Python) holds fewer than 2 tokens" in capsys.readouterr().err
    # another spelling of the run's own corpus, and a folder of the same name: own only for the same corpus
    from vslm.eval.corpus import eval_data

    run_data = DataConfig(source="tinyshakespeare", max_tokens=5000)
    assert eval_data("tinyshakespeare:train", run_data)[0].max_tokens == 5000
    on_valid = DataConfig(source="tinystories:validation", max_tokens=5000)  # trained on an evaluation split: its
    assert eval_data("tinystories", on_valid)[:3:2] == (on_valid, "validation")  # held-out part, not all of it
    assert eval_data("tinystories", DataConfig(source="tinystories"))[1] is True  # the train split's run: all
    (tmp_path / "stories").mkdir()
    assert eval_data("./stories", DataConfig(source="stories", max_tokens=5000))[0].max_tokens is None


def test_eval_knows_the_runs_own_file_from_any_folder_and_counts_words_a_document_at_a_time(tmp_path, capsys,
                                                                                            monkeypatch):
    """A run trained on a relative path, evaluated on that file from another folder, scored all of it (its
    training text too): the run's relative path was read from the current folder. Its recorded data identity
    now tells its own text. --max-bytes counted words on the decoded stream, which joins the words either side
    of a document boundary (end-of-text decodes to nothing)."""
    from vslm.cli import main

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    docs = [" ".join(f"w{(d * 7 + i) % 50}" for i in range(40)) for d in range(60)]
    (tmp_path / "work" / "docs.txt").write_text("<|endoftext|>".join(docs))  # no space at a boundary
    assert main(["train", "tiny", "data.source=docs.txt", "data.tokenizer=byte", "data.max_bytes=none",
                 "train.steps=2", "logging.progress=false", "train.eval_windows=2", "--out", "run"]) == 0
    held = json.loads((tmp_path / "work" / "run" / "summary.json").read_text())["val_tokens"]
    capsys.readouterr()
    results = {}
    for where, run, on in (("work", "run", "docs.txt"), ("", "work/run", "work/docs.txt")):
        monkeypatch.chdir(tmp_path / where)
        for cap in ([], ["--max-bytes", "100000000"]):
            assert main(["eval", run, "--on", on, "--json", *cap]) == 0
            results[where, bool(cap)] = json.loads(capsys.readouterr().out)["corpora"][0]
    for scored in results.values():  # the run's held-out documents only, from either folder, capped or not
        assert held - 1 <= scored["tokens"] <= held and scored["split"] == "all, held out", (scored, held)
    words = {r["words"] for r in results.values()}
    assert len(words) == 1 and words.pop() % 40 == 0  # whole documents of 40 words: none joined at a boundary
    # touched since (a checkout rewrites modification times): its own file still, from any folder, and said
    os.utime(tmp_path / "work" / "docs.txt")
    for where, run, on in (("work", "run", "docs.txt"), ("", "work/run", "work/docs.txt")):
        monkeypatch.chdir(tmp_path / where)
        assert main(["eval", run, "--on", on, "--json"]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["corpora"][0]["split"] == "all, held out"
        assert f"note: {on} changed since the run trained on it" in out.err


def test_eval_on_a_generated_corpus_from_a_run_without_a_byte_limit(tmp_path, capsys):
    """A run trained with data.max_bytes=none, evaluated on the stories or the repeats: a pydantic traceback (a
    generated corpus needs an end). Scored now at the default size; a split the corpus lacks is a config error,
    not the stories' held-out part under that label."""
    from vslm.cli import main

    (tmp_path / "docs.txt").write_text("<|endoftext|>".join(f"document {d}: the cat sat." for d in range(200)))
    assert main(["train", "tiny", f"data.source={tmp_path / 'docs.txt'}", "data.tokenizer=byte",
                 "data.max_bytes=none", "train.steps=2", "logging.progress=false", "train.eval_windows=2",
                 "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--on", "repeats", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)["corpora"][0]
    assert scored["split"] == "train, held out" and scored["tokens"] > 100_000
    assert main(["eval", str(tmp_path / "r"), "--on", "stories:bogus"]) == 2
    assert "data source 'stories:bogus': stories is generated" in capsys.readouterr().err


def test_repeats_without_a_byte_limit_are_endless(tmp_path):
    """data.max_bytes=none with a token budget stopped the repeats at a hidden 4 MB (and said they 'ran out'); a
    generated corpus runs until the budget stops it, as the stories do."""
    from itertools import islice

    from vslm.data.repeats import iter_repeats

    endless = list(islice(iter_repeats(3), 1400))
    assert sum(len(d) + 1 for d in endless) > 4_100_000  # past the old cap
    assert endless[:10] == list(islice(iter_repeats(3, n_bytes=10**9), 10))  # the same text, without the end
    assert open_source(DataConfig(source="repeats", max_bytes=None, max_tokens=100)).identity.endswith("endless")


def test_cache_follows_the_formatters_code(data_dir, tmp_path, monkeypatch):
    """A change to how records become documents (here the size of a book's parts) builds anew."""
    from vslm.data import registry

    (data_dir / "gutenberg").mkdir()
    (data_dir / "gutenberg" / "book.txt").write_text("\n\n".join("A paragraph of a book. " * 50 for _ in range(40)))
    first = prepare_corpus(DataConfig(source="books", tokenizer="byte"), tmp_path)
    monkeypatch.setattr(registry, "BOOK_PART", 4_000)
    smaller = prepare_corpus(DataConfig(source="books", tokenizer="byte"), tmp_path)
    assert not smaller.cache_hit and smaller.meta["documents"] > first.meta["documents"]
