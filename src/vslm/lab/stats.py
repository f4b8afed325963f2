"""Statistics over seeds: mean and sample spread, Welch's t-test, a verdict.

Pure Python and scipy, no torch (an import-linter contract keeps it so): tests can simulate thousands
of experiments in seconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SIGNIFICANCE = 0.05


def sample_std(xs: Sequence[float]) -> float:
    """The sample standard deviation; NaN for fewer than two values (a spread over one seed is undefined)."""
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """{"mean", "std"}; both NaN if any value is NaN (a landmark some seed never reached)."""
    if any(math.isnan(x) for x in xs):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.mean(xs), "std": sample_std(xs)}


def welch_p(xs: Sequence[float], ref: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances) of xs against ref; NaN with fewer than 2 of either."""
    if min(len(xs), len(ref)) < 2:
        return math.nan
    from scipy import stats

    return float(stats.ttest_ind(xs, ref, equal_var=False).pvalue)


def verdict(p: float, diff: float, baseline: bool = False) -> str:
    """A comparison in words: lower is better (a loss)."""
    if baseline:
        return "baseline"
    if math.isnan(p):
        return "untested (1 seed)"
    return "within noise" if p >= SIGNIFICANCE else "better (p<0.05)" if diff < 0 else "worse (p<0.05)"


def summarize(runs: dict[str, list[dict]], tokens: int) -> dict[str, dict]:
    """Per variant: cost, mean and sample std, and Welch's t-test of val_loss against the first (baseline)."""
    baseline = next(iter(runs))
    ref = [r["val_loss"] for r in runs[baseline]]
    summary = {}
    for name, rs in runs.items():
        losses, bpbs = [r["val_loss"] for r in rs], [r["val_bpb"] for r in rs]
        p = welch_p(losses, ref) if name != baseline else math.nan
        diff = statistics.mean(losses) - statistics.mean(ref)
        summary[name] = {"params": rs[0]["params"], "flops_per_token": rs[0]["flops_per_token"], "tokens": tokens,
                         "val_loss_mean": statistics.mean(losses), "val_loss_std": sample_std(losses),
                         "val_bpb_mean": statistics.mean(bpbs), "val_bpb_std": sample_std(bpbs),
                         "diff_vs_baseline": diff, "p_value": p, "verdict": verdict(p, diff, name == baseline)}
    return summary
