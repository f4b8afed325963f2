"""Text -> token shards on disk, tokenized once and cached by content hash.

A prepared corpus is a folder `<cache>/shards/<key>/` holding, per split, the token ids
(`train.bin`, `val.bin`: flat uint16, or uint32 when the vocabulary needs it, read as memmaps),
the offsets where documents start (`train_docs.npy`, `val_docs.npy`), the tokenizer
(`tokenizer.json`) and `meta.json`. The key hashes the source's identity, the tokenizer settings,
the split and the token budget, so a change to any of them builds anew and the same ones hit the cache.

The build streams: documents are read one at a time, encoded in batches of a few MB and appended
to the split files, so memory stays flat whatever the corpus size. A tokenizer that is learned
(char, bpe) takes one more pass over the text first; a corpus streamed from the hub is kept in a
spool file so that it is downloaded once.

The split: a corpus of one text (a plain text file) is cut at the token level, the last
`val_fraction` being validation (as nanoGPT does); a corpus of documents keeps whole documents
apart, every document i with round((i + 1) f) - round(i f) = 1 going to validation (every tenth
for f = 0.1: round(f D) of D documents, spread evenly through the corpus, known as each document
streams past). Documents are followed by the end-of-text token. BPE learns from training text only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from vslm.config import DataConfig
from vslm.data.sources import Source, data_dirs, open_source
from vslm.data.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
)
from vslm.errors import VSLMError
from vslm.files import atomic_write, default_mode, write_text

SHARD_FORMAT = 2
BATCH_BYTES = 1 << 22  # text per encode call: large enough for the tokenizer's threads, small in memory
COPY_TOKENS = 1 << 22  # tokens moved at a time between split files


def cache_root() -> Path:
    return Path(os.environ.get("VSLM_CACHE_DIR") or Path.home() / ".cache" / "vslm")


@dataclass
class TokenSplit:
    tokens: np.ndarray  # (N,) token ids, a read-only memmap
    doc_starts: np.ndarray  # (D,) int64 offsets where documents begin


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit
    folder: Path
    meta: dict
    cache_hit: bool = False
    token_bytes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.token_bytes = self.tokenizer.token_bytes()


def is_validation(i: int, fraction: float) -> bool:
    """Whether document i is held out: round(f D) of the first D documents are, evenly spread."""
    return round((i + 1) * fraction) - round(i * fraction) == 1


def held_out(documents: Iterable[str], fraction: float) -> Iterator[tuple[str, bool]]:
    """Each document that is not blank, with whether the shards hold it out: blank documents are
    skipped and not numbered, as the shards skip them."""
    i = 0
    for doc in documents:
        if doc.strip():
            yield doc, is_validation(i, fraction)
            i += 1


def max_bytes_note(meta: dict, max_bytes: int | None) -> str | None:
    """The note `vslm train` and `vslm data prepare` print where data.max_bytes stopped a source short of its
    end (meta: a prepared corpus's); None where it did not, or the shards predate the mark."""
    if not meta.get("stopped_at_max_bytes") or max_bytes is None:
        return None
    total = meta["train_tokens"] + meta["val_tokens"]
    return (f"note: data.max_bytes={max_bytes:,} stopped {meta['source']} at {total:,} tokens, short of its end: "
            "data.max_bytes=none reads all of it")


def split_note(meta: dict, val_fraction: float) -> str | None:
    """The note where validation holds more than twice data.val_fraction of the tokens: whole documents are held
    out whatever their size, so a few long ones (the last document of a corpus of fewer than 1 / (2 val_fraction)
    documents, the sixth of one of up to 14 at 10%) can hold far more. None for shards built before the mark
    (meta's last_document_held_out)."""
    total = meta["train_tokens"] + meta["val_tokens"]
    share = meta["val_tokens"] / total if total else 0.0
    if "last_document_held_out" not in meta or not 2 * val_fraction < share < 1:
        return None
    docs = meta["documents"]
    first = math.floor(0.5 / val_fraction) + 1  # the first document is_validation holds out, counted from 1
    which = (f"the last of {docs:,} documents (under {first}, so one whole document is held out)"
             if meta["last_document_held_out"] else
             f"{round(docs * val_fraction):,} whole document{'s' * (round(docs * val_fraction) > 1)} of {docs:,} "
             f"(one in {round(1 / val_fraction)}, from document {first}), longer than most")
    return (f"note: validation is {share:.0%} of the tokens, {which}: give more documents, or one text without "
            "<|endoftext|> (its last tenth held out)")


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()[:20]


def corpus_key(source: Source, cfg: DataConfig, tokenizer: Tokenizer | None = None, all_val: bool = False) -> str:
    spec = {
        "format": SHARD_FORMAT,
        "source": source.identity,
        "tokenizer": tokenizer_hash(tokenizer) if tokenizer else cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" and not tokenizer else None,
        "bpe_train_bytes": cfg.bpe_train_bytes if cfg.tokenizer == "bpe" and not tokenizer else None,
        "val_fraction": None if all_val else cfg.val_fraction,
        "max_tokens": cfg.max_tokens,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def prepare_corpus(cfg: DataConfig, root: Path | None = None, tokenizer: Tokenizer | None = None,
                   all_val: bool = False, progress: bool = False) -> Corpus:
    """Tokenize the configured source into cached shards (or find them cached) and open them.

    tokenizer: encode with this one (an evaluation with a run's tokenizer) instead of the configured one.
    all_val: the whole text is validation (an evaluation split); the train split is then empty.
    progress: a progress bar on the terminal while building."""
    source = open_source(cfg)
    folder = (root or cache_root()) / "shards" / corpus_key(source, cfg, tokenizer, all_val)
    if (folder / "meta.json").is_file():
        if (damage := _damage(folder)) is None:
            return _open(folder, cache_hit=True)
        print(f"note: cached shards {folder} are damaged ({damage}): building them again", file=sys.stderr)
        _remove(folder, damage)
    elif folder.exists():  # no meta.json: what an interrupted copy leaves (a build writes it last, then renames)
        print(f"note: cached shards {folder} are incomplete (no meta.json): building them again", file=sys.stderr)
        _remove(folder, "no meta.json")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    lock = FileLock(f"{tmp}{BUILDING}")  # held while building: a folder whose lock is free was abandoned
    try:
        with lock:
            write_text(Path(f"{tmp}{BUILDING}{HOST}"), socket.gethostname() + "\n")  # whose lock it is (NFS)
            tmp.chmod(default_mode(folder=True))  # mkdtemp's 0o700 would keep a shared cache from its group
            _Builder(source, cfg, tmp, tokenizer, all_val, progress).build()
            try:
                os.rename(tmp, folder)  # atomic: readers see a complete folder or none
            except OSError:
                if not (folder / "meta.json").is_file():  # not a concurrent builder that won the race
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        Path(f"{tmp}{BUILDING}").unlink(missing_ok=True)
        Path(f"{tmp}{BUILDING}{HOST}").unlink(missing_ok=True)
    return _open(folder, cache_hit=False)


BUILDING = ".building"  # beside a build's temporary folder: the lock its builder holds
HOST = ".host"  # beside that lock: the machine that took it


def _remove(folder: Path, why: str) -> None:
    """A damaged cache folder removed; gone already (another process repaired it first) is fine, one that
    cannot be removed (a shared cache's folder of another user) is one line naming it."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise VSLMError(f"cached shards {folder} are damaged ({why}) and cannot be removed ({e.strerror}): remove "
                        "the folder, or set $VSLM_CACHE_DIR to a cache of your own") from None


def _remove_abandoned(shards: Path) -> None:
    """The temporary folders of builds killed before they ended (a prepare stopped by Ctrl-C or SIGKILL leaves
    one, gigabytes for a large corpus): those whose builder's lock is free. A build in progress holds its lock;
    a folder without a lock file is another version's, and one another machine builds (flock over NFS can be
    local to each machine, as files.in_use says of a run's lock) is not this machine's to judge: left alone."""
    for lock_path in shards.glob(f".*{BUILDING}"):
        tmp = Path(str(lock_path)[: -len(BUILDING)])
        host = Path(f"{lock_path}{HOST}")
        if host.is_file() and host.read_text(encoding="utf-8").strip() != socket.gethostname():
            continue
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # building now
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            lock.release()
            lock_path.unlink(missing_ok=True)
            host.unlink(missing_ok=True)


def _damage(folder: Path) -> str | None:
    """What is wrong with a cached shard folder whose meta.json is there (a file cut short or missing, meta.json
    unreadable), or None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        size = np.dtype(meta["dtype"]).itemsize
        for name in ("train", "val"):
            found, expected = (folder / f"{name}.bin").stat().st_size, meta[f"{name}_tokens"] * size
            if found != expected:
                return f"{name}.bin holds {found:,} bytes, meta.json says {meta[f'{name}_tokens']:,} tokens of {size}"
            (folder / f"{name}_docs.npy").stat()
        (folder / "tokenizer.json").stat()
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        return str(e)
    return None


class _Spool:
    """A hub stream read once: documents are written to a file as they arrive, and later passes
    read the file, then continue the stream where the last pass stopped."""

    def __init__(self, stream: Callable[[], Iterator[str]], path: Path):
        self.stream, self.path = stream, path
        self.live: Iterator[str] | None = None
        self.ended = False
        path.write_bytes(b"")

    def documents(self) -> Iterator[str]:
        with open(self.path, "rb") as f:
            while header := f.read(8):
                (n,) = struct.unpack("<Q", header)
                yield f.read(n).decode("utf-8")
        if self.ended:
            return
        self.live = self.live or self.stream()
        with open(self.path, "ab") as f:
            for doc in self.live:
                raw = doc.encode("utf-8")
                f.write(struct.pack("<Q", len(raw)) + raw)
                f.flush()
                yield doc
        self.ended = True


class _SplitFile:
    """One split's token file, appended to; document starts and text statistics alongside."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.n = 0
        self.starts = array("q")
        self.bytes = self.words = 0

    def append(self, ids: np.ndarray, doc_start: bool) -> None:
        if doc_start:
            self.starts.append(self.n)
        ids.astype(self.dtype, copy=False).tofile(self.file)
        self.n += len(ids)

    def truncate(self, n: int) -> None:
        self.file.flush()
        self.file.truncate(n * self.dtype.itemsize)
        self.file.seek(n * self.dtype.itemsize)
        self.n = n

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


class _Builder:
    def __init__(self, source: Source, cfg: DataConfig, out: Path, tokenizer: Tokenizer | None, all_val: bool,
                 progress: bool):
        self.source, self.cfg, self.out = source, cfg, out
        self.all_val, self.progress = all_val, progress
        self.documents = _Spool(source.documents, out / "spool.bin").documents if source.remote else source.documents
        self.tokenizer = tokenizer
        self.timings = {"tokenizer_s": 0.0, "encode_s": 0.0, "encode_cpu_s": 0.0}

    def build(self) -> None:
        started = time.perf_counter()
        if self.tokenizer is None:
            self.tokenizer = self._learn_tokenizer()
            self.timings["tokenizer_s"] = time.perf_counter() - started
        tok = self.tokenizer
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
        train, val = _SplitFile(self.out / "train.bin", dtype), _SplitFile(self.out / "val.bin", dtype)
        try:
            docs, text_bytes, truncated = self._encode(train, val)
        except BaseException:
            train.file.close()
            val.file.close()
            raise
        if docs == 0:
            raise VSLMError(f"data source {self.source.name} holds no text; check the file, or data.text_field "
                            "for JSON lines and parquet")
        single = self.source.single_text or docs == 1
        if docs == 1 and not self.source.single_text and tok.eos_id is not None:  # one document: no separator
            (val if val.n else train).truncate((val if val.n else train).n - 1)
        if single and not self.all_val:
            self._cut_single(train, val)
        last_held_out = not single and not self.all_val and val.n == 0
        if last_held_out:  # fewer documents than 1 / val_fraction: hold out the last
            self._move_last_document(train, val)
        for split in (train, val):
            split.close()
        meta: dict = {"format": SHARD_FORMAT, "source": self.source.name, "identity": self.source.identity,
                      "split": self.source.split, "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
                      "dtype": np.dtype(dtype).name, "documents": docs, "text_bytes": text_bytes,
                      "truncated_by_budget": truncated, "last_document_held_out": last_held_out,
                      "stopped_at_max_bytes": self.source.stopped_at_max_bytes and not truncated}
        for name, split in (("train", train), ("val", val)):
            starts = np.frombuffer(split.starts, dtype=np.int64)
            atomic_write(self.out / f"{name}_docs.npy", lambda f, a=starts: np.save(f, a))  # on disk before meta
            meta[f"{name}_tokens"] = split.n
            if split.n < 2 and not (name == "train" and self.all_val):
                raise VSLMError(f"data source {self.source.name}: the {name} split has {split.n} tokens; add text")
        meta.update(val_bytes=val.bytes, val_words=val.words)
        meta.update({k: round(v, 3) for k, v in self.timings.items()})
        meta["prepare_s"] = round(time.perf_counter() - started, 3)
        (self.out / "spool.bin").unlink(missing_ok=True)
        tok.save(self.out / "tokenizer.json")
        write_text(self.out / "meta.json", json.dumps(meta, indent=1))  # last: its presence marks a complete build

    # ------------------------------------------------------------------------ tokenizer

    def _learn_tokenizer(self) -> Tokenizer:
        cfg = self.cfg
        if cfg.tokenizer == "byte":
            return ByteTokenizer()
        if cfg.tokenizer == "gpt2":
            for d in data_dirs():
                if (d / "tokenizers" / "gpt2" / "vocab.json").is_file():
                    return HFTokenizer.gpt2(d / "tokenizers" / "gpt2")
            raise VSLMError("GPT-2 tokenizer files not found; set VSLM_DATA_DIR to a folder with tokenizers/gpt2/ "
                            "(vocab.json and merges.txt)")
        if cfg.tokenizer == "char":
            chars: set[str] = set()
            docs = tokens = 0
            single = self.source.single_text
            for doc in self.documents():  # the text the encoding pass reads, to the same budget
                if not doc.strip() and not single:
                    continue
                chars.update(doc)
                docs += 1
                tokens += len(doc) + (0 if single else 1)
                if cfg.max_tokens is not None and tokens >= cfg.max_tokens:
                    break
            return CharTokenizer(sorted(chars), eos=docs > 1 and not single)
        return HFTokenizer.train(self._training_text(), cfg.vocab_size)

    def _training_text(self) -> Iterator[str]:
        """What BPE learns from: the training documents (or the first 1 - f of a single text), at most
        cfg.bpe_train_bytes of them. With a budget of N tokens, documents up to 8N bytes (more text than the
        budget encodes: BPE averages 3-5 bytes a token on English); a single text's first (1 - f) N bytes only,
        since where its validation part starts (token (1 - f) N) is not known before the tokenizer is, and
        every byte-level token stands for at least one byte: those bytes are training text whatever it learns."""
        f, single = self.cfg.val_fraction, self.source.single_text
        left = self.cfg.bpe_train_bytes
        if self.cfg.max_tokens is not None:
            left = min(left, int((1 - f) * self.cfg.max_tokens) if single else 8 * self.cfg.max_tokens)
        if single and self.source.size_bytes is not None and not self.all_val:
            left = min(left, int((1 - f) * self.source.size_bytes))
        docs = ((d, False) for d in self.documents()) if single else held_out(self.documents(), f)
        for doc, validation in docs:
            if left <= 0:
                return
            if not validation:
                raw = doc.encode("utf-8")
                yield doc if len(raw) <= left else raw[:left].decode("utf-8", errors="ignore")
                left -= len(raw)

    # --------------------------------------------------------------------------- encode

    def _batches(self, left: Callable[[], int | None]) -> Iterator[list[str]]:
        """Documents in batches of about BATCH_BYTES, and never much more text than the token budget
        left can take (`left()`, None without a budget): a character past the budget may be one the
        char tokenizer never saw. Sizes count a character (and a document's end-of-text) as a token,
        as the char tokenizer's vocabulary pass does."""
        batch, size = [], 0
        single = self.source.single_text
        for doc in self.documents():
            if not doc.strip() and not single:
                continue
            batch.append(doc)
            size += len(doc) + (0 if single else 1)
            budget = left()
            if size >= (BATCH_BYTES if budget is None else min(BATCH_BYTES, budget)):
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def _encode(self, train: _SplitFile, val: _SplitFile) -> tuple[int, int, bool]:
        """Encode every document into its split; returns (documents, text bytes, cut by the budget)."""
        tok, cfg, single = self.tokenizer, self.cfg, self.source.single_text
        eos = None if single or tok.eos_id is None else np.array([tok.eos_id])
        budget = cfg.max_tokens
        docs = text_bytes = 0
        self.written = 0  # tokens so far (read by _batches)
        any_text = False
        bar = _ProgressBar(self.source, cfg) if self.progress else None
        try:
            for batch in self._batches(lambda: None if budget is None else budget - self.written):
                t, cpu = time.perf_counter(), time.process_time()
                arrays = tok.encode_arrays(batch, train.dtype)
                self.timings["encode_s"] += time.perf_counter() - t
                self.timings["encode_cpu_s"] += time.process_time() - cpu  # all threads: the tokenizer's too
                for text, ids in zip(batch, arrays, strict=True):
                    any_text = any_text or bool(text.strip())
                    split = val if self.all_val or (not single and is_validation(docs, cfg.val_fraction)) else train
                    ids = ids if eos is None else np.concatenate([ids, eos.astype(ids.dtype)])
                    cut = budget is not None and self.written + len(ids) >= budget
                    if cut:
                        ids = ids[: budget - self.written]
                        text = tok.decode(ids.tolist())
                    split.append(ids, doc_start=not single or docs == 0)
                    n_bytes = len(text.encode("utf-8"))
                    if split is val:  # only the held-out text's size is read (word perplexity, bits per byte)
                        split.bytes += n_bytes
                        split.words += len(text.split())
                    text_bytes += n_bytes
                    self.written += len(ids)
                    docs += 1 if not single or docs == 0 else 0
                    if cut:
                        break
                if bar:
                    bar.update(text_bytes, self.written)
                if budget is not None and self.written >= budget:
                    return (docs if any_text else 0), text_bytes, True
        finally:
            if bar:
                bar.close()
        return (docs if any_text else 0), text_bytes, False

    def _cut_single(self, train: _SplitFile, val: _SplitFile) -> None:
        """One text: its last val_fraction of tokens become validation (moved from the train file)."""
        self._move_tail(train, val, int((1 - self.cfg.val_fraction) * train.n))

    def _move_last_document(self, train: _SplitFile, val: _SplitFile) -> None:
        if len(train.starts) >= 2:
            self._move_tail(train, val, train.starts.pop())

    def _move_tail(self, train: _SplitFile, val: _SplitFile, start: int) -> None:
        """Move train tokens [start:] to the start of the (empty) validation file, in chunks, counting
        their bytes (exactly, from the tokens) and words (from the decoded text) on the way."""
        train.file.flush()
        sizes = self.tokenizer.token_bytes()
        inside_word = False
        for offset in range(start, train.n, COPY_TOKENS):
            chunk = np.fromfile(train.path, dtype=train.dtype, count=COPY_TOKENS, offset=offset * train.dtype.itemsize)
            val.append(chunk, doc_start=offset == start)
            val.bytes += int(sizes[chunk].sum())
            text = self.tokenizer.decode(chunk.tolist())
            val.words += len(text.split()) - (1 if inside_word and text[:1] and not text[0].isspace() else 0)
            inside_word = bool(text) and not text[-1].isspace()
        train.truncate(start)


class _ProgressBar:
    """A rich progress bar: towards the token budget when there is one, else over the text's bytes."""

    def __init__(self, source: Source, cfg: DataConfig):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.by_tokens = cfg.max_tokens is not None
        total = cfg.max_tokens if self.by_tokens else source.size_bytes or cfg.max_bytes
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.task = self.bar.add_task(f"preparing {source.name}", total=total, counts="")
        self.bar.start()

    def update(self, n_bytes: int, tokens: int) -> None:
        self.bar.update(self.task, completed=tokens if self.by_tokens else n_bytes,
                        counts=f"{n_bytes / 1e6:,.1f} MB -> {tokens:,} tokens")

    def close(self) -> None:
        self.bar.stop()


def _open(folder: Path, cache_hit: bool) -> Corpus:
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> TokenSplit:
        path = folder / f"{name}.bin"
        tokens = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype=dtype)
        return TokenSplit(tokens, np.load(folder / f"{name}_docs.npy"))

    return Corpus(load_tokenizer(folder / "tokenizer.json"), split("train"), split("val"), folder, meta, cache_hit)
