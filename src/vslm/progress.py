"""Feedback on long work (no torch): `track(items, label)` yields the items and shows what is being done,
on stderr: a rich progress bar with the elapsed time and an ETA on a terminal; plain lines, no bar, in a
log file or a pipe (a start line, about every tenth of the work, and the end). Library functions take a
`track` argument defaulting to `quiet` (nothing printed); the commands pass `track`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def quiet(items: Iterable[T], label: str = "", total: int | None = None) -> Iterable[T]:
    """The items, nothing printed: the default `track` of library functions."""
    return items


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


QUIET_S = 1.0  # in a log, a tenth done is a line only this long after the last: a job of a second is two lines


def track(items: Iterable[T], label: str, total: int | None = None, stream: TextIO | None = None) -> Iterator[T]:
    """Yield `items`, showing `label`, the count done of `total` (len(items) when it has one), the time
    elapsed and the time left: a bar on a terminal; in a log, a line at the start, at each tenth done (at most
    one a QUIET_S) and at the end."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if stream.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=Console(file=stream), transient=False) as progress:
            task = progress.add_task(label, total=total)
            for item in items:
                yield item
                progress.advance(task)
        return
    started = said = time.perf_counter()
    print(f"{label}: {total if total is not None else 'some'} to do ...", file=stream, flush=True)
    every = max(1, (total or 10) // 10)
    done = 0
    for item in items:
        yield item
        done += 1
        if total and done < total and done % every == 0 and (now := time.perf_counter()) - said >= QUIET_S:
            said, elapsed = now, now - started
            print(f"{label}: {done}/{total} ({done / total:.0%}), {_duration(elapsed)}, eta "
                  f"{_duration(elapsed / done * (total - done))}", file=stream, flush=True)
    print(f"{label}: {done} done in {_duration(time.perf_counter() - started)}", file=stream, flush=True)
