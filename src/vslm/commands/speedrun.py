"""`vslm bench speedrun`: the time to validation loss 1.88 on tiny Shakespeare, against the reference.

The speed-run config (`speedrun-shakespeare`) is trained to its end and must finish at or below
TARGET on the reference's measure: character level, the first 90% of the text for training and the
last 10% for validation, the mean loss over 2400 windows of 64 characters (the model's context, which
stays 64). The reference
(shared/bench/reference_gpt.py, nanoGPT's shakespeare_char CPU recipe, 2000 steps) runs in the same
invocation, one after the other, `repeat` times alternately; the figures are medians.

Times: `*_wall_s` is the time in training steps (forward, backward, optimizer), which is what the
reference reports; `*_process_s` is the whole process, start-up, data and evaluation included.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vslm.commands.bench import find_data, find_reference
from vslm.config import DataConfig, fields_set_by, load_config
from vslm.errors import UsageError, VSLMError
from vslm.train.run_folder import read_metrics

SPEEDRUN_CONFIG = "speedrun-shakespeare"
TARGET = 1.88
REFERENCE_STEPS = 2000


def _timed(cmd: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise VSLMError(f"speed-run failed ({' '.join(cmd[:4])} ...): {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout, elapsed


def run_reference(reference: Path, data: Path) -> dict:
    out, process_s = _timed([sys.executable, str(reference), "--data", str(data), "--iters", str(REFERENCE_STEPS)])
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": result["train_s"], "process_s": process_s, "val_loss": result["val_loss"]}


def run_speedrun_config(data: Path, overrides: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="vslm-speedrun-") as tmp:
        _, process_s = _timed([sys.executable, "-m", "vslm", "train", SPEEDRUN_CONFIG, f"data.source={data.resolve()}",
                               "logging.progress=false", *overrides, "--out", f"{tmp}/run"])
        last = read_metrics(Path(tmp) / "run")[-1]
    return {"wall_s": last["train_time_s"], "process_s": process_s, "val_loss": last["val_loss"], "steps": last["step"]}


def run_speedrun(data: Path | None, repeat: int, reference: Path | None, console: Console | None,
                 overrides: list[str] = ()) -> dict:
    data, reference = find_data(data), find_reference(reference)
    # anything of vslm's own may change (the record's point), but not the task: the text, its split, the measure
    # (validation windows are the model's context: 64 characters, as the reference's; another context scores
    # predictions over more or less past, and the loss is not the reference's to compare)
    task = [f"data.{name}" for name in DataConfig.model_fields] + ["train.eval_windows", "model.context"]
    if fixed := [w for w in overrides if fields_set_by(w, task)]:  # `data={...}` replaces them all
        raise UsageError(f"bench speedrun races the reference on its text, split and validation measure: "
                         f"{' '.join(fixed)} would change the task on vslm's side only")
    load_config(SPEEDRUN_CONFIG, [f"data.source={data.resolve()}", *overrides])  # a typo: said now, not after
    ours, theirs = [], []  # the reference's minutes
    for i in range(repeat):
        if console:
            console.print(f"run {i + 1}/{repeat}: reference ({REFERENCE_STEPS} steps) ...", highlight=False)
        theirs.append(run_reference(reference, data))
        if console:
            console.print(f"run {i + 1}/{repeat}: vslm {SPEEDRUN_CONFIG} ...", highlight=False)
        ours.append(run_speedrun_config(data, list(overrides)))
    med = statistics.median
    ratios = [o["wall_s"] / t["wall_s"] for o, t in zip(ours, theirs, strict=True)]
    result = {
        "repeat": repeat,
        "target_val_loss": TARGET,
        "vslm_wall_s": round(med(o["wall_s"] for o in ours), 2),
        "reference_wall_s": round(med(t["wall_s"] for t in theirs), 2),
        "time_ratio": round(med(ratios), 3),
        "time_ratios": [round(r, 3) for r in ratios],
        "vslm_val_loss": round(med(o["val_loss"] for o in ours), 4),
        "reference_val_loss": round(med(t["val_loss"] for t in theirs), 4),
        "vslm_reached_target": all(o["val_loss"] <= TARGET for o in ours),
        "vslm_process_s": round(med(o["process_s"] for o in ours), 2),
        "reference_process_s": round(med(t["process_s"] for t in theirs), 2),
    }
    if console:
        table = Table(title=f"speed-run to val loss {TARGET} on tiny Shakespeare, median of {repeat}")
        for col in ("", "training s", "whole process s", "val loss"):
            table.add_column(col, justify="right")
        table.add_row(f"reference ({REFERENCE_STEPS} steps)", f"{result['reference_wall_s']:.1f}",
                      f"{result['reference_process_s']:.1f}", f"{result['reference_val_loss']:.4f}")
        table.add_row(f"vslm {SPEEDRUN_CONFIG}", f"{result['vslm_wall_s']:.1f}", f"{result['vslm_process_s']:.1f}",
                      f"{result['vslm_val_loss']:.4f}")
        console.print(table)
        reached = "reached" if result["vslm_reached_target"] else "NOT reached in every run"
        console.print(f"time ratio (vslm / reference training time): {result['time_ratio']:.3f}  per run: "
                      f"{', '.join(f'{r:.3f}' for r in ratios)}; target {TARGET} {reached}", highlight=False)
    return result
