"""Bootstrap standard errors over windows: how much a probe's value owes to the choice of windows.

A probe measured on N windows is a function of per-window quantities (a loss per window and position, a
mean prediction per window). The bootstrap redraws N windows with replacement R times, recomputes the
value from the redrawn windows, and takes the spread of the R values (Efron & Tibshirani 1993, ch. 6).
A redraw is a count per window, so a resampled mean is one matrix product: the per-window quantities are
computed once, and the resamples cost nearly nothing beside the model's forward passes.

The resamples come from a fixed seed: the same R draws for every probe step and every run with the same
number of windows, so two runs' standard errors are computed alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 200  # the se of a bootstrap se is about se / sqrt(2 R): 5% at 200
SEED = 0


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(R, n) integer counts: row r says how often each of n windows is drawn in resample r (each row sums
    to n; drawing n indices uniformly with replacement)."""
    if n < 1:
        raise ValueError(f"a bootstrap needs at least one window, got {n}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)


def resampled_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-window values (n, ...) -> (R, ...) their mean over each resample of `counts` (R, n)."""
    values = np.asarray(values, dtype=np.float64)
    # offsets from the first window: exact when every window is the same (so is the se, 0), and no
    # cancellation where the values sit far from 0; a window's NaN or infinity (a diverged run's) gives NaN,
    # quietly: the tables show it as such, and numpy's warning broke into an experiment's output
    with np.errstate(invalid="ignore", over="ignore"):
        return values[0] + np.tensordot(counts, values - values[0], axes=1) / len(values)


def bootstrap_se(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                 counts: np.ndarray | None = None) -> np.ndarray:
    """The bootstrap standard error of statistic(mean over windows of `values`), values (n, ...) per window.

    With m_r the mean of the values over resample r (r = 1..R, n windows drawn with replacement), the
    estimate is the sample standard deviation (ddof = 1) of statistic(m_r) over the R resamples.
    `statistic` maps the (R, ...) resampled means to (R, ...) values (None: the mean itself, so that the
    result, for large n and R, is the analytic se of a mean, std(values) / sqrt(n)). `counts` defaults to
    resample_counts(n). Returns the statistic's shape without the R axis; 0 when every window is the same.
    """
    counts = resample_counts(len(values)) if counts is None else counts
    means = resampled_means(values, counts)
    stats = means if statistic is None else np.asarray(statistic(means), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN in, NaN out (resampled_means), unsaid
        return (stats - stats[0]).std(axis=0, ddof=1)  # shifted: exactly 0 when every resample gives the same
