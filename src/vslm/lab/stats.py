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

Seeds decided by the data (`vslm experiment --resolve W --max-seeds M`): seeds are added in rounds
until every variant's 95% interval is at most ±W wide. The stopping time depends on the observed
spread, and stopping when the spread happens to look small inflates a t-test run at 0.05; so the test at
the look where the experiment stops runs at that look's share of alpha, spent over the planned looks
by the Lan-DeMets O'Brien-Fleming rule (spending_levels). The shares sum to alpha, so by the union bound
the family-wise false-positive rate over every look is at most alpha whatever the stopping rule
(tests/test_stats.py simulates it). The intervals stay nominal 95% intervals.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

SIGNIFICANCE = 0.05
MIN_SEEDS = 3  # fewer seeds per arm: no test
NO_TEST = "n < 3: no test"
POWER = 0.8  # the power at which the smallest detectable effect is reported


def mean(xs: Sequence[float]) -> float:
    """The mean in floats (statistics.mean's exact fractions are slow); NaN for none."""
    return math.fsum(xs) / len(xs) if len(xs) else math.nan


def sample_std(xs: Sequence[float]) -> float:
    """The sample standard deviation; NaN for fewer than two values (a spread over one seed is undefined).
    In floats (statistics.stdev's exact fractions cost 50x more, and the simulations call it a million times)."""
    n = len(xs)
    if n < 2:
        return math.nan
    m = math.fsum(xs) / n
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """{"mean", "std"}; both NaN if any value is NaN (a landmark some seed never reached)."""
    if any(math.isnan(x) for x in xs):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": mean(xs), "std": sample_std(xs)}


def _no_difference(test: str, n: int, diff: float) -> dict:
    return {"test": test, "n": n, "diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: scipy.stats.t.ppf's number from its ufunc, without the distribution object's
    argument checks (70 times faster, and summaries run thousands of times in tests/test_stats.py)."""
    from scipy import special

    return float(special.stdtrit(df, p))


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p of a t statistic: 2 * scipy.stats.t.sf(|t|, df), from its ufunc."""
    from scipy import special

    return float(2 * special.stdtr(df, -abs(t)))


def paired_difference(baseline: Sequence[float], variant: Sequence[float], level: float = 0.95) -> dict:
    """variant - baseline over seeds that pair (element i of both is seed i): {"test": "paired", "n",
    "diff" (the mean difference), "ci_low", "ci_high" (its t-based confidence interval), "p" (two-sided,
    scipy.stats.ttest_rel)}. The interval needs 2 seeds, the p-value MIN_SEEDS; else NaN."""
    if len(baseline) != len(variant):
        raise ValueError(f"paired seeds: {len(baseline)} baseline values against {len(variant)}")
    diffs = [v - b for b, v in zip(baseline, variant, strict=True)]
    n = len(diffs)
    out = _no_difference("paired", n, mean(diffs) if diffs else math.nan)
    if n < 2:
        return out
    se = sample_std(diffs) / math.sqrt(n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    if n >= MIN_SEEDS:  # scipy.stats.ttest_rel's p, without its wrappers' cost
        out["p"] = t_two_sided_p(out["diff"] / se, n - 1) if se > 0 else \
            (1.0 if out["diff"] == 0 else 0.0)
    return out


def welch(baseline: Sequence[float], variant: Sequence[float], level: float = 0.95) -> dict:
    """variant - baseline when the seeds do not pair: {"test": "Welch", "n" (the smaller arm), "diff",
    "ci_low", "ci_high" (Welch-Satterthwaite interval), "p" (two-sided, scipy.stats.ttest_ind with
    equal_var=False)}. The interval needs 2 seeds per arm, the p-value MIN_SEEDS; else NaN."""
    n = min(len(baseline), len(variant))
    out = _no_difference("Welch", n, mean(variant) - mean(baseline) if n else math.nan)
    if n < 2:
        return out
    va, vb = sample_std(variant) ** 2 / len(variant), sample_std(baseline) ** 2 / len(baseline)
    se = math.sqrt(va + vb)
    if se > 0:
        df = (va + vb) ** 2 / (va**2 / (len(variant) - 1) + vb**2 / (len(baseline) - 1))
        half = t_quantile(0.5 + level / 2, df) * se
        out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    if n >= MIN_SEEDS:  # scipy.stats.ttest_ind(equal_var=False)'s p (tests/test_stats.py compares them)
        out["p"] = t_two_sided_p(out["diff"] / se, df) if se > 0 else (1.0 if out["diff"] == 0 else 0.0)
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


def verdict(adjusted_p: float, n: int, diff: float, baseline: bool = False, alpha: float = SIGNIFICANCE) -> str:
    """A comparison in words, lower is better (a loss): on the Holm-adjusted p at level alpha, and none below
    MIN_SEEDS."""
    if baseline:
        return "baseline"
    if n < MIN_SEEDS or math.isnan(adjusted_p):
        return NO_TEST
    if adjusted_p >= alpha:
        return "within noise"
    return f"{'better' if diff < 0 else 'worse'} (p<{alpha:.3g})"


def spending_levels(looks: Sequence[int], alpha: float = SIGNIFICANCE) -> list[float]:
    """The share of alpha each planned look may spend: looks are the seed counts at which the data are
    examined (increasing, the last one the most seeds allowed), information t = n / n_max, and the Lan-DeMets
    O'Brien-Fleming spending function alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)). Early looks get
    little (a look at 3 of 12 seeds: 9e-5), the last nearly all; the shares sum to alpha."""
    from scipy import stats

    if not looks or any(b <= a for a, b in zip(looks, looks[1:], strict=False)):
        raise ValueError(f"looks must increase: {list(looks)}")
    z = stats.norm.ppf(1 - alpha / 2)
    spent = [2 * (1 - stats.norm.cdf(z / math.sqrt(n / looks[-1]))) for n in looks]
    return [b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True)]


def planned_looks(first: int, max_seeds: int, step: int | None = None) -> list[int]:
    """The seed counts at which a resolving experiment looks: first, first + step, ..., max_seeds (step:
    first, so that every round adds as many seeds as the first had)."""
    step = step or first
    looks = list(range(first, max_seeds, step))
    return [*looks, max_seeds]


def resolved(summary: dict[str, dict], width: float) -> bool:
    """Whether every variant's 95% interval of its difference from the baseline is at most ±width (or, of a
    transfer table, every corpus's against the best)."""
    halves = [(s["ci_high"] - s["ci_low"]) / 2 for s in summary.values() if s["verdict"] not in ("baseline", "best")]
    return all(not math.isnan(h) and h <= width for h in halves)


def paired_power(effect: float, n: int, alpha: float = SIGNIFICANCE) -> float:
    """The power of the two-sided paired t-test over n seeds against a true mean difference of `effect`
    standard deviations of the per-seed differences: exact, from the noncentral t distribution
    (scipy.stats.nct, noncentrality effect * sqrt(n), n - 1 degrees of freedom)."""
    from scipy import stats

    if n < 2:
        return math.nan
    df, crit = n - 1, t_quantile(1 - alpha / 2, n - 1)
    nc = abs(effect) * math.sqrt(n)
    # far in a tail scipy's nct can answer NaN for a probability that is 0 (or 1) to double precision
    upper = stats.nct.sf(crit, df, nc)
    upper = 1.0 if math.isnan(upper) else float(upper)
    lower = stats.nct.cdf(-crit, df, nc)
    return min(1.0, upper + (0.0 if math.isnan(lower) else float(lower)))


@functools.lru_cache(maxsize=256)  # a pure function of its arguments, asked once per comparison
def detectable_effect(n: int, power: float = POWER, alpha: float = SIGNIFICANCE) -> float:
    """The smallest true effect, in standard deviations of the per-seed differences, that the paired
    t-test over n seeds finds with the given power (paired_power solved for the effect); NaN below
    MIN_SEEDS."""
    from scipy import optimize

    if n < MIN_SEEDS:
        return math.nan
    high = 50.0
    while paired_power(high, n, alpha) < power:  # a small level on few seeds: far out
        if high > 1e6:
            return math.inf
        high *= 10
    return float(optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 1e-6, high))


def compare(baseline: Sequence[float], variant: Sequence[float], paired: bool, alpha: float = SIGNIFICANCE) -> dict:
    """paired_difference or welch, plus "detectable": the smallest difference (in the loss's units) found
    with 80% power at this many seeds and level alpha, from the spread of the differences (Welch: of the
    two arms)."""
    out = paired_difference(baseline, variant) if paired else welch(baseline, variant)
    if paired:
        spread = sample_std([v - b for b, v in zip(baseline, variant, strict=True)])
    else:
        spread = math.sqrt(sample_std(variant) ** 2 + sample_std(baseline) ** 2) if out["n"] > 1 else math.nan
    out["detectable"] = detectable_effect(out["n"], alpha=alpha) * spread if out["n"] >= MIN_SEEDS else math.nan
    return out


def summarize(runs: dict[str, list[dict]], tokens: int, paired: dict[str, bool] | bool = True,
              alpha: float = SIGNIFICANCE) -> dict[str, dict]:
    """Per variant: cost, mean and sample std, and its val_loss against the first variant (the baseline):
    the mean difference and its 95% interval, the test (paired where the variant's seeds pair with the
    baseline's, `paired` per variant or for all, else Welch) and its number of seeds (test_n: pairs, or
    the smaller arm), the raw p, Holm's p across the table's variants, the verdict on Holm's p at level
    alpha, and the difference that verdict finds with 80% power (detectable: at alpha over the number of
    variants tested, Holm's strictest step, so that a difference this large is found whatever the others
    show). runs[variant] is in seed order; a run with
    "failed" (it diverged or crashed) is left out and counted in "failed", and a paired comparison uses
    the seeds both arms finished."""
    def ok(rs: list[dict]) -> list[dict]:
        return [r for r in rs if "failed" not in r]

    baseline = next(iter(runs))
    base_runs = ok(runs[baseline])
    summary, arms = {}, {}  # arms: {variant: (baseline's losses, its losses, paired)}
    for name, all_runs in runs.items():
        rs = ok(all_runs)
        losses, bpbs = [r["val_loss"] for r in rs], [r["val_bpb"] for r in rs]
        summary[name] = {"params": rs[0]["params"] if rs else math.nan,
                         "flops_per_token": rs[0]["flops_per_token"] if rs else math.nan,
                         "tokens": tokens if rs else math.nan,
                         "val_loss_mean": mean(losses) if rs else math.nan,
                         "val_loss_std": sample_std(losses), "val_bpb_mean": mean(bpbs) if rs else math.nan,
                         "val_bpb_std": sample_std(bpbs), "seeds": len(rs), "failed": len(all_runs) - len(rs),
                         "alpha": alpha}
        if name != baseline and rs and base_runs:
            if paired[name] if isinstance(paired, dict) else paired:
                seeds = {r.get("seed") for r in rs} & {r.get("seed") for r in base_runs}
                arms[name] = ([r["val_loss"] for r in base_runs if r.get("seed") in seeds],
                              [r["val_loss"] for r in rs if r.get("seed") in seeds], True)
            else:
                arms[name] = ([r["val_loss"] for r in base_runs], losses, False)
    # the variants tested (a test needs MIN_SEEDS pairs, or per arm): Holm's family, whose strictest level,
    # alpha / family, the detectable difference is found at
    family = sum(min(len(ref), len(values)) >= MIN_SEEDS for ref, values, _ in arms.values())
    comparisons = {name: compare(ref, values, pair, alpha / max(family, 1))
                   for name, (ref, values, pair) in arms.items()}
    adjusted = dict(zip(comparisons, holm([c["p"] for c in comparisons.values()]), strict=True))
    for name, s in summary.items():
        c = comparisons.get(name, _no_difference("", 0, math.nan if name != baseline else 0.0)
                            | {"detectable": math.nan})
        s.update(diff_vs_baseline=c["diff"], ci_low=c["ci_low"], ci_high=c["ci_high"], test=c["test"],
                 test_n=c["n"], p_value=c["p"], p_holm=adjusted.get(name, math.nan), detectable=c["detectable"],
                 verdict=verdict(adjusted.get(name, math.nan), c["n"], c["diff"], name == baseline, alpha))
        if not s["seeds"]:  # the baseline too: no difference from it, and none of the others tested
            s["verdict"] = "every run failed" if name != baseline else "baseline: every run failed"
            s["diff_vs_baseline"] = math.nan
        elif name != baseline and not base_runs:
            s["verdict"] = "no test: every baseline run failed"
    return summary


def transfer(bpb: dict[tuple[str, str], Sequence[float]], names: Sequence[str], alpha: float = SIGNIFICANCE) -> dict:
    """Which training text transfers, from a train x eval matrix of per-seed bits per byte (bpb[train, eval],
    element s of seed s): a run's excess on corpus e is its bpb there minus the mean bpb of the runs trained
    on e itself, and its transfer score is its mean excess over the other corpora (0 would be as good as
    training on each of them). The excess, not the raw bpb, because the corpora differ in how hard they
    are and each row leaves out its own. Each corpus is compared with the best (lowest mean) by Welch's
    t-test (the seeds do not pair across corpora), Holm across the others; per corpus: "scores" (per seed),
    "mean", "std", and for the others "diff", "ci_low", "ci_high", "p", "p_holm", "verdict"."""
    home = {e: mean(bpb[e, e]) for e in names}
    out = {}
    for t in names:
        seeds = len(bpb[t, t])
        scores = [mean([bpb[t, e][s] - home[e] for e in names if e != t]) for s in range(seeds)]
        out[t] = {"scores": scores, **mean_std(scores)}
    best = min(names, key=lambda t: out[t]["mean"])
    others = [t for t in names if t != best]
    tests = {t: welch(out[best]["scores"], out[t]["scores"]) for t in others}
    for t, p_holm in zip(others, holm([tests[t]["p"] for t in others]), strict=True):
        n = min(len(out[t]["scores"]), len(out[best]["scores"]))
        out[t].update(diff=tests[t]["diff"], ci_low=tests[t]["ci_low"], ci_high=tests[t]["ci_high"],
                      p=tests[t]["p"], p_holm=p_holm, verdict=verdict(p_holm, n, tests[t]["diff"], alpha=alpha))
    out[best]["verdict"] = "best"
    return out
