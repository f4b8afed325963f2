"""Where text comes from: the embedded story generator, the registry's corpora (a local copy or the
Hugging Face hub), and local files and folders by path.

A source yields documents (strings), one at a time, so that a corpus of any size passes through
in constant memory, and an `identity` string that changes whenever its text would change; the
shard cache is keyed by it. `documents()` may be called more than once (the shard builder reads
a corpus twice when it learns a tokenizer first); each call starts from the beginning.

Local files: plain text (one document per file, or documents separated by `<|endoftext|>`),
JSON lines (records, read line by line here, so that a bad line is named by its line number), JSON
documents and parquet (records, through `datasets`), or a folder of them. A single plain text file
without separators is one text, streamed in pieces and split at the token level; JSON and parquet
records become documents through the registry entry's formatter, or their `data.text_field` when
given by path.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vslm.config import DataConfig
from vslm.data import stories
from vslm.data.registry import GENERATED, PLAIN, REGISTRY, Entry, Formatter, split_name, text_field
from vslm.data.tokenizer import EOS
from vslm.errors import ConfigError, VSLMError, did_you_mean

SOURCE_FORMAT = 3  # bump when the documents a source yields for the same files change
PIECE = 1 << 20  # bytes of a single text read at a time
TEXT_SUFFIXES = (".txt", ".text", ".md", ".tokens", ".raw")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class Source:
    name: str
    identity: str
    documents: Callable[[], Iterator[str]]
    single_text: bool = False  # one text in pieces: no end-of-text inside, split at the token level
    size_bytes: int | None = None  # the text's size when known before reading it
    remote: bool = False  # streamed from the hub: the shard builder reads it once, into a spool
    split: str | None = None  # a registry corpus's split ("train", "validation", ...)
    entry: Entry | None = None
    stopped_at_max_bytes: bool = False  # set by documents() when data.max_bytes stopped it short of the text's end


def data_dirs() -> list[Path]:
    """Folders searched for named corpora: $VSLM_DATA_DIR, then ~/.cache/vslm/data, then the study group's
    shared/data beside the checkout this package runs from (an editable install), then ../shared/data from
    the current folder; absolute, each once."""
    dirs = [Path(os.environ["VSLM_DATA_DIR"])] if os.environ.get("VSLM_DATA_DIR") else []
    checkout = Path(__file__).resolve().parents[3]  # src/vslm/data/sources.py -> the checkout (or site-packages/..)
    dirs += [Path.home() / ".cache" / "vslm" / "data", checkout.parent / "shared" / "data", Path("../shared/data")]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE)


PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
RESOLVE_WAIT_S = 3.0


def hub_unresolvable() -> str | None:
    """The hub's host name (HF_ENDPOINT's, else huggingface.co) where it does not resolve: no connection would
    reach it, and the hub library would retry five times (about 25 s) before saying so. None where it resolves,
    where a proxy resolves names for us (a *_PROXY variable), or where the answer takes over RESOLVE_WAIT_S
    (the hub library then tries, and says what it finds)."""
    if any(os.environ.get(v) for v in PROXIES):
        return None
    import socket
    import threading
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint if "//" in endpoint else "//" + endpoint).hostname  # a mirror given without a scheme
    if not host:
        return None
    answer: list[bool] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except Exception:  # socket.gaierror: the name is not known, no resolver answers; UnicodeError: a bad name
            answer.append(False)

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(RESOLVE_WAIT_S)
    return host if answer == [False] else None


def open_source(cfg: DataConfig) -> Source:
    """The source `cfg.source` names: 'stories' or 'repeats' (generated), a registry name (NAME or NAME:SPLIT),
    or a path."""
    _note_shadowed(cfg.source)
    if cfg.source == "stories":
        identity = f"stories:v{stories.GENERATOR_VERSION}:seed={cfg.seed}:bytes={cfg.max_bytes}"
        if cfg.copying.active():  # invented names, packing lists, songs: data/copying.py
            from vslm.data import copying

            return Source("stories", identity + copying.identity(cfg.copying),
                          lambda: copying.copying_stories(cfg.seed, cfg.copying, n_bytes=cfg.max_bytes,
                                                          endless=cfg.max_bytes is None))
        if cfg.max_bytes is None:  # endless: the token budget stops it
            return Source("stories", identity, lambda: _endless_stories(cfg.seed))
        return Source("stories", identity, lambda: stories.iter_stories(cfg.seed, n_bytes=cfg.max_bytes))
    if cfg.source == "repeats":  # random strings written twice: data/repeats.py
        from vslm.data import repeats

        size = "endless" if cfg.max_bytes is None else f"bytes={cfg.max_bytes}"  # endless: the token budget stops it
        return Source("repeats", f"repeats:v{repeats.REPEATS_VERSION}:seed={cfg.seed}:{size}",
                      lambda: repeats.iter_repeats(cfg.seed, cfg.max_bytes))
    entry, split = split_name(cfg.source)
    if entry is not None:
        return open_entry(entry, split or "train", cfg)
    path = _source_path(cfg)
    files = _folder_files(path) if path.is_dir() else [path]
    return _files_source(str(path), files, text_field(cfg.text_field), cfg, field_name=cfg.text_field)


def _note_shadowed(source: str) -> None:
    """A registry or generated corpus's name is the corpus, whatever file or folder of that name lies here: said
    once on stderr, with the way to the folder (./NAME)."""
    if source in _NOTED or not Path(source).exists() or "/" in source or (Path(source) / "config.toml").exists():
        return  # nothing of that name here, or a run folder (`--out stories`): no data to point at
    if source in ("stories", "repeats") or split_name(source)[0] is not None:
        _NOTED.add(source)
        if os.environ.get("RANK", "0") == "0":
            print(f"note: data.source={source} is the corpus of that name (`vslm data list`), not ./{source} here; "
                  f"data.source=./{source} reads that", file=sys.stderr)


def check_source(cfg: DataConfig) -> None:
    """Raise what open_source would for a source that cannot be read: a name typed wrong, a split the corpus
    lacks, a corpus with no copy to read. No file is read and nothing is downloaded: an experiment checks
    every corpus this way before its first run trains."""
    if cfg.source in GENERATED:
        return
    entry, split = split_name(cfg.source)
    if entry is None:
        if (path := _source_path(cfg)).is_dir():
            _folder_files(path)  # lists the folder, reads no file
    elif entry.name in GENERATED:
        _check_generated_split(entry, split or "train")
    else:
        _entry_files(entry, split or "train", cfg)


def _source_path(cfg: DataConfig) -> Path:
    path = Path(cfg.source).expanduser()
    if not path.exists():
        names = ", ".join(REGISTRY)
        # a name typed wrong is a config error (exit 2), as an unknown field is; files that do not read exit 1
        here = "" if path.is_absolute() or not ("/" in cfg.source or path.suffix) else \
            f" here ({Path.cwd()}: a relative path is read from the folder a command runs in, a run's too)"
        raise ConfigError(f"unknown data source '{cfg.source}'{did_you_mean(cfg.source, REGISTRY)}: not a file or "
                          f"folder{here}, nor one of {names} (see `vslm data list`)")
    return path


def _endless_stories(seed: int) -> Iterator[str]:
    import random

    rng = random.Random(seed)
    while True:
        yield stories.generate_story(rng)


# ------------------------------------------------------------------------------------ registry


def local_files(entry: Entry, split: str) -> list[Path] | None:
    """The files of a split in the first data folder that has any, by the first pattern that matches."""
    for d in data_dirs():
        for pattern in entry.patterns(split):
            files = sorted(p for p in d.glob(pattern) if p.is_file())
            if files:
                return files
    return None


SPLITS = ("train", "validation", "test")  # the registry's corpora's splits, local or on the hub


def local_splits(entry: Entry) -> list[str]:
    return [s for s in SPLITS if local_files(entry, s)]


def open_entry(entry: Entry, split: str, cfg: DataConfig) -> Source:
    if entry.name in GENERATED:
        _check_generated_split(entry, split)
        return open_source(cfg.model_copy(update={"source": entry.name}))
    label = entry.name if split == "train" else f"{entry.name}:{split}"
    files = _entry_files(entry, split, cfg)
    if files:
        source = _files_source(label, files, entry.documents, cfg, entry=entry)
        source.split, source.entry = split, entry
        return source
    identity = (f"hub:{entry.hub}:{entry.hub_config}:{split}:v{SOURCE_FORMAT}:{code_hash(entry.documents)}:"
                f"bytes={cfg.max_bytes}")
    source = Source(label, identity, lambda: _within(_hub_documents(entry, split), cfg.max_bytes, source),
                    remote=True, split=split, entry=entry)
    return source


def _check_generated_split(entry: Entry, split: str) -> None:
    if split != "train":  # a name typed wrong is a config error, before anything is read or downloaded
        raise ConfigError(f"data source '{entry.name}:{split}': {entry.name} is generated, one text without "
                          "splits (its validation is the held-out part: data.val_fraction)")


def _entry_files(entry: Entry, split: str, cfg: DataConfig) -> list[Path] | None:
    """A registry corpus's local files for `split` (None: it streams from the hub); a split it lacks is a
    ConfigError, a split with neither a local copy nor the hub to read from a VSLMError."""
    if split not in (known := (*SPLITS, *(s for s in entry.local if s not in SPLITS))):
        raise ConfigError(f"data source '{entry.name}:{split}': no split '{split}'"
                          f"{did_you_mean(split, known, entry.name + ':')}; {entry.name} has "
                          f"{', '.join(f'{entry.name}:{s}' for s in known)}")
    files = local_files(entry, split) if cfg.origin != "hub" else None
    if not files and (cfg.origin == "local" or offline() or entry.hub is None):
        why = ("data.origin = local" if cfg.origin == "local" else "it has no hub copy" if entry.hub is None
               else "offline (HF_HUB_OFFLINE is set)")
        raise VSLMError(_no_local_copy(entry, split, why))
    return files or None


def _no_local_copy(entry: Entry, split: str, why: str) -> str:
    """No local copy of a corpus's split, and `why` the hub is not read: the files looked for, where, the
    splits that are here, and the ways on."""
    looked = ", ".join(entry.patterns(split)[4:] or entry.patterns(split)[:1])
    others = [s for s in local_splits(entry) if s != split]
    hint = (f"the local splits are {', '.join(f'{entry.name}:{s}' for s in others)} (data.source=NAME:SPLIT); "
            if others else "")
    return (f"data source '{entry.name}': no local copy of its {split} split ({looked}) in "
            f"{', '.join(str(d) for d in data_dirs())}, and {why}; {hint}"
            f"put the files under $VSLM_DATA_DIR/{entry.folder}/, train on a file by its path, or go online")


def _hub_documents(entry: Entry, split: str) -> Iterator[str]:
    """The corpus's records streamed from the hub (only where no local copy is, and its shards are not cached)."""
    if host := hub_unresolvable():
        raise VSLMError(_no_local_copy(entry, split, f"the Hugging Face hub cannot be reached ({host} does not "
                                                     "resolve)"))
    datasets = _datasets()
    try:
        records = datasets.load_dataset(entry.hub, entry.hub_config, split=split, streaming=True)
        yield from _formatted(entry.documents, _Numbered(enumerate(records, 1), "record"), entry.name, entry.text)
    except VSLMError:
        raise
    except Exception as e:  # network, authentication, a renamed repository: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise VSLMError(f"data source '{entry.name}': streaming {entry.hub} ({split}) from the Hugging Face hub "
                        f"failed ({type(e).__name__}: {first[:200]}); check the connection, or put a local copy "
                        f"under $VSLM_DATA_DIR/{entry.folder}/") from None


def _datasets():
    import datasets  # a dependency, imported here only because it takes a second to import

    datasets.disable_progress_bars()
    return datasets


# --------------------------------------------------------------------------------------- files


_NOTED: set[Path | str] = set()  # folders whose skipped files, names whose shadowed folder were said (once a process)


def _folder_files(folder: Path) -> list[Path]:
    """The text, JSON and parquet files under folder, sorted, every one whatever split its name says; hidden
    files and folders (.ipynb_checkpoints/, .cache/, .git/) are not read. Files of other kinds are skipped,
    said once on stderr."""
    found = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    files = [p for p in found if _kind(p) is not None]
    others = [p for p in found if _kind(p) is None]
    if not files:
        raise VSLMError(f"data folder {folder} holds no text, JSON lines or parquet files")
    if others and folder.resolve() not in _NOTED and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 says it
        _NOTED.add(folder.resolve())
        print(f"note: data folder {folder}: {len(others):,} file{'s' * (len(others) > 1)} of other kinds skipped "
              f"(e.g. {others[0].relative_to(folder)}); it reads {', '.join(TEXT_SUFFIXES)}, JSON lines / JSON and "
              "parquet files", file=sys.stderr)
    return files


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _files_source(label: str, files: list[Path], formatter: Formatter, cfg: DataConfig,
                  entry: Entry | None = None, field_name: str | None = None) -> Source:
    """Documents from local files, in order, at most cfg.max_bytes of them."""
    reader = f"{entry.name}:{code_hash(entry.documents)}" if entry else f"field={field_name}"
    identity = _files_identity(files, cfg.max_bytes, reader)
    kinds = [_kind(f) or "text" for f in files]  # a file given by path is text whatever its name
    lines = entry is not None and entry.lines
    plain = entry is None or entry.documents is PLAIN
    if len(files) == 1 and kinds[0] == "text" and plain and not lines and not _has_separator(files[0], cfg.max_bytes):
        size = files[0].stat().st_size if cfg.max_bytes is None else min(cfg.max_bytes, files[0].stat().st_size)
        return Source(label, identity, lambda: _text_pieces(files[0], cfg.max_bytes), single_text=True,
                      size_bytes=size, stopped_at_max_bytes=size < files[0].stat().st_size)
    what = entry.text if entry else field_name or "text"

    def documents() -> Iterator[str]:
        for path, kind in zip(files, kinds, strict=True):
            if kind == "text":
                records: Iterable[dict] = (_line_records(path) if lines else
                                           ({"text": d} for d in _text_documents(path, cfg.max_bytes)))
                if entry is None:  # by path: the text is the document, whatever the text field
                    yield from (r["text"] for r in records)
                    continue
            else:
                records = _file_records(path, kind, entry.json_field if entry else None)
            yield from _formatted(formatter, records, str(path), what)

    source = Source(label, identity, lambda: _within(documents(), cfg.max_bytes, source))
    return source


def code_hash(formatter: Formatter) -> str:
    """A hash of the formatter's source and of the constants it reads (BOOK_PART, the regexes): editing
    how records become documents changes the cache key."""
    try:
        source = inspect.getsource(formatter)
    except (OSError, TypeError):  # no source to read (a frozen install): the version number alone
        return "nosource"
    names = getattr(formatter, "__code__", None)
    constants = [repr(formatter.__globals__[n]) for n in (names.co_names if names else ())
                 if isinstance(formatter.__globals__.get(n), int | float | str | re.Pattern)]
    return hashlib.sha256("\0".join([source, *constants]).encode()).hexdigest()[:12]


def _files_identity(files: list[Path], max_bytes: int | None, reader: str) -> str:
    """A hash of the files' names, sizes, modification times and first max_bytes of contents, and of how
    they are read."""
    h = hashlib.sha256(f"v{SOURCE_FORMAT}:{reader}:bytes={max_bytes}".encode())
    left = max_bytes
    for f in files:
        # max_bytes counts the text read, not the raw bytes it comes from: JSON lines and parquet records hold
        # fields around the text, a gzip file is compressed, blank documents and separators are dropped, so
        # reading may go well past a file's first max_bytes raw bytes. Where it stops is known only once read;
        # hashing every byte would read a multi-GB file at each open. Its size and mtime_ns (a stat) change
        # with an edit anywhere in it: at worst, a file touched or edited past what is read builds anew.
        stat = f.stat()
        h.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with open(f, "rb") as fh:
            while left is None or left > 0:
                block = fh.read(PIECE if left is None else min(PIECE, left))
                if not block:
                    break
                h.update(block)
                left = None if left is None else left - len(block)
    return f"files:{h.hexdigest()}"


class _Numbered:
    """Records that remember where the last one handed out came from ("line 3", "record 3"), so that an
    error raised while formatting it can name it."""

    def __init__(self, numbered: Iterable[tuple[int, dict]], unit: str):
        self._numbered, self._unit, self.at = iter(numbered), unit, ""

    def __iter__(self) -> _Numbered:
        return self

    def __next__(self) -> dict:
        number, record = next(self._numbered)
        self.at = f"{self._unit} {number}"
        return record


def _file_records(path: Path, kind: str, json_field: str | None) -> _Numbered:
    """Records of a JSON lines / JSON / parquet file, numbered: JSON lines by line (read here), the rest by
    record (streamed through `datasets`)."""
    if kind == "json" and _is_json_lines(path, json_field):
        return _Numbered(_json_lines(path), "line")
    return _Numbered(enumerate(_datasets_records(path, kind, json_field), 1), "record")


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _is_json_lines(path: Path, json_field: str | None) -> bool:
    """A .jsonl / .ndjson file, or a .json file whose first non-blank line is a whole JSON object (not a
    JSON document, such as SQuAD's, whose records sit under `json_field`)."""
    if path.name.lower().endswith(JSON_LINES_SUFFIXES):
        return True
    if json_field:
        return False
    try:
        with _open_bytes(path) as f:
            first = next((line for line in f if line.strip()), b"")
        return isinstance(json.loads(first.decode("utf-8").removeprefix("\ufeff")), dict)
    except (OSError, EOFError, ValueError):  # not gzip, not UTF-8, not one object a line: `datasets` decides
        return False


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON lines file, blank lines skipped, in constant memory. Read here, not
    through `datasets`: a bad line is one error naming its line number in the file (Arrow counts rows
    from 0 within a block, and `datasets` logs a second line of its own)."""
    number = 0
    try:
        with _open_bytes(path) as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise VSLMError(f"data file {path}, line {number}: not UTF-8 text (byte {e.start} of the "
                                    "line); convert it to UTF-8") from None
                try:
                    record = json.loads(text.removeprefix("\ufeff") if number == 1 else text)
                except json.JSONDecodeError as e:
                    raise VSLMError(f"data file {path}, line {number}: not valid JSON ({e.msg}"
                                    f"{' ' if e.msg.endswith(' at') else ', '}column {e.colno})") from None
                if not isinstance(record, dict):
                    raise VSLMError(f"data file {path}, line {number}: not a JSON object (a record) but a "
                                    f"{type(record).__name__}") from None
                yield number, record
    except (OSError, EOFError) as e:  # a gzip file that is not one, or is cut short
        where = f", after line {number}" if number else ""
        raise VSLMError(f"data file {path}{where}: cannot read it ({type(e).__name__}: {e})") from None


def _datasets_records(path: Path, kind: str, json_field: str | None) -> Iterator[dict]:
    """Records of a JSON document or a parquet file, streamed through `datasets`, whose own logging is
    silenced while it reads: a file it cannot read is one line, ours."""
    datasets = _datasets()
    kwargs = {"field": json_field} if kind == "json" and json_field and path.name.endswith(".json") else {}
    try:
        with _quiet_datasets():
            records = iter(datasets.load_dataset(kind, data_files=[str(path)], split="train", streaming=True,
                                                 **kwargs))
        while True:
            with _quiet_datasets():
                record = next(records, None)
            if record is None:
                return
            yield record
    except VSLMError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise VSLMError(f"data file {path}: cannot read it as {kind} ({type(e).__name__}: {first[:200]})") from None


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` logs an error it then raises; the raise alone becomes our one line."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


TEXT_FIELD_HINT = "set data.text_field to the field holding the text"  # `vslm eval` names its own flag instead


def _formatted(formatter: Formatter, records: Iterable[dict], where: str, what: str) -> Iterator[str]:
    """The formatter's documents, with a record that lacks a field reported as one line naming the record's
    line (or number) when the records are numbered. A literal <|endoftext|> inside a record ends a document there,
    as it does in a text file (else it would be text to the shards' bulk encoder but end-of-text to
    Tokenizer.encode, which the harness and sampling use)."""
    try:
        for doc in formatter(records):
            yield from doc.split(EOS)
    except KeyError as e:
        at = f", {records.at}" if isinstance(records, _Numbered) and records.at else ""
        raise VSLMError(f"data {where}{at}: a record has no field {e.args[0]!r} (the text is {what}); "
                        f"{TEXT_FIELD_HINT}") from None
    except (TypeError, AttributeError) as e:
        at = f", {records.at}" if isinstance(records, _Numbered) and records.at else ""
        raise VSLMError(f"data {where}{at}: a record is not in the expected schema ({e}); the text is {what}") from None


def _within(docs: Iterable[str], max_bytes: int | None, source: Source | None = None) -> Iterator[str]:
    """Documents up to max_bytes of UTF-8 in all; the one that crosses the limit is cut there (and the
    source marked stopped_at_max_bytes, when text was left)."""
    if max_bytes is None:
        yield from docs
        return
    left = max_bytes
    docs = iter(docs)
    for doc in docs:
        raw = doc.encode("utf-8")
        if len(raw) >= left:
            cut = raw[:left].decode("utf-8", errors="ignore")  # a character cut in two is dropped
            if source is not None and (len(raw) > left or any(d.strip() for d in docs)):
                source.stopped_at_max_bytes = True
            if cut.strip():
                yield cut
            return
        left -= len(raw)
        yield doc


def _decoded(path: Path, max_bytes: int | None) -> Iterator[str]:
    """A file's UTF-8 text in pieces of about PIECE bytes, at most max_bytes; a character cut by the
    limit is dropped, a file that is not UTF-8 is one line naming the byte. A byte-order mark at its start is
    not text (JSON lines drop it too)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    done = 0
    with open(path, "rb") as f:
        while True:
            want = PIECE if max_bytes is None else min(PIECE, max_bytes - done)
            raw = f.read(want) if want > 0 else b""
            at_end = not raw and want > 0  # the file ended (not the budget): a cut character is an error
            try:
                text = decoder.decode(raw, final=at_end)
            except UnicodeDecodeError as e:
                raise VSLMError(f"data file {path} is not UTF-8 text (byte {done + e.start}); "
                                "convert it to UTF-8") from None
            done += len(raw)
            if text:
                yield text
            if not raw:
                return


def _has_separator(path: Path, max_bytes: int | None) -> bool:
    marker, tail = EOS.encode(), b""
    left = max_bytes
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(PIECE if left is None else min(PIECE, left))
            if not block:
                return False
            if marker in tail + block:
                return True
            tail = block[-len(marker):]
            left = None if left is None else left - len(block)
    return False


def _text_documents(path: Path, max_bytes: int | None) -> Iterator[str]:
    """A text file's documents: the whole text, or the parts between `<|endoftext|>` markers."""
    carry = ""
    for text in _decoded(path, max_bytes):
        parts = (carry + text).split(EOS)
        carry = parts.pop()
        for doc in parts:
            if doc.strip():
                yield doc.strip("\n")
    if carry.strip():
        yield carry.strip("\n")


def _text_pieces(path: Path, max_bytes: int | None) -> Iterator[str]:
    """One text in pieces, each cut after a newline that sits between two non-space characters:
    there, byte-level BPE pre-tokenization (GPT-2's pattern) splits the same way as in the whole
    text, so tokenizing the pieces one by one gives the whole text's tokens."""
    carry = ""
    for text in _decoded(path, max_bytes):
        carry += text
        cut = _safe_cut(carry)
        if cut > 0:
            yield carry[:cut]
            carry = carry[cut:]
    if carry:
        yield carry


def _safe_cut(text: str) -> int:
    """The last index i with text[i-1] == newline and text[i-2], text[i] not whitespace; 0 if none."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    return 0


def _line_records(path: Path) -> Iterator[dict]:
    """A text file as the hub serves WikiText: one record per line, the line ending kept."""
    carry = ""
    for text in _decoded(path, None):
        lines = (carry + text).split("\n")
        carry = lines.pop()
        for line in lines:
            yield {"text": line + "\n"}
    if carry:
        yield {"text": carry}
