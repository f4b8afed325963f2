"""The modes open() and mkdir() give new files and folders here: what a file made another way (tempfile's
mkstemp and mkdtemp: 0o600 and 0o700) is set to, so a checkpoint or a cached corpus is as readable to a
group as the rest of a run folder or cache."""

from __future__ import annotations

import os
from pathlib import Path


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
