"""Files written whole or not at all, with the modes open() and mkdir() give new files and folders here.

A file that a later run reads back to skip finished work (a result, a checkpoint, a run's config) is written
to a temporary file beside it and renamed over it: a run stopped or killed mid-write leaves the old file or
none, never half of one. What a file made another way (tempfile's mkstemp and mkdtemp: 0o600 and 0o700) gets
the mode open() would give it, so a checkpoint or a cached corpus is as readable to a group as the rest of a
run folder or cache."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

LOCK = ".lock"  # a run folder's: held by the process that trains in it (vslm.train.run_folder.RunLock)
LOCK_HOST = ".lock.host"  # the machine that took it last
MAX_LINES_NAMED = 5  # read_jsonl's warning names at most this many skipped lines


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it; else os.umask, set back at once."""
    try:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, IndexError, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def default_mode(folder: bool = False) -> int:
    """0o666 (a file) or 0o777 (a folder) less the umask."""
    return (0o777 if folder else 0o666) & ~umask()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call write(file) on a temporary binary file beside `path`, fsync it, rename it to `path`, fsync the
    folder. An error (OSError, a signal's KeyboardInterrupt) removes the temporary file and leaves `path`
    as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: Path, text: str, keep_same: bool = False) -> None:
    """`text` (UTF-8) as the whole of `path`, atomically (atomic_write). `keep_same`: a file that holds it already
    is left as it is, its modification time with it (a run's data file, which data_identity's stat is part of)."""
    data = text.encode("utf-8")
    if keep_same and Path(path).is_file() and Path(path).stat().st_size == len(data) and \
            Path(path).read_bytes() == data:
        return
    atomic_write(path, lambda f: f.write(data))


def in_use(folder: Path) -> bool:
    """Whether a process may hold the run folder's lock now (train in it). The OS lets go of a lock when its
    process dies, even by SIGKILL, so a stopped or killed run reads False. The look takes the lock for an
    instant when it is free. Where it cannot tell, True: a lock it may not open (another user's run, a
    read-only mount), or one taken on another machine (flock over NFS can be local to each machine)."""
    path = Path(folder) / LOCK
    if not path.exists():
        return False
    try:
        host = path.with_name(LOCK_HOST)
        if host.is_file() and host.read_text(encoding="utf-8").strip() != socket.gethostname():
            return True
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
    except OSError:
        return True
    return False


def read_json_object(path: Path) -> dict:
    """A JSON object from a file, {} where it is missing, does not read or is not an object (for files whose
    content is derived or optional: a run's summary.json, an arm's evaluation)."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError both
        return {}
    return found if isinstance(found, dict) else {}


def read_jsonl(path: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The JSON objects of a .jsonl file (a run's metrics or probes) that carry a finite numeric step; [] if
    there is no file. A malformed line (cut short by a killed run, or edited by hand) is skipped, not fatal:
    one warning line (to `warn`, else stderr) names the file and the lines skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:MAX_LINES_NAMED])) + (", ..." if len(bad) > MAX_LINES_NAMED else "")
        what = f"malformed line {shown}" if len(bad) == 1 else f"{len(bad)} malformed lines ({shown})"
        (warn or (lambda text: print(text, file=sys.stderr)))(
            f"warning: {path}: skipped {what}: not a JSON object with a numeric step")
    return rows
