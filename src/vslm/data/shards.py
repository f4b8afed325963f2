"""Text -> token shards on disk, tokenized once and cached by content hash.

A prepared corpus is a folder `<cache>/shards/<key>/` holding, per split, the token ids
(`train.bin`, `val.bin`: flat uint16, or uint32 when the vocabulary needs it, read as memmaps),
the offsets where documents start (`train_docs.npy`, `val_docs.npy`), the tokenizer
(`tokenizer.json`) and `meta.json`. The key hashes the source's identity, the tokenizer settings
and the split, so a change to any of them builds anew and the same ones hit the cache.

The split: a corpus of one document (a plain text file) is cut at the token level, the last
`val_fraction` being validation (as nanoGPT does); a corpus of several documents keeps whole
documents apart, the last `val_fraction` of them for validation. Documents are separated by the
end-of-text token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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

SHARD_FORMAT = 1
ENCODE_CHUNK = 256  # documents per encode call


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


def corpus_key(source: Source, cfg: DataConfig) -> str:
    spec = {
        "format": SHARD_FORMAT,
        "source": source.identity,
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        "val_fraction": cfg.val_fraction,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def prepare_corpus(cfg: DataConfig, root: Path | None = None) -> Corpus:
    """Tokenize the configured source into cached shards (or find them cached) and open them."""
    source = open_source(cfg)
    folder = (root or cache_root()) / "shards" / corpus_key(source, cfg)
    if (folder / "meta.json").is_file():
        return _open(folder, cache_hit=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _build(source, cfg, tmp)
        try:
            os.rename(tmp, folder)  # atomic: readers see a complete folder or none
        except OSError:
            if not (folder / "meta.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _open(folder, cache_hit=False)


def _build(source: Source, cfg: DataConfig, out: Path) -> None:
    docs = list(source.documents())
    if not docs:
        raise VSLMError(f"data source {source.name} holds no text")
    tokenizer = _make_tokenizer(cfg, docs)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    if len(docs) == 1:
        ids = np.array(tokenizer.encode(docs[0]), dtype=dtype)
        cut = int((1 - cfg.val_fraction) * len(ids))
        splits = {"train": [ids[:cut]], "val": [ids[cut:]]}
    else:
        n_val = max(1, round(cfg.val_fraction * len(docs)))
        splits = {"train": docs[:-n_val], "val": docs[-n_val:]}
    meta: dict = {"format": SHARD_FORMAT, "source": source.name, "identity": source.identity,
                  "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                  "dtype": np.dtype(dtype).name, "documents": len(docs)}
    for split, parts in splits.items():
        n_tokens, starts = _write_split(tokenizer, parts, out / f"{split}.bin", dtype)
        np.save(out / f"{split}_docs.npy", np.array(starts, dtype=np.int64))
        meta[f"{split}_tokens"] = n_tokens
        if n_tokens < 2:
            raise VSLMError(f"data source {source.name}: the {split} split has {n_tokens} tokens; add text")
    tokenizer.save(out / "tokenizer.json")
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # last: its presence marks a complete build


def _make_tokenizer(cfg: DataConfig, docs: list[str]) -> Tokenizer:
    if cfg.tokenizer == "char":
        return CharTokenizer.train(docs, eos=len(docs) > 1)
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":  # learned from the training text only
        if len(docs) == 1:
            return HFTokenizer.train([docs[0][: int((1 - cfg.val_fraction) * len(docs[0]))]], cfg.vocab_size)
        return HFTokenizer.train(docs[: len(docs) - max(1, round(cfg.val_fraction * len(docs)))], cfg.vocab_size)
    for d in data_dirs():
        if (d / "tokenizers" / "gpt2" / "vocab.json").is_file():
            return HFTokenizer.gpt2(d / "tokenizers" / "gpt2")
    raise VSLMError("GPT-2 tokenizer files not found; set VSLM_DATA_DIR to a folder with tokenizers/gpt2/")


def _write_split(tokenizer: Tokenizer, parts: list, path: Path, dtype) -> tuple[int, list[int]]:
    """Write documents (str) or pre-encoded id arrays, end-of-text between documents."""
    starts, n = [], 0
    with open(path, "wb") as f:
        for i in range(0, len(parts), ENCODE_CHUNK):
            chunk = parts[i : i + ENCODE_CHUNK]
            encoded = chunk if not isinstance(chunk[0], str) else tokenizer.encode_batch(chunk)
            for ids in encoded:
                starts.append(n)
                arr = np.asarray(ids, dtype=dtype)
                if isinstance(chunk[0], str) and tokenizer.eos_id is not None:
                    arr = np.append(arr, np.array([tokenizer.eos_id], dtype=dtype))
                arr.tofile(f)
                n += len(arr)
        f.flush()
        os.fsync(f.fileno())
    return n, starts


def _open(folder: Path, cache_hit: bool) -> Corpus:
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> TokenSplit:
        tokens = np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r")
        return TokenSplit(tokens, np.load(folder / f"{name}_docs.npy"))

    return Corpus(load_tokenizer(folder / "tokenizer.json"), split("train"), split("val"), folder, meta, cache_hit)
