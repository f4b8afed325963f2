"""`vslm watch RUN`: a live view of a running (or finished) run, read from its files alone (no torch):
progress and ETA, a sparkline of the training loss with the last validation loss and bits per byte,
tokens per second, the latest probes (ICL score, KL from the unigram to the mean prediction), the last
checkpoint. On a terminal it redraws in place (rich Live); in a file or a pipe it prints a frame each
time the run logs a new step. It ends when the run reaches its last step, when no process holds
the run folder's lock (a run stopped or killed) and nothing was written for STOPPED_AFTER seconds, or after
`idle` seconds without a new line in the run's files (a run that stalls)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from rich.console import Console

from vslm.errors import VSLMError
from vslm.files import in_use
from vslm.report.runs import CONFIG, RunFiles, read_run
from vslm.report.serve import STOPPED_AFTER

BARS = "▁▂▃▄▅▆▇█"
CHECKPOINT = re.compile(r"step_(\d+)\.safetensors$")


def sparkline(values: list[float], width: int = 60) -> str:
    """The last `width` values as block characters, lowest ▁, highest █ (NaN and infinities left out)."""
    values = [v for v in values if math.isfinite(v)][-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * len(BARS)))] for v in values)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s" if rest >= 60 else f"{rest} s"


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """(step, path) of the newest checkpoint in RUN/checkpoints, None when there is none yet."""
    found = [(int(m.group(1)), p) for p in (folder / "checkpoints").glob("step_*.safetensors")
             if (m := CHECKPOINT.search(p.name))]
    return max(found) if found else None


def planned_steps(run: RunFiles) -> int | None:
    steps = run.config.get("train", {}).get("steps")
    return steps if isinstance(steps, int) else None


def finished(run: RunFiles) -> bool:
    steps = planned_steps(run)
    return bool(run.metrics) and steps is not None and run.metrics[-1].get("step", 0) >= steps


def frame(run: RunFiles, now: float | None = None) -> list[str]:
    """The view of `run` as lines of plain text."""
    now = time.time() if now is None else now
    steps = planned_steps(run)
    last = run.metrics[-1] if run.metrics else {}
    step = last.get("step", 0)
    lines = [f"{run.name}  {run.folder}"]
    if not run.metrics:  # config.toml is written under the run's lock: with no lock, no process will log a step
        ckpt, running = last_checkpoint(run.folder), in_use(run.folder)
        if ckpt is not None:
            lines.append(f"no logged step: metrics.jsonl is missing or empty, yet a checkpoint is at step {ckpt[0]:,}"
                         + ("" if running else "; no process trains in it"))
        elif running:
            lines.append("waiting for the first step (preparing the corpus, building the model) ...")
        else:
            lines.append(f"stopped before its first logged step: no process trains in it (`vslm train --resume "
                         f"--out {run.folder}` trains it from step 0)")
    else:
        done = f"step {step:,}/{steps:,} ({step / steps:.0%})" if steps else f"step {step:,}"
        seconds = last.get("train_time_s")
        ckpt = last_checkpoint(run.folder)  # where a resume starts: a run killed before its first trains again
        resumes = f"continues it from step {ckpt[0]:,}" if ckpt is not None else "trains it again from step 0"
        state = "finished" if finished(run) else "running" if in_use(run.folder) else \
            f"stopped: no process trains in it (`vslm train --resume --out {run.folder}` {resumes})"
        if state == "running" and isinstance(seconds, int | float) and seconds > 0 and steps and step < steps:
            state += f", eta {_duration(seconds / step * (steps - step))} (training time; evaluation adds some)"
        elif isinstance(seconds, int | float) and finished(run):
            state += f" in {_duration(seconds)} of training"
        lines.append(f"{done}  {state}")
        loss = [m["loss"] for m in run.metrics if isinstance(m.get("loss"), int | float)]
        if loss:
            lines.append(f"loss {loss[-1]:.3f}  {sparkline(loss)}  (last {min(len(loss), 60)} logged steps)")
        evals = [m for m in run.metrics if isinstance(m.get("val_loss"), int | float)]
        if evals:
            e = evals[-1]
            bpb = f", {e['val_bpb']:.3f} bits per byte" if isinstance(e.get("val_bpb"), int | float) else ""
            lines.append(f"validation loss {e['val_loss']:.3f}{bpb} at step {e['step']:,}")
        if isinstance(last.get("tokens_per_s"), int | float):
            lines.append(f"{last['tokens_per_s']:,.0f} tokens/s, {last.get('tokens', 0):,} tokens so far")
    if run.probes:
        p = run.probes[-1]
        parts = []
        if isinstance(p.get("icl_score"), int | float):
            parts.append(f"ICL score {p['icl_score']:+.3f}")
        m1 = (p.get("distribution") or {}).get("M1")
        if isinstance(m1, int | float):
            parts.append(f"KL(unigram ‖ mean prediction) {m1:.3f}")
        if parts:
            lines.append(f"probes at step {p['step']:,}: " + ", ".join(parts))
    ckpt = last_checkpoint(run.folder)
    if ckpt is not None:
        age = now - ckpt[1].stat().st_mtime
        lines.append(f"last checkpoint: step {ckpt[0]:,}, {_duration(age)} ago ({ckpt[1].name})")
    return lines


def _changed(folder: Path) -> float:
    """The newest modification time among the files the view reads."""
    times = [p.stat().st_mtime for p in (folder / n for n in (CONFIG, "metrics.jsonl", "probes.jsonl"))
             if p.exists()]
    return max(times, default=0.0)


def watch(folder: Path, console: Console, once: bool = False, every: float = 2.0, idle: float = 600.0) -> RunFiles:
    """Show the run until it finishes (or once); returns its files as last read."""
    folder = Path(folder)
    started = time.monotonic()
    while not (folder / CONFIG).is_file():  # the run may not have written its folder yet
        if once or time.monotonic() - started > idle:
            raise VSLMError(f"{folder} is not a run folder (no {CONFIG})")
        time.sleep(every)
    read = lambda: read_run(folder, warn=lambda line: None)  # noqa: E731  (a line being written: next time)
    run = read()
    if once:
        console.print("\n".join(frame(run)), highlight=False, markup=False)
        return run
    seen = _changed(folder)
    # quiet since the last write, up to STOPPED_AFTER of it: a run stopped long ago is said stopped at once (the
    # first frame already showed it), not after STOPPED_AFTER more seconds
    quiet_since = time.monotonic() - min(max(0.0, time.time() - seen), STOPPED_AFTER)

    def stop() -> str | None:
        nonlocal seen, quiet_since
        if finished(run):
            return "the run finished"
        changed = _changed(folder)
        if changed != seen:
            seen, quiet_since = changed, time.monotonic()
        elif time.monotonic() - quiet_since > idle:
            return f"no new step for {_duration(idle)}: the run stopped, or stalls"
        elif time.monotonic() - quiet_since > min(idle, STOPPED_AFTER) and not in_use(folder):
            return "the run stopped: no process trains in it"
        return None

    if console.is_terminal:
        from rich.live import Live
        from rich.text import Text

        with Live(Text("\n".join(frame(run))), console=console, refresh_per_second=2) as live:
            while (why := stop()) is None:
                time.sleep(every)
                run = read()
                live.update(Text("\n".join(frame(run))))
    else:
        shown = None
        while True:
            step = run.metrics[-1].get("step") if run.metrics else None
            if step != shown:
                console.print("\n".join(frame(run)) + "\n", highlight=False, markup=False)
                shown = step
            if (why := stop()) is not None:
                break
            time.sleep(every)
            run = read()
    console.print(why, highlight=False)
    return run
