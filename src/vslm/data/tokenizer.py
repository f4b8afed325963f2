"""Tokenizers behind one interface: char, byte, BPE trained with Hugging Face `tokenizers`, GPT-2.

Every tokenizer knows how many UTF-8 bytes each token stands for (`token_bytes`), so that any
evaluation can report bits per byte, which is comparable across tokenizers where loss per token
is not. A tokenizer saves to and loads from one JSON file (`tokenizer.json` in a run folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError
from vslm.files import write_text

EOS = "<|endoftext|>"
# GPT-2's pre-tokenization pattern: what `tokenizers`' ByteLevel pre-tokenizer splits text with
CHECK_CHARS = 100_000  # text encoded by both tiktoken and `tokenizers` before tiktoken is trusted
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def encode_in_chunks(encode: Callable[[str], list[int]], texts: list[str], chunk: int = 256) -> list[list[int]]:
    """encode(text) for every text, on every CPU, `chunk` texts per thread-pool task. tiktoken's own
    encode_ordinary_batch makes one task per text: for documents of about 1 kB the scheduling, which
    holds the GIL, costs more than the encoding (which does not): 8-10 MB/s against 13-16 MB/s
    chunked, on 2 idle cores (docs/BENCHMARKS.md)."""
    threads = os.cpu_count() or 1
    if threads == 1 or len(texts) <= chunk:
        return [encode(t) for t in texts]
    parts = (texts[i : i + chunk] for i in range(0, len(texts), chunk))
    with ThreadPoolExecutor(threads) as pool:
        return [ids for part in pool.map(lambda part: [encode(t) for t in part], parts) for ids in part]


class Tokenizer:
    """The interface; `kind` names the implementation."""

    kind: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str], dtype) -> list[np.ndarray]:
        """encode_batch as arrays of `dtype`: what the shard writer appends to its files."""
        return [np.asarray(ids, dtype=dtype) for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """(V,) int32: UTF-8 bytes each token stands for (0 for special tokens)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        write_text(Path(path), json.dumps(self.to_dict()))


class CharTokenizer(Tokenizer):
    """One id per character seen in the corpus, in sorted order (as nanoGPT's shakespeare_char);
    an end-of-text id after them when the corpus has several documents."""

    kind = "char"

    def __init__(self, chars: Sequence[str], eos: bool):
        self.chars = list(chars)
        self.lookup = {c: i for i, c in enumerate(self.chars)}
        self.eos_id = len(self.chars) if eos else None
        self.vocab_size = len(self.chars) + (1 if eos else 0)

    @classmethod
    def train(cls, texts: Iterable[str], eos: bool) -> CharTokenizer:
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(sorted(chars), eos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.lookup[c] for c in text]
        except KeyError as e:
            raise VSLMError(f"character {e.args[0]!r} is not in this character vocabulary (a char tokenizer knows "
                            "only its training text's characters): a run trained with data.tokenizer=byte or bpe "
                            "encodes any text, and bits per byte keep runs of different tokenizers comparable"
                            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] for i in ids if 0 <= i < n)

    def token_bytes(self) -> np.ndarray:
        sizes = [len(c.encode("utf-8")) for c in self.chars] + ([0] if self.eos_id is not None else [])
        return np.array(sizes, dtype=np.int32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "eos": self.eos_id is not None}


class ByteTokenizer(Tokenizer):
    """The 256 byte values, plus end-of-text at 256."""

    kind = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_arrays(self, texts: Sequence[str], dtype) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.array([1] * 256 + [0], dtype=np.int32)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


@cache
def _byte_level_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode), inverted: printable char -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class HFTokenizer(Tokenizer):
    """A byte-level BPE from Hugging Face `tokenizers`: trained here (`bpe`) or GPT-2's files (`gpt2`)."""

    def __init__(self, hf, kind: str):  # hf: tokenizers.Tokenizer
        self.hf, self.kind = hf, kind
        self.vocab_size = hf.get_vocab_size()
        self.eos_id = hf.token_to_id(EOS)
        self._fast: object | None = None  # tiktoken's encoder of this vocabulary, once checked against `tokenizers`
        self._fast_checked = False

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> HFTokenizer:
        from tokenizers import Tokenizer as HF
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HF(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, "bpe")

    @classmethod
    def gpt2(cls, folder: Path) -> HFTokenizer:
        """GPT-2's tokenizer from local `vocab.json` and `merges.txt`, with no download."""
        from tokenizers import Tokenizer as HF
        from tokenizers import decoders, models, pre_tokenizers

        vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        for f in (vocab, merges):
            if not f.is_file():
                raise VSLMError(f"GPT-2 tokenizer file {f} not found (needs vocab.json and merges.txt)")
        hf = HF(models.BPE.from_file(str(vocab), str(merges)))
        hf.add_special_tokens([EOS])  # already in GPT-2's vocabulary (50256); marks it as not text
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return cls(hf, "gpt2")

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Documents (which hold no end-of-text marker: sources split at them). Bulk encoding goes through
        tiktoken: several times faster than `tokenizers` on a CPU (the shard
        builder's 10 MB/s needs it). The first texts (CHECK_CHARS of them) are encoded both ways and
        must agree, else `tokenizers` it is."""
        texts = list(texts)
        if not self._fast_checked:
            self._fast_checked = True
            n = next((i + 1 for i, size in enumerate(np.cumsum([len(t) for t in texts])) if size >= CHECK_CHARS),
                     len(texts))
            slow = [e.ids for e in self.hf.encode_batch_fast(texts[:n], add_special_tokens=False)]
            fast = self._tiktoken()
            if fast is not None and fast.encode_ordinary_batch(texts[:n]) == slow:
                self._fast = fast
            return slow + self.encode_batch(texts[n:]) if n < len(texts) else slow
        if self._fast is not None:
            return encode_in_chunks(self._fast.encode_ordinary, texts)
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def _tiktoken(self):
        """The same byte-level BPE as a tiktoken Encoding: a token's rank is its id, and `tokenizers`
        numbers merged tokens in merge order, so merge priority is the same; None for a vocabulary that
        is not a byte-level BPE of all 256 bytes (tiktoken is a dependency, imported here only when used)."""
        import tiktoken

        table = _byte_level_decoder()
        special = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        ranks = {bytes(table[ch] for ch in token): i for token, i in self.hf.get_vocab().items()
                 if token not in special and all(ch in table for ch in token)}
        if not all(bytes([b]) in ranks for b in range(256)) or len(set(ranks.values())) != len(ranks):
            return None
        return tiktoken.Encoding(f"vslm-{self.kind}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={})

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        table = _byte_level_decoder()
        sizes = np.zeros(self.vocab_size, dtype=np.int32)
        special = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        for token, i in self.hf.get_vocab().items():
            if token not in special and i < self.vocab_size:
                sizes[i] = sum(1 for ch in token if ch in table)
        return sizes

    def to_dict(self) -> dict:
        return {"kind": self.kind, "hf": json.loads(self.hf.to_str())}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"], d["eos"])
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "gpt2"):
        from tokenizers import Tokenizer as HF

        return HFTokenizer(HF.from_str(json.dumps(d["hf"])), kind)
    raise VSLMError(f"unknown tokenizer kind {kind!r}")


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise VSLMError(f"tokenizer file {path} not found")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VSLMError(f"tokenizer file {path} is not valid JSON: {e}") from None
    try:
        return tokenizer_from_dict(saved)
    except (AttributeError, KeyError, TypeError):
        raise VSLMError(f"tokenizer file {path} is not a saved tokenizer (a JSON object with its kind and "
                        "vocabulary)") from None
