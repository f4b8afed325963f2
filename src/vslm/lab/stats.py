"""Statistics over seeds: mean and sample spread, paired and Welch comparisons with the baseline, Holm's
correction across the variants of one table, the power of the paired t-test, and a verdict.

Pure Python, numpy and scipy, no torch (an import-linter contract keeps it so): tests/test_stats.py
simulates thousands of experiments in a few seconds.

Seed s gives every variant of an experiment the same data order, validation windows and probe set
when the variants change only model or optimizer fields (tests/test_pairing.py pins it), so the
per-seed differences pair: the comparison is a paired t-test on them. Where the variants change
what the seeds decide (the data, the context, the batch), the seeds do not pair and the comparison
is Welch's t-test. With fewer than 3 seeds in an arm there is no test: the verdict says "n < 3: no
test" and the p-values are NaN.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

SIGNIFICANCE = 0.05
MIN_SEEDS = 3  # fewer seeds per arm: no test
NO_TEST = "n < 3: no test"
POWER = 0.8  # the power at which the smallest detectable effect is reported


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


def _no_difference(test: str, n: int, diff: float) -> dict:
    return {"test": test, "n": n, "diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}


def paired_difference(baseline: Sequence[float], variant: Sequence[float], level: float = 0.95) -> dict:
    """variant - baseline over seeds that pair (element i of both is seed i): {"test": "paired", "n",
    "diff" (the mean difference), "ci_low", "ci_high" (its t-based confidence interval), "p" (two-sided,
    scipy.stats.ttest_rel)}. The interval needs 2 seeds, the p-value MIN_SEEDS; else NaN."""
    from scipy import stats

    if len(baseline) != len(variant):
        raise ValueError(f"paired seeds: {len(baseline)} baseline values against {len(variant)}")
    diffs = [v - b for b, v in zip(baseline, variant, strict=True)]
    n = len(diffs)
    out = _no_difference("paired", n, statistics.mean(diffs) if diffs else math.nan)
    if n < 2:
        return out
    half = stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    if n >= MIN_SEEDS:
        out["p"] = float(stats.ttest_rel(variant, baseline).pvalue)
    return out


def welch(baseline: Sequence[float], variant: Sequence[float], level: float = 0.95) -> dict:
    """variant - baseline when the seeds do not pair: {"test": "Welch", "n" (the smaller arm), "diff",
    "ci_low", "ci_high" (Welch-Satterthwaite interval), "p" (two-sided, scipy.stats.ttest_ind with
    equal_var=False)}. The interval needs 2 seeds per arm, the p-value MIN_SEEDS; else NaN."""
    from scipy import stats

    n = min(len(baseline), len(variant))
    out = _no_difference("Welch", n, statistics.mean(variant) - statistics.mean(baseline) if n else math.nan)
    if n < 2:
        return out
    va, vb = statistics.variance(variant) / len(variant), statistics.variance(baseline) / len(baseline)
    se = math.sqrt(va + vb)
    if se > 0:
        df = (va + vb) ** 2 / (va**2 / (len(variant) - 1) + vb**2 / (len(baseline) - 1))
        half = stats.t.ppf(0.5 + level / 2, df) * se
        out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    if n >= MIN_SEEDS:
        out["p"] = float(stats.ttest_ind(variant, baseline, equal_var=False).pvalue)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the family-wise error rate of rejecting
    every adjusted p < alpha is at most alpha. NaN (no test) stays NaN and is not counted in the family."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m, out, running = len(tested), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(adjusted_p: float, n: int, diff: float, baseline: bool = False) -> str:
    """A comparison in words, lower is better (a loss): on the Holm-adjusted p, and none below MIN_SEEDS."""
    if baseline:
        return "baseline"
    if n < MIN_SEEDS or math.isnan(adjusted_p):
        return NO_TEST
    return "within noise" if adjusted_p >= SIGNIFICANCE else "better (p<0.05)" if diff < 0 else "worse (p<0.05)"


def paired_power(effect: float, n: int, alpha: float = SIGNIFICANCE) -> float:
    """The power of the two-sided paired t-test over n seeds against a true mean difference of `effect`
    standard deviations of the per-seed differences: exact, from the noncentral t distribution
    (scipy.stats.nct, noncentrality effect * sqrt(n), n - 1 degrees of freedom)."""
    from scipy import stats

    if n < 2:
        return math.nan
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
    nc = abs(effect) * math.sqrt(n)
    # far in a tail scipy's nct can answer NaN for a probability that is 0 (or 1) to double precision
    upper = stats.nct.sf(crit, df, nc)
    upper = 1.0 if math.isnan(upper) else float(upper)
    lower = stats.nct.cdf(-crit, df, nc)
    return min(1.0, upper + (0.0 if math.isnan(lower) else float(lower)))


def detectable_effect(n: int, power: float = POWER, alpha: float = SIGNIFICANCE) -> float:
    """The smallest true effect, in standard deviations of the per-seed differences, that the paired
    t-test over n seeds finds with the given power (paired_power solved for the effect); NaN below
    MIN_SEEDS."""
    from scipy import optimize

    if n < MIN_SEEDS:
        return math.nan
    return float(optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 1e-6, 50.0))


def compare(baseline: Sequence[float], variant: Sequence[float], paired: bool) -> dict:
    """paired_difference or welch, plus "detectable": the smallest difference (in the loss's units) found
    with 80% power at this many seeds, from the spread of the differences (Welch: of the two arms)."""
    out = paired_difference(baseline, variant) if paired else welch(baseline, variant)
    if paired:
        spread = sample_std([v - b for b, v in zip(baseline, variant, strict=True)])
    else:
        spread = math.sqrt(sample_std(variant) ** 2 + sample_std(baseline) ** 2) if out["n"] > 1 else math.nan
    out["detectable"] = detectable_effect(out["n"]) * spread if out["n"] >= MIN_SEEDS else math.nan
    return out


def summarize(runs: dict[str, list[dict]], tokens: int, paired: dict[str, bool] | bool = True) -> dict[str, dict]:
    """Per variant: cost, mean and sample std, and its val_loss against the first variant (the baseline):
    the mean difference and its 95% interval, the test (paired where the variant's seeds pair with the
    baseline's, `paired` per variant or for all, else Welch), the raw p, Holm's p across the table's
    variants, and the verdict on Holm's p. runs[variant] is in seed order."""
    baseline = next(iter(runs))
    ref = [r["val_loss"] for r in runs[baseline]]
    summary, comparisons = {}, {}
    for name, rs in runs.items():
        losses, bpbs = [r["val_loss"] for r in rs], [r["val_bpb"] for r in rs]
        summary[name] = {"params": rs[0]["params"], "flops_per_token": rs[0]["flops_per_token"], "tokens": tokens,
                         "val_loss_mean": statistics.mean(losses), "val_loss_std": sample_std(losses),
                         "val_bpb_mean": statistics.mean(bpbs), "val_bpb_std": sample_std(bpbs), "seeds": len(rs)}
        if name != baseline:
            pairs = paired[name] if isinstance(paired, dict) else paired
            pairs = pairs and [r.get("seed") for r in rs] == [r.get("seed") for r in runs[baseline]]
            comparisons[name] = compare(ref, losses, pairs)
    adjusted = dict(zip(comparisons, holm([c["p"] for c in comparisons.values()]), strict=True))
    for name, s in summary.items():
        c = comparisons.get(name, _no_difference("", len(ref), 0.0) | {"detectable": math.nan})
        s.update(diff_vs_baseline=c["diff"], ci_low=c["ci_low"], ci_high=c["ci_high"], test=c["test"],
                 p_value=c["p"], p_holm=adjusted.get(name, math.nan), detectable=c["detectable"],
                 verdict=verdict(adjusted.get(name, math.nan), c["n"], c["diff"], name == baseline))
    return summary
