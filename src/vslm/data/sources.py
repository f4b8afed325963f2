"""Where text comes from: the embedded story generator, named corpora in the data folder, local files.

A source yields documents (strings) and an `identity` string that changes whenever its text would
change; the shard cache is keyed by it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vslm.config import DataConfig
from vslm.data import stories
from vslm.data.tokenizer import EOS
from vslm.errors import VSLMError

# name -> path inside the data folder (laid out like the study group's shared/data)
LOCAL_CORPORA = {"tinyshakespeare": "tinyshakespeare/input.txt"}


@dataclass
class Source:
    name: str
    identity: str
    documents: Callable[[], Iterator[str]]


def data_dirs() -> list[Path]:
    """Folders searched for named corpora: $VSLM_DATA_DIR, then ~/.cache/vslm/data, then
    ../shared/data (the study group's shared folder beside a checkout)."""
    dirs = [Path(os.environ["VSLM_DATA_DIR"])] if os.environ.get("VSLM_DATA_DIR") else []
    return dirs + [Path.home() / ".cache" / "vslm" / "data", Path("..") / "shared" / "data"]


def open_source(cfg: DataConfig) -> Source:
    if cfg.source == "stories":
        identity = f"stories:v{stories.GENERATOR_VERSION}:seed={cfg.seed}:bytes={cfg.max_bytes}"
        return Source("stories", identity, lambda: stories.iter_stories(cfg.seed, n_bytes=cfg.max_bytes))
    path = Path(cfg.source).expanduser()
    if cfg.source in LOCAL_CORPORA:
        found = [d / LOCAL_CORPORA[cfg.source] for d in data_dirs() if (d / LOCAL_CORPORA[cfg.source]).is_file()]
        if not found:
            raise VSLMError(
                f"data source '{cfg.source}': no local copy of {LOCAL_CORPORA[cfg.source]}; "
                "set VSLM_DATA_DIR to a folder that holds it"
            )
        path = found[0]
    elif not path.exists():
        names = ", ".join(["stories", *LOCAL_CORPORA])
        raise VSLMError(f"unknown data source '{cfg.source}': not a file, nor one of {names}")
    if path.is_dir():
        raise VSLMError(f"data source {path} is a folder; give a text file")
    return _text_file(path, cfg.max_bytes)


def _text_file(path: Path, max_bytes: int) -> Source:
    raw = path.read_bytes()[:max_bytes]
    try:
        text = _decode_cut(raw)
    except UnicodeDecodeError as e:
        raise VSLMError(f"data file {path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    if not text.strip():
        raise VSLMError(f"data file {path} holds no text")
    identity = f"file:{hashlib.sha256(raw).hexdigest()}"
    # a file is one document unless it marks document ends with <|endoftext|>
    docs = [d.strip("\n") for d in text.split(EOS)] if EOS in text else [text]
    docs = [d for d in docs if d.strip()]
    return Source(str(path), identity, lambda: iter(docs))


def _decode_cut(raw: bytes) -> str:
    """Decode UTF-8 that may have been cut inside the last character."""
    for trim in range(4):
        try:
            return raw[: len(raw) - trim].decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(raw) - 4:
                raise
    return raw.decode("utf-8")
