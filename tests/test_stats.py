"""vslm.lab.stats by simulation, no training: per-seed losses drawn from known distributions.

Every rate is checked within 3 binomial standard deviations of its simulation, with fixed seeds."""

import math

import numpy as np
import pytest
from scipy import stats

from vslm.lab.stats import (
    NO_TEST,
    compare,
    detectable_effect,
    holm,
    paired_difference,
    paired_power,
    planned_looks,
    resolved,
    spending_levels,
    summarize,
    verdict,
    welch,
)

EXPERIMENTS = 4000


def band(rate: float, n: int = EXPERIMENTS) -> float:
    """3 binomial standard deviations of a rate estimated from n simulated experiments."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def seed_losses(rng, experiments: int, seeds: int, arms: int, effects=None) -> np.ndarray:
    """(experiments, arms, seeds) losses: a per-seed level shared by every arm (the seed's data order and
    initial weights), plus independent noise of standard deviation 1/sqrt(2) per run, so that the per-seed
    differences between two arms have standard deviation 1; arm a shifted by effects[a]."""
    shared = rng.normal(2.0, 0.5, size=(experiments, 1, seeds))
    noise = rng.normal(0.0, math.sqrt(0.5), size=(experiments, arms, seeds))
    shift = np.zeros(arms) if effects is None else np.asarray(effects, dtype=float)
    return shared + noise + shift[None, :, None]


def test_the_paired_comparison_is_scipy_s_with_a_t_interval():
    base, var = [1.50, 1.42, 1.61, 1.55], [1.47, 1.40, 1.55, 1.50]
    c = paired_difference(base, var)
    d = np.subtract(var, base)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert c["test"] == "paired" and c["n"] == 4 and c["diff"] == pytest.approx(d.mean())
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c["p"] == pytest.approx(stats.ttest_rel(var, base).pvalue)
    w = welch(base, var)
    assert w["test"] == "Welch" and w["p"] == pytest.approx(stats.ttest_ind(var, base, equal_var=False).pvalue)
    assert w["ci_low"] < w["diff"] < w["ci_high"] and w["ci_high"] - w["ci_low"] > c["ci_high"] - c["ci_low"]
    # the Welch-Satterthwaite interval itself (a 90% one, or a normal quantile, is narrower and would pass above)
    interval = stats.ttest_ind(var, base, equal_var=False).confidence_interval(0.95)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((interval.low, interval.high), rel=1e-9)
    with pytest.raises(ValueError, match="paired seeds"):
        paired_difference(base, var[:3])


def test_fewer_than_3_seeds_give_no_test():
    for c in (paired_difference([1.0, 1.2], [0.5, 0.6]), welch([1.0, 1.2], [0.5, 0.6, 0.55]),
              paired_difference([1.0], [0.5])):
        assert math.isnan(c["p"])
        assert verdict(c["p"], c["n"], c["diff"]) == NO_TEST == "n < 3: no test"
    assert not math.isnan(paired_difference([1.0, 1.2], [0.5, 0.6])["ci_low"])  # an interval, but no test
    assert verdict(0.001, 2, -1.0) == NO_TEST and verdict(0.001, 3, -1.0) == "better (p<0.05)"
    assert verdict(0.001, 3, 1.0) == "worse (p<0.05)" and verdict(0.05, 3, 1.0) == "within noise"
    assert verdict(math.nan, 0, 0.0, baseline=True) == "baseline"


def test_holm_adjusts_step_down_and_skips_untested():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == 0.5
    assert holm([0.9, 0.3]) == [0.9, 0.6] and holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []


def test_the_paired_test_s_false_positive_rate_is_5_percent_under_no_effect():
    rng = np.random.default_rng(0)
    losses = seed_losses(rng, EXPERIMENTS, seeds=5, arms=2)
    ps = np.array([paired_difference(e[0], e[1])["p"] for e in losses])
    assert abs((ps < 0.05).mean() - 0.05) < band(0.05)
    # the 95% interval covers the true difference (0) as often
    covered = [(c := paired_difference(e[0], e[1]))["ci_low"] <= 0 <= c["ci_high"] for e in losses[:2000]]
    assert abs(np.mean(covered) - 0.95) < band(0.05, 2000)
    # Welch on the same runs ignores the shared seed level: its rate stays at or below 5% too
    ws = np.array([welch(e[0], e[1])["p"] for e in losses[:2000]])
    assert (ws < 0.05).mean() < 0.05 + band(0.05, 2000)


def test_holm_holds_the_family_wise_rate_over_5_null_variants():
    rng = np.random.default_rng(1)
    losses = seed_losses(rng, EXPERIMENTS, seeds=4, arms=6)  # a baseline and 5 variants, no effect anywhere
    diffs = losses[:, 1:, :] - losses[:, :1, :]
    raw = stats.ttest_1samp(diffs, 0.0, axis=2).pvalue  # (experiments, 5): ttest_rel of each variant
    assert raw[0] == pytest.approx([paired_difference(losses[0, 0], losses[0, v])["p"] for v in range(1, 6)])
    any_raw = (raw < 0.05).any(axis=1).mean()
    any_holm = np.mean([min(holm(list(row))) < 0.05 for row in raw])
    assert any_raw > 0.15  # uncorrected, five tests find something in about 1 - 0.95^5 of null experiments
    assert any_holm <= 0.05 + band(0.05)


@pytest.mark.parametrize("seeds", [5, 10])
def test_a_one_standard_deviation_effect_is_found_as_often_as_the_power_formula_says(seeds):
    rng = np.random.default_rng(seeds)
    losses = seed_losses(rng, EXPERIMENTS, seeds=seeds, arms=2, effects=[0.0, -1.0])  # differences: sd 1
    p = stats.ttest_rel(losses[:, 1], losses[:, 0], axis=1).pvalue
    expected = paired_power(1.0, seeds)
    assert abs((p < 0.05).mean() - expected) < band(expected)
    assert expected == pytest.approx({5: 0.40, 10: 0.80}[seeds], abs=0.02)


def test_the_detectable_effect_is_the_power_formula_solved():
    assert math.isnan(detectable_effect(2))
    for n in (3, 5, 10):
        assert paired_power(detectable_effect(n), n) == pytest.approx(0.8, abs=1e-6)
    assert detectable_effect(10) < detectable_effect(5) < detectable_effect(3)
    c = compare([1.0, 1.1, 1.3, 1.2], [0.9, 1.05, 1.1, 1.15], paired=True)
    spread = np.std(np.subtract([0.9, 1.05, 1.1, 1.15], [1.0, 1.1, 1.3, 1.2]), ddof=1)
    assert c["detectable"] == pytest.approx(detectable_effect(4) * spread)


def run(seed: int, loss: float) -> dict:
    return {"seed": seed, "val_loss": loss, "val_bpb": loss * 1.44, "params": 10, "flops_per_token": 60}


def test_summarize_uses_paired_tests_and_holm_and_no_test_below_3_seeds():
    runs = {"base": [run(s, x) for s, x in enumerate([1.50, 1.42, 1.61, 1.55])],
            "better": [run(s, x) for s, x in enumerate([1.40, 1.33, 1.50, 1.46])],
            "same": [run(s, x) for s, x in enumerate([1.51, 1.41, 1.62, 1.54])]}
    summary = summarize(runs, 1000)
    assert summary["base"]["verdict"] == "baseline" and math.isnan(summary["base"]["p_value"])
    raw = [stats.ttest_rel([r["val_loss"] for r in runs[v]], [r["val_loss"] for r in runs["base"]]).pvalue
           for v in ("better", "same")]
    for v, p, adjusted in zip(("better", "same"), raw, holm(raw), strict=True):
        assert summary[v]["test"] == "paired" and summary[v]["p_value"] == pytest.approx(p)
        assert summary[v]["p_holm"] == pytest.approx(adjusted)
    assert summary["better"]["verdict"] == "better (p<0.05)" and summary["same"]["verdict"] == "within noise"
    welched = summarize(runs, 1000, paired={"better": False, "same": True})
    assert welched["better"]["test"] == "Welch" and welched["same"]["test"] == "paired"
    two = summarize({v: rs[:2] for v, rs in runs.items()}, 1000, paired=False)
    assert two["better"]["verdict"] == NO_TEST and math.isnan(two["better"]["p_value"])
    assert two["better"]["test"] == "Welch" and not math.isnan(two["better"]["ci_low"])


def test_the_tests_seeds_detectable_difference_and_a_failed_baseline_are_the_tests_own():
    losses = {"base": [1.50, 1.42, 1.61, 1.55], "a": [1.40, 1.33, 1.50, 1.46], "b": [1.51, 1.41, 1.62, 1.54]}
    runs = {v: [run(s, x) for s, x in enumerate(xs)] for v, xs in losses.items()}
    runs["base"][0] = {"seed": 0, "failed": "diverged"}  # 3 pairs left of 4 seeds
    summary = summarize(runs, 1000)
    assert summary["a"]["seeds"] == 4 and summary["a"]["test_n"] == 3
    from vslm.lab.tables import summary_rows

    assert summary_rows(summary)[1][7] == "paired (n=3)"
    diffs = np.subtract(losses["a"][1:], losses["base"][1:])
    # two variants tested: the difference found with 80% power at Holm's strictest level, 0.05 / 2
    assert summary["a"]["detectable"] == pytest.approx(detectable_effect(3, alpha=0.025) * np.std(diffs, ddof=1))
    assert paired_power(detectable_effect(3, alpha=0.025), 3, alpha=0.025) == pytest.approx(0.8, abs=1e-6)
    alone = summarize({v: runs[v] for v in ("base", "a")}, 1000)  # one variant: the level itself
    assert alone["a"]["detectable"] == pytest.approx(detectable_effect(3) * np.std(diffs, ddof=1))
    failed = summarize({"base": [{"seed": s, "failed": "diverged"} for s in range(3)], "a": runs["a"]}, 1000)
    assert failed["base"]["verdict"] == "baseline: every run failed" and math.isnan(failed["base"]["diff_vs_baseline"])
    assert failed["a"]["verdict"] == "no test: every baseline run failed"
    assert summary_rows(failed)[0][6] == "-" and not resolved(failed, 10.0)
    # a variant none of whose runs finished trained no budget to show; the others show theirs
    assert math.isnan(failed["base"]["tokens"]) and summary_rows(failed)[0][3] == "-"
    assert failed["a"]["tokens"] == 1000 and summary_rows(failed)[1][3] == "1,000"


def resolve(losses: np.ndarray, width: float, looks: list[int], alpha: float = 0.05) -> dict[str, dict]:
    """The sequential procedure of `vslm experiment --resolve width --max-seeds looks[-1]` on one simulated
    experiment (arms x seeds losses, arm 0 the baseline): the summary at the look where it stops."""
    levels = spending_levels(looks, alpha)
    for look, (n, level) in enumerate(zip(looks, levels, strict=True)):
        runs = {f"v{a}": [run(s, float(x)) for s, x in enumerate(arm[:n])] for a, arm in enumerate(losses)}
        summary = summarize(runs, 1000, alpha=level)
        if resolved(summary, width) or look == len(looks) - 1:
            return summary | {"_look": {"n": n}}


def test_spending_levels_sum_to_alpha_and_favour_the_last_look():
    levels = spending_levels([3, 6, 9, 12])
    assert sum(levels) == pytest.approx(0.05) and levels[0] < 1e-3 and levels[-1] == max(levels)
    assert spending_levels([12]) == pytest.approx([0.05])
    assert planned_looks(3, 12) == [3, 6, 9, 12] and planned_looks(3, 10) == [3, 6, 9, 10]
    with pytest.raises(ValueError, match="increase"):
        spending_levels([6, 3])


def test_seeds_added_until_resolved_keep_the_false_positive_rate():
    """Under no effect, 5 variants against a baseline, a stopping rule that looks at the intervals after
    every round of 3 seeds: Holm at the look's spent level keeps the family-wise rate at most 5%, where
    testing every look at 0.05 does not."""
    rng = np.random.default_rng(3)
    sims, looks, width = 2000, [3, 6, 9, 12], 0.9  # width: about half the experiments stop before 12 seeds
    spent = naive = stopped_early = 0
    for _ in range(sims):
        losses = seed_losses(rng, 1, seeds=looks[-1], arms=6)[0]
        summary = resolve(losses, width, looks)
        stopped_early += summary.pop("_look")["n"] < looks[-1]
        spent += any(s["verdict"].startswith(("better", "worse")) for s in summary.values())
        for n in looks:  # the naive procedure: a test at 0.05 at every look, stopping at the first verdict
            runs = {f"v{a}": [run(s, float(x)) for s, x in enumerate(arm[:n])] for a, arm in enumerate(losses)}
            if any(s["verdict"].startswith(("better", "worse")) for s in summarize(runs, 1000).values()):
                naive += 1
                break
    assert 0.2 < stopped_early / sims < 0.9  # the rule does stop early, often
    assert spent / sims <= 0.05 + band(0.05, sims)
    assert naive / sims > 0.05 + band(0.05, sims)  # repeated looks without spending inflate the rate


def test_a_resolving_experiment_finds_a_true_effect_and_reports_its_level():
    rng = np.random.default_rng(4)
    losses = seed_losses(rng, 1, seeds=12, arms=2, effects=[0.0, -1.5])[0]
    summary = resolve(losses, 0.5, [3, 6, 9, 12])
    n = summary.pop("_look")["n"]
    level = summary["v1"]["alpha"]
    assert level == pytest.approx(spending_levels([3, 6, 9, 12])[[3, 6, 9, 12].index(n)])
    assert summary["v1"]["verdict"] == f"better (p<{level:.3g})"


def test_transfer_scores_each_corpus_by_its_excess_over_the_in_domain_models_and_tests_against_the_best():
    """Three corpora, three seeds: a row's score is its mean excess over each other corpus's own models
    (its own column left out), the best row is named, and the others are Welch-tested against it, Holm
    across them."""
    from vslm.lab.stats import holm, transfer

    names = ["a", "b", "c"]
    home = {"a": [1.0, 1.1, 0.9], "b": [2.0, 2.2, 1.8], "c": [3.0, 3.0, 3.0]}
    bpb = {(e, e): v for e, v in home.items()}
    bpb |= {("a", "b"): [2.5, 2.6, 2.4], ("a", "c"): [3.5, 3.3, 3.7],   # a: +0.5 on both
            ("b", "a"): [1.2, 1.3, 1.1], ("b", "c"): [3.2, 3.2, 3.2],   # b: +0.2 on both (the best)
            ("c", "a"): [2.0, 2.1, 2.2], ("c", "b"): [3.0, 3.2, 3.1]}   # c: +1.1
    out = transfer(bpb, names)
    assert out["b"]["verdict"] == "best"
    a_scores = [((2.5 - 2.0) + (3.5 - 3.0)) / 2, ((2.6 - 2.0) + (3.3 - 3.0)) / 2, ((2.4 - 2.0) + (3.7 - 3.0)) / 2]
    assert out["a"]["scores"] == pytest.approx(a_scores) and out["a"]["mean"] == pytest.approx(0.5)
    assert out["b"]["mean"] == pytest.approx(0.2) and out["c"]["mean"] == pytest.approx(1.1)
    raw = [stats.ttest_ind(out[t]["scores"], out["b"]["scores"], equal_var=False).pvalue for t in ("a", "c")]
    assert [out["a"]["p"], out["c"]["p"]] == pytest.approx(raw)
    assert [out["a"]["p_holm"], out["c"]["p_holm"]] == pytest.approx(holm(raw))
    assert out["a"]["diff"] == pytest.approx(0.3) and out["c"]["diff"] == pytest.approx(0.9)
    assert out["c"]["verdict"].startswith("worse") and out["c"]["ci_low"] > 0
    two = transfer({k: v[:2] for k, v in bpb.items()}, names)  # two seeds: no test
    assert two["a"]["verdict"] == "n < 3: no test"
