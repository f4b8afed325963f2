"""A run folder's layout, its lock, and loading a trained model back from it.

    runs/<name>/
      config.toml        the resolved config
      summary.json       parameters, FLOPs per token, device, tokenizer and corpus sizes; probe time
      tokenizer.json     the tokenizer
      metrics.jsonl      one JSON object per logged step ({"step", "loss", ...}; eval adds "val_loss")
      checkpoints/       step_NNNNNNNN.safetensors, the last `keep_last`, full training state
      snapshots/         step_NNNNNNNN.safetensors at steps 0, 1, 2, 4, 8, ... (weights only)
      .lock              held by the process training in this folder
"""

from __future__ import annotations

import fcntl
import json
import os
import tomllib
from pathlib import Path

import torch

from vslm.config import RunConfig, validate
from vslm.data.tokenizer import Tokenizer, load_tokenizer
from vslm.errors import VSLMError
from vslm.model import GPT
from vslm.train.checkpoint import atomic_write, list_checkpoints, load_checkpoint

CONFIG = "config.toml"
TOKENIZER = "tokenizer.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"


def update_summary(run_dir: Path, **fields) -> None:
    """Adds fields to the run's summary.json (written by the trainer when the run starts)."""
    path = Path(run_dir) / SUMMARY
    summary = json.loads(path.read_text()) if path.exists() else {}
    atomic_write(path, lambda f: f.write((json.dumps(summary | fields, indent=1) + "\n").encode()))


class RunLock:
    """An exclusive lock on a run folder for as long as a process trains in it.

    flock is released by the kernel when the process dies, even by SIGKILL: no stale locks."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise VSLMError(f"run folder {self.path.parent} is in use by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def read_run_config(folder: Path) -> RunConfig:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise VSLMError(f"{folder} is not a run folder (no {CONFIG})")
    return validate(tomllib.loads(path.read_text(encoding="utf-8")))


def load_run(folder: Path, checkpoint: Path | None = None, device: str = "cpu") -> tuple[RunConfig, GPT, Tokenizer]:
    """The config, the model at its latest checkpoint (or the one given) and the tokenizer of a run."""
    folder = Path(folder)
    cfg = read_run_config(folder)
    if checkpoint is None:
        found = list_checkpoints(folder / CHECKPOINTS) or list_checkpoints(folder / SNAPSHOTS)
        if not found:
            raise VSLMError(f"run folder {folder} has no checkpoint yet")
        checkpoint = found[-1][1]
    weights, _ = load_checkpoint(checkpoint, device)
    model = GPT(cfg.model).to(device)
    model.load_state_dict(weights)
    model.eval()
    return cfg, model, load_tokenizer(folder / TOKENIZER)


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise VSLMError(f"train.device={name} but this machine has {torch.cuda.device_count()} CUDA devices")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VSLMError("train.device=mps but MPS is not available here")
    return torch.device(name)
