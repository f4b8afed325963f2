"""Schedules that generate per-block values from a few numbers (pure functions, no torch).

Used by the model config to lay out its blocks: widths (uniform, increasing, decreasing,
small-large-small, large-small-large), attention windows (the same shapes, plus local/global
interleave) and OpenELM's layer-wise scaling of heads and FFN size.
"""

from __future__ import annotations

import math

SHAPES = ("uniform", "increasing", "decreasing", "small-large-small", "large-small-large")


def shape_fractions(shape: str, n: int) -> list[float]:
    """n values in [0, 1]: where each block sits between the low (0) and the high (1) end."""
    if n == 1 or shape == "uniform":
        return [1.0] * n
    ramp = [i / (n - 1) for i in range(n)]
    if shape == "increasing":
        return ramp
    if shape == "decreasing":
        return ramp[::-1]
    # 0 at both ends, 1 in the middle block (the middle two of an even count: 0, 1, 1, 0), linear between; until
    # 2026-12-07 an even count's peak fell between two blocks and no block reached 1 (0, 2/3, 2/3, 0)
    far = (n - 1) // 2
    peak = [min(i, n - 1 - i) / far if far else 0.0 for i in range(n)]
    if shape == "small-large-small":
        return peak
    if shape == "large-small-large":
        return [1 - p for p in peak]
    raise ValueError(f"unknown schedule shape {shape!r}")


def linear(lo: float, hi: float, n: int) -> list[float]:
    """linspace(lo, hi, n)."""
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [hi]


def widths(shape: str, lo: int, hi: int, n: int, multiple: int) -> list[int]:
    """Block widths from lo to hi along `shape` (linear), rounded to a multiple of `multiple`."""
    return [max(multiple, round((lo + (hi - lo) * f) / multiple) * multiple) for f in shape_fractions(shape, n)]


def windows(shape: str, lo: int, hi: int, n: int, global_every: int) -> list[int]:
    """Attention windows from lo to hi along `shape`, interpolated geometrically (windows usually
    double from layer to layer); `interleave` makes every `global_every`-th block global (hi)
    and the others local (lo), as Gemma 2 (every 2nd) and Gemma 3 (every 6th)."""
    if shape == "interleave":
        return [hi if i % global_every == global_every - 1 else lo for i in range(n)]
    return [round(lo * math.exp(f * math.log(hi / lo))) for f in shape_fractions(shape, n)]
