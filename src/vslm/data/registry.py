"""The dataset registry: the named corpora, where each comes from, under which license, how its
records become documents.

A name stands for one corpus in two places: on the Hugging Face hub (streamed through `datasets`)
and in a local data folder laid out like the study group's `shared/data/` (`sources.data_dirs`:
`$VSLM_DATA_DIR`, ~/.cache/vslm/data, shared/data beside the checkout). Both give records in the
hub's schema, and one function per corpus (`documents`) turns records into documents, so a local
copy and the hub give the same text.

A local copy is either the corpus's own files (the hub repository's parquet or JSON lines files
under `<data dir>/<folder>/`, e.g. after `huggingface-cli download --local-dir`), or the classic
release files named in `local` (WikiText's `wiki.valid.tokens`, SQuAD's `dev-v1.1.json`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from vslm.config import GENERATED_SOURCES

Records = Iterable[dict]
Formatter = Callable[[Records], Iterator[str]]


def text_field(name: str) -> Formatter:
    """Documents are one field of each record, skipping empty ones."""

    def documents(records: Records) -> Iterator[str]:
        for r in records:
            text = r.get(name)
            if text is None:
                raise KeyError(name) if name not in r else TypeError(f"its field {name!r} is null, not text")
            if text.strip():
                yield text

    return documents


PLAIN = text_field("text")  # the default: a record's (or a text file's) text is the document

WIKI_TITLE = re.compile(r"^ = [^=].* = $")  # ' = Homarus gammarus = ': a top-level heading starts an article


def wikitext_articles(records: Records) -> Iterator[str]:
    """WikiText's records are lines (as on the hub: one row per line, blank lines as ''); an article
    runs from one top-level heading to the next."""
    lines: list[str] = []
    for r in records:
        line = r["text"]
        if WIKI_TITLE.match(line.rstrip("\n")) and any(x.strip() for x in lines):
            yield "".join(lines).strip()
            lines = []
        lines.append(line if line.endswith("\n") else line + "\n")
    if any(x.strip() for x in lines):
        yield "".join(lines).strip()


def squad_documents(records: Records) -> Iterator[str]:
    """One document per question: the context, the question, the answer text. Takes the hub's flat
    rows ({context, question, answers: {text: [...]}}) or the original nested JSON's articles
    ({title, paragraphs: [{context, qas: [{question, answers: [{text}]}]}]})."""
    for r in records:
        if "paragraphs" in r:
            for p in r["paragraphs"]:
                for qa in p["qas"]:
                    yield squad_text(p["context"], qa["question"], [a["text"] for a in qa.get("answers") or []])
        else:
            yield squad_text(r["context"], r["question"], list((r.get("answers") or {}).get("text") or []))


def squad_text(context: str, question: str, answers: list[str]) -> str:
    answer = answers[0] if answers else "unanswerable"  # SQuAD 2.0 has questions without an answer
    return f"{context.strip()}\nQuestion: {question.strip()}\nAnswer: {answer.strip()}"


GUTENBERG_START = re.compile(r"^[ \t]*\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^[ \t]*\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


BOOK_PART = 32_000  # characters: books are cut into parts of about this size at paragraph breaks


def gutenberg_books(records: Records) -> Iterator[str]:
    """Books without Project Gutenberg's licence header and footer (where a file still has them;
    PG-19's texts are without), with Windows line ends made plain newlines, cut into parts: at the
    first blank line after BOOK_PART characters, or at a line end after 4 x BOOK_PART in a text that
    has no blank lines for that long (a Bible of one verse a line).

    Parts, not whole books, are the documents: the held-out documents are a tenth of the documents,
    and a tenth of a few books is a tenth of the text only when the documents are of similar size."""
    for r in records:
        text = r["text"].replace("\r\n", "\n").lstrip("\ufeff")
        if start := GUTENBERG_START.search(text):
            text = text[start.end():]
        if end := GUTENBERG_END.search(text):
            text = text[: end.start()]
        part: list[str] = []
        size = 0
        for line in text.strip("\n").splitlines(keepends=True):
            if size >= 4 * BOOK_PART or (size >= BOOK_PART and not line.strip()):
                yield "".join(part).strip("\n")
                part, size = [], 0
            part.append(line)
            size += len(line)
        if "".join(part).strip():
            yield "".join(part).strip("\n")


@dataclass(frozen=True)
class Entry:
    """One named corpus."""

    name: str
    title: str
    hub: str | None  # Hugging Face dataset repository; None: no hub copy
    hub_config: str | None
    license: str
    text: str  # the field(s) the text is made of, as `vslm data list` shows it
    folder: str  # under a data folder: the hub's files in any sub-folder, and the classic files below
    local: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> classic files' globs in a data folder
    documents: Formatter = PLAIN
    lines: bool = False  # local text files hold one record per line (WikiText)
    json_field: str | None = None  # local .json files keep their records under this key (SQuAD's "data")
    eval_split: str | None = None  # what `vslm eval --on NAME` reads; None: the held-out part of train
    word_perplexity: bool = False  # a word-level benchmark: `vslm eval` reports word perplexity
    note: str = ""

    def patterns(self, split: str) -> tuple[str, ...]:
        """Local files of a split, most specific first: the hub's file names, then the classic ones."""
        hub = tuple(f"{self.folder}/**/{split}-*.{ext}" for ext in ("parquet", "jsonl", "jsonl.gz", "json"))
        return hub + self.local.get(split, ())


def _wikitext(size: str) -> Entry:
    folder = f"wikitext-{size}"
    return Entry(
        name=folder, title=f"WikiText-{size}: Wikipedia Good and Featured articles, one document per article",
        hub="Salesforce/wikitext", hub_config=f"wikitext-{size}-raw-v1", license="CC-BY-SA-3.0 and GFDL",
        text="text (one row per line, grouped into articles)", folder=folder,
        local={s: (f"{folder}/wiki.{short}.raw", f"{folder}/wiki.{short}.tokens")
               for s, short in (("train", "train"), ("validation", "valid"), ("test", "test"))},
        documents=wikitext_articles, lines=True, eval_split="validation", word_perplexity=True,
        note="the local wiki.*.tokens files are the tokenized release (<unk>, @-@); the hub's config is raw",
    )


ENTRIES: tuple[Entry, ...] = (
    Entry(name="stories", title="the embedded generator of children's stories (data.seed, data.max_bytes)",
          hub=None, hub_config=None, license="MIT (generated by vslm)", text="-", folder="-"),
    Entry(name="repeats", title="generated random strings, each written twice on its line: copying pays "
          "(data.seed, data.max_bytes; the induction control)",
          hub=None, hub_config=None, license="MIT (generated by vslm)", text="-", folder="-"),
    Entry(name="tinystories", title="TinyStories: short stories written by GPT-3.5/4 in a 3-year-old's vocabulary",
          hub="roneneldan/TinyStories", hub_config=None, license="CDLA-Sharing-1.0", text="text", folder="tinystories",
          local={"train": ("tinystories/TinyStories-train.txt", "tinystories/TinyStoriesV2-GPT4-train.txt"),
                 "validation": ("tinystories/TinyStories-valid.txt", "tinystories/TinyStoriesV2-GPT4-valid.txt",
                                "tinystories/*validation*.txt")},
          eval_split="validation"),
    Entry(name="openwebtext", title="OpenWebText: the open replication of GPT-2's WebText (Reddit-linked pages)",
          hub="Skylion007/openwebtext", hub_config=None, license="CC0-1.0", text="text", folder="openwebtext",
          local={"train": ("openwebtext/*.jsonl", "openwebtext/*.jsonl.gz", "openwebtext/*.parquet",
                           "openwebtext/*.txt")}),
    Entry(name="books", title="Books: PG-19 (Project Gutenberg books before 1919), in parts of about 32k characters",
          hub="emozilla/pg19", hub_config=None, license="Apache-2.0 (PG-19); the books are public domain",
          text="text", folder="pg19",
          local={"train": ("pg19/train/*.txt", "gutenberg/**/*.txt"), "validation": ("pg19/validation/*.txt",),
                 "test": ("pg19/test/*.txt",)},
          documents=gutenberg_books, eval_split="validation",
          note="hub: a parquet copy of deepmind/pg19 (whose loading script datasets >= 4 no longer runs); "
               "local: PG-19's files under pg19/, else any Project Gutenberg .txt under gutenberg/"),
    _wikitext("2"),
    _wikitext("103"),
    Entry(name="dolma", title="Dolma: AI2's 3T-token pretraining mix (web, code, papers, books), v1.6 sample",
          hub="devingulliver/dolma-v1_6-sample", hub_config=None, license="ODC-By-1.0", text="text", folder="dolma",
          local={"train": ("dolma/*.jsonl", "dolma/*.jsonl.gz", "dolma/*.json.gz", "dolma/*.parquet")},
          note="hub: a parquet copy of allenai/dolma's v1_6-sample config (allenai/dolma needs a loading script)"),
    Entry(name="squad", title="SQuAD 1.1: questions on Wikipedia paragraphs, as 'context, question, answer' text",
          hub="rajpurkar/squad", hub_config="plain_text", license="CC-BY-SA-4.0",
          text="context + question + answers.text[0]", folder="squad",
          local={"train": ("squad/train-v1.1.json", "squad/train-v2.0.json"),
                 "validation": ("squad/dev-v1.1.json", "squad/dev-v2.0.json")},
          documents=squad_documents, json_field="data", eval_split="validation"),
    Entry(name="tinyshakespeare", title="tiny Shakespeare: 1 MB of Shakespeare's plays, one text (char-rnn's)",
          hub="karpathy/tiny_shakespeare", hub_config=None, license="public domain", text="text",
          folder="tinyshakespeare", local={"train": ("tinyshakespeare/input.txt",)}),
)

REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}
GENERATED = GENERATED_SOURCES  # made by vslm, from data.seed and data.max_bytes: nothing to download


def split_name(source: str) -> tuple[Entry | None, str | None]:
    """'wikitext-2:test' -> (the wikitext-2 entry, 'test'); 'tinystories' -> (entry, None); a path -> (None, None)."""
    name, _, split = source.partition(":")
    entry = REGISTRY.get(name)
    if entry is None:
        return None, None
    return entry, split or None
