"""Results as plain JSON values: what json.dumps writes without surprises.

JSON has no NaN nor infinity: an undefined number (a spread over one seed, an empty group, a
diverged run's loss) is written as null. numpy arrays and scalars become lists and Python numbers.
"""

from __future__ import annotations

import math

import numpy as np


def plain(obj, digits: int | None = None):
    """obj with dicts, lists, tuples and numpy arrays walked; non-finite floats -> None; floats rounded to
    `digits` when given (probe files stay short)."""
    if isinstance(obj, dict):
        return {k: plain(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), digits)
    if isinstance(obj, float | np.floating):
        if not math.isfinite(obj):
            return None
        return round(float(obj), digits) if digits is not None else float(obj)
    return obj.item() if isinstance(obj, np.generic) else obj
