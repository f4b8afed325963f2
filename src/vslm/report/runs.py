"""A run folder read back as plain data: the files the trainer wrote, nothing computed from a model.

The file names are repeated here rather than imported from `vslm.train.run_folder`, which imports
torch: a report must be drawable from any run folder without the training stack (DESIGN.md).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"
SUMMARY = "summary.json"
SAMPLES = "samples.txt"


@dataclass
class RunFiles:
    """What one run folder holds; a file that is absent leaves its field empty."""

    folder: Path
    config_text: str
    config: dict
    metrics: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    samples: str = ""

    @property
    def name(self) -> str:
        return self.config.get("name") or self.folder.name

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a metric over the logged steps that carry it, e.g. `val_loss` on eval steps only."""
        rows = [(m["step"], m[key]) for m in self.metrics if _finite(m.get(key))]
        return np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows], dtype=float)

    def final(self, key: str) -> float:
        """The last logged value of a metric; NaN if it was never logged."""
        values = self.series(key)[1]
        return float(values[-1]) if len(values) else math.nan

    @property
    def probe_steps(self) -> np.ndarray:
        return np.array([p["step"] for p in self.probes], dtype=float)

    def probe_values(self, *path: str) -> np.ndarray:
        """One scalar per probe step, following the keys in `path`; null (written for NaN) and missing -> NaN."""
        out = []
        for p in self.probes:
            value = p
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            out.append(value if _finite(value) else math.nan)
        return np.array(out, dtype=float)


def read_run(folder: Path) -> RunFiles:
    """A run folder's files; a folder without `config.toml` is not a run folder (a one-line error)."""
    folder = Path(folder)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise VSLMError(f"{folder} is not a run folder (no {CONFIG})")
    text = config_path.read_text(encoding="utf-8")
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise VSLMError(f"{config_path} is not valid TOML: {e}") from None
    summary_path = folder / SUMMARY
    samples_path = folder / SAMPLES
    return RunFiles(
        folder=folder,
        config_text=text,
        config=config,
        metrics=_read_jsonl(folder / METRICS),
        probes=_read_jsonl(folder / PROBES),
        summary=_read_json(summary_path) if summary_path.is_file() else {},
        samples=samples_path.read_text(encoding="utf-8", errors="replace") if samples_path.is_file() else "",
    )


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; a line cut short by a killed run is skipped, not fatal."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VSLMError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
