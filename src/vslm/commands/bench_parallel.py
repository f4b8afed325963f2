"""`vslm bench parallel`: the wall time of one experiment trained one run after another, in N worker
processes (`--jobs N`), and as tasks on a local Ray instance, in the same sitting.

Each launcher trains the experiment from nothing into a fresh temporary folder (nothing reused), as a
subprocess `vslm experiment NAME --seeds S --jobs N` (or `--launcher ray`), one launcher after the
other, `repeat` times in turn (the order reversed every other round); the wall times are medians of the
whole command's, the ratios the median of each round's. The data shards are prepared once before any
timing, so no launcher pays for them. Reported: each launcher's wall time and its ratio to the first
launcher (one process), whether every run's validation loss matched one process's
bit for bit, and Ray's overhead per run: (Ray's wall time - the wall time of as many worker
processes as Ray runs at once) / runs.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vslm.errors import ConfigError, UsageError


def parse_launchers(text: str) -> list[str]:
    """'1,2,ray' -> ['1', '2', 'ray']: worker counts, or ray."""
    out = [w.strip() for w in text.split(",") if w.strip()]
    for w in out:
        if w != "ray" and not (w.isdigit() and int(w) >= 1):
            raise ConfigError(f"--launchers takes worker counts and 'ray', comma-separated; got '{w}'")
    if not out:
        raise ConfigError("--launchers is empty")
    return out


def _prepare_data(experiment: str, seeds: int, overrides: list[str]) -> int:
    """Every variant's corpus into the shard cache before timing; the number of runs."""
    from vslm.data.shards import prepare_corpus
    from vslm.lab.experiments import load_experiment, plan_experiment

    _, spec = load_experiment(experiment)
    if spec.corpora:
        raise ConfigError("vslm bench parallel times experiments without `corpora`; pick one corpus by override")
    plan = plan_experiment(spec, seeds, overrides)
    seen = set()
    for choices in plan.values():
        for cfgs in choices.values():
            key = cfgs[0].data.model_dump_json()
            if key not in seen:
                seen.add(key)
                prepare_corpus(cfgs[0].data)
    return sum(len(cfgs) for choices in plan.values() for cfgs in choices.values())


def _time(experiment: str, seeds: int, overrides: list[str], launcher: str, out: Path) -> dict:
    args = ["--launcher", "ray"] if launcher == "ray" else ["--jobs", launcher]
    cmd = [sys.executable, "-m", "vslm", "experiment", experiment, *overrides, "--seeds", str(seeds),
           "--out", str(out), *args]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the launcher splits the cores
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise ConfigError(f"`{' '.join(cmd)}` failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {"wall_s": wall, "losses": {f"{r['variant']}/{r['seed']}": r.get("val_loss") for r in runs}}


def run_parallel_bench(experiment: str, seeds: int, launchers: list[str], repeat: int, overrides: list[str],
                       console: Console | None, keep: Path | None = None) -> dict:
    """keep: a folder to keep each launcher's last experiment folder in (keep/jobs-N, keep/ray), with its
    results; else they are deleted. A `keep` that already holds files is refused: its jobs-N would be replaced."""
    if keep is not None and Path(keep).is_dir() and any(Path(keep).iterdir()):
        raise UsageError(f"--keep {keep} already holds files (a jobs-N or ray folder there would be replaced); "
                         "give a new or empty folder")
    if keep is not None and Path(keep).exists() and not Path(keep).is_dir():
        raise UsageError(f"--keep {keep} is a file; give a folder")
    if "ray" in launchers:
        from vslm.lab.parallel import make_launcher

        make_launcher(launcher="ray")  # installed? (a one-line error before anything trains)
    runs = _prepare_data(experiment, seeds, overrides)
    walls: dict[str, list[float]] = {w: [] for w in launchers}
    losses: dict[str, dict] = {}
    for i in range(repeat):
        for w in launchers if i % 2 == 0 else launchers[::-1]:
            folder = Path(tempfile.mkdtemp(prefix=f"vslm-bench-parallel-{w}-"))
            try:
                result = _time(experiment, seeds, overrides, w, folder)
                if keep:
                    kept = Path(keep) / ("ray" if w == "ray" else f"jobs-{w}")
                    shutil.rmtree(kept, ignore_errors=True)
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(folder, kept)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            walls[w].append(result["wall_s"])
            losses.setdefault(w, result["losses"])
            if console:
                console.print(f"round {i + 1}, {'ray' if w == 'ray' else f'--jobs {w}'}: {result['wall_s']:.1f} s",
                              highlight=False)
    median = {w: statistics.median(v) for w, v in walls.items()}
    base = launchers[0]
    # each round's ratio (its launchers run one after the other), then their median (BENCHMARKS' method)
    ratio = {w: statistics.median(t / b for t, b in zip(walls[w], walls[base], strict=True)) for w in launchers}
    out = {"experiment": experiment, "seeds": seeds, "runs": runs, "cores": os.cpu_count(), "repeat": repeat,
           "wall_s": walls, "median_s": median, "ratio_to_first": ratio,
           "same_losses": {w: losses[w] == losses[base] for w in launchers}}
    workers = [w for w in launchers if w != "ray" and int(w) == min(os.cpu_count() or 1, runs)]
    if "ray" in launchers and workers:
        out["ray_overhead_per_run_s"] = (median["ray"] - median[workers[0]]) / runs
    if console:
        table = Table(title=f"{experiment}, {runs} runs ({seeds} seeds), {os.cpu_count()} cores, median of {repeat}")
        for col in ("launcher", "wall time", f"ratio to {base}", "same val losses"):
            table.add_column(col, justify="left" if col == "launcher" else "right")
        for w in launchers:
            table.add_row("ray (local)" if w == "ray" else f"--jobs {w}", f"{median[w]:.1f} s",
                          f"{out['ratio_to_first'][w]:.3f}", "yes" if out["same_losses"][w] else "NO")
        console.print(table)
        if "ray_overhead_per_run_s" in out:
            console.print(f"Ray's overhead per run: {out['ray_overhead_per_run_s']:+.2f} s", highlight=False)
    return out
