"""Results as plain JSON values: what json.dumps writes without surprises.

JSON has no NaN nor infinity: an undefined number (a spread over one seed, an empty group, a
diverged run's loss) is written as null. numpy arrays and scalars become lists and Python numbers.
"""

from __future__ import annotations

import json
import math
import os


def plain(obj, digits: int | None = None):
    """obj with dicts, lists, tuples and numpy arrays walked; non-finite floats -> None; floats rounded to
    `digits` when given (probe files stay short)."""
    if isinstance(obj, dict):
        return {k: plain(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, digits) for v in obj]
    if type(obj).__module__.partition(".")[0] == "numpy":  # an array (masked too), a numpy scalar; numpy itself
        return plain(obj.tolist(), digits)  # is not imported: the CLI writes JSON before it needs numpy
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, digits) if digits is not None else obj
    return obj


def dumps(obj, indent: int | None = None, digits: int | None = None) -> str:
    """obj as strict JSON (null where a number is undefined): what every result file and --json print writes,
    so that any JSON reader, not only Python's, reads it."""
    return json.dumps(plain(obj, digits), indent=indent, allow_nan=False)


def listed(value, what: str) -> list[str]:
    """A Python caller's list of words (overrides, prompts, corpus names, variant names): one string or path
    as a list of one, never its characters one by one; None as []. Anything else that is not strings: a
    TypeError naming `what`."""
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    try:
        words = list(value)
    except TypeError:  # not iterable: a number, say
        words = [value]
    if not all(isinstance(w, str | os.PathLike) for w in words):
        raise TypeError(f"{what}: a string or a list of strings, got {value!r}")
    return [os.fspath(w) for w in words]
