"""A run folder read back as plain data: the files the trainer wrote, nothing computed from a model.

The file names are repeated here rather than imported from `vslm.train.run_folder`, which imports
torch: a report must be drawable from any run folder without the training stack (DESIGN.md).
"""

from __future__ import annotations

import json
import math
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError
from vslm.files import read_jsonl

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"
SUMMARY = "summary.json"
SAMPLES = "samples.txt"
FACTS = "facts-eval.json"  # `vslm facts eval RUN` (vslm.report.facts)
SE = "_se"  # suffix of a probe value's standard error over windows (vslm.train.probing)


@dataclass
class RunFiles:
    """What one run folder holds; a file that is absent leaves its field empty."""

    folder: Path
    config_text: str
    config: dict
    metrics: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    samples: str = ""
    facts: dict = field(default_factory=dict)  # the last `vslm facts eval` of the run, if any

    def __repr__(self) -> str:  # a notebook cell that ends in read_run(...): a line, not every row of the run
        last = self.metrics[-1].get("step") if self.metrics else None
        return (f"RunFiles({str(self.folder)!r}: config {self.name!r}, {len(self.metrics)} metrics rows"
                f"{f' to step {last}' if last is not None else ''}, {len(self.probes)} probe rows"
                f"{', a facts evaluation' if self.facts else ''})")

    @property
    def name(self) -> str:
        return self.config.get("name") or self.folder.name

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a metric over the logged steps that carry it, e.g. `val_loss` on eval steps only."""
        rows = [(m["step"], m[key]) for m in self.metrics if _finite(m.get(key))]
        return np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows], dtype=float)

    def final(self, key: str) -> float:
        """The last logged value of a metric; NaN if it was never logged."""
        values = self.series(key)[1]
        return float(values[-1]) if len(values) else math.nan

    @property
    def warmup(self) -> int:
        """train.warmup of the run's config; TrainConfig's default for a config.toml without the key."""
        from vslm.config import TrainConfig

        return self.config.get("train", {}).get("warmup", TrainConfig.model_fields["warmup"].default)

    @property
    def probe_steps(self) -> np.ndarray:
        return np.array([p["step"] for p in self.probes], dtype=float)

    def probe_values(self, *path: str) -> np.ndarray:
        """One scalar per probe step, following the keys in `path`; null (written for NaN) and missing -> NaN."""
        out = []
        for p in self.probes:
            value = p
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            out.append(value if _finite(value) else math.nan)
        return np.array(out, dtype=float)

    def probe_errors(self, *path: str) -> np.ndarray:
        """The bootstrap standard error over windows beside probe_values(*path) (its key + "_se", written
        since the probe set grew to 256 windows); NaN where a probe line has none (older files)."""
        return self.probe_values(*path[:-1], path[-1] + SE)


def read_run(folder: Path, warn: Callable[[str], None] | None = None) -> RunFiles:
    """A run folder's files; a folder without `config.toml` is not a run folder (a one-line error). A malformed
    line of metrics.jsonl or probes.jsonl is skipped with a one-line warning (`warn`, default: stderr)."""
    folder = Path(folder)
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise VSLMError(f"{folder} is not a run folder (no {CONFIG})")
    try:
        text = config_path.read_text(encoding="utf-8")
        config = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VSLMError(f"{config_path} is not valid TOML: {e}") from None
    summary_path = folder / SUMMARY
    samples_path = folder / SAMPLES
    return RunFiles(
        folder=folder,
        config_text=text,
        config=config,
        metrics=read_jsonl(folder / METRICS, warn),
        probes=read_jsonl(folder / PROBES, warn),
        summary=_read_json(summary_path) if summary_path.is_file() else {},
        samples=samples_path.read_text(encoding="utf-8", errors="replace") if samples_path.is_file() else "",
        facts=_facts(folder / FACTS, warn),
    )


def _facts(path: Path, warn: Callable[[str], None] | None) -> dict:
    """The run's facts-eval.json; one that does not read is said (`warn`, default stderr) and left out: the rest
    of the report does not depend on it."""
    if not path.is_file():
        return {}
    try:
        facts = _read_json(path)
        if facts and not isinstance(facts.get("by_hops"), dict):
            raise VSLMError(f"{path} is not a facts evaluation (no by_hops)")
        return facts
    except VSLMError as e:
        (warn or (lambda line: print(line, file=sys.stderr)))(f"warning: {e}; the report leaves it out")
        return {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VSLMError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


M1_NEAR_ZERO = 0.05  # nats: KL(u || p_bar) below this counts as "the mean prediction is the unigram"


C_MAX = 5.0  # power_law_fit's bound on the exponent


def power_law_fit(curve: np.ndarray) -> dict[str, float]:
    """Least-squares fit of RESEARCH.md section 1's L(t) = L_inf + b t^-c to a loss curve (position_loss),
    t = 1 .. len(curve) tokens of context: {"L_inf", "b", "c", "rmse"} (nats; c in [0, 5], b >= 0: a curve
    that does not fall gives b near 0). NaN everywhere when the curve has fewer than 4 finite points or the
    fit does not converge; NaN but for rmse when the best fit is no power law (the curve falls as log t: c runs
    to 0 as b grows without bound, the fit's L_inf far below the curve); b and c NaN where c reaches its bound (the
    curve falls within its first positions and is flat after: L_inf is its level, no exponent is estimated)."""
    from scipy.optimize import curve_fit

    t = np.arange(1, len(curve) + 1, dtype=float)
    ok = np.isfinite(curve)
    nan = {"L_inf": math.nan, "b": math.nan, "c": math.nan, "rmse": math.nan}
    if ok.sum() < 4:
        return nan

    def law(t, l_inf, b, c):
        return l_inf + b * t ** -c

    y = np.asarray(curve, dtype=float)[ok]
    start = (float(y[-1]), max(float(y[0] - y[-1]), 1e-3), 0.5)
    try:
        (l_inf, b, c), _ = curve_fit(law, t[ok], y, p0=start, bounds=([-np.inf, 0, 0], [np.inf, np.inf, C_MAX]),
                                     maxfev=20000)
    except (RuntimeError, ValueError):
        return nan
    rmse = float(np.sqrt(np.mean((law(t[ok], l_inf, b, c) - y) ** 2)))
    if c < 0.01 and b > max(10 * float(np.ptp(y)), 1e-3):  # c run down to 0, b up without bound: L = a - k ln t,
        return nan | {"rmse": rmse}  # not a power law; its L_inf (thousands of nats below the curve) means nothing
    if c > C_MAX - 1e-3:  # at its bound: the curve falls in its first positions and is flat after, no exponent to
        return nan | {"L_inf": float(l_inf), "rmse": rmse}  # estimate (a fit's 5.00 read as one); its level stands
    return {"L_inf": float(l_inf), "b": float(b), "c": float(c), "rmse": rmse}


def finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN where there is none (a band of a diverged probe), without numpy's
    warning."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def log_slope(curve: np.ndarray, bands: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """d loss / d log t of a loss curve (Olsson et al. 2022's heat map), on log-spaced bands of positions
    (a single position's loss is noisy): the mean loss of each of `bands` bands between t = 1 and
    len(curve), then the difference of neighbours over the difference of their mean log t. Returns where
    each slope sits, exp of the mean of its two bands' mean log t (len n - 1), and the slopes (len n - 1),
    n the bands that hold a position."""
    t = np.arange(1, len(curve) + 1, dtype=float)
    edges = np.unique(np.round(np.geomspace(1, len(curve) + 1, bands + 1)).astype(int))
    groups = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    loss = np.array([finite_mean(curve[lo - 1 : hi - 1]) for lo, hi in groups])
    where = np.array([np.log(t[lo - 1 : hi - 1]).mean() for lo, hi in groups])
    return np.exp((where[:-1] + where[1:]) / 2), np.diff(loss) / np.diff(where)


def loss_bands(steps: np.ndarray, loss: np.ndarray, bands: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training loss on log-spaced bands of the logged steps (one step's loss is noisy): each band's mean
    step, mean loss and the standard error of that mean (the spread of its steps' losses over the root of
    their count: conservative, the trend within a band counts as noise; infinite for a band of one step).
    Empty with fewer than 2 logged steps."""
    ok = np.isfinite(loss) & (np.asarray(steps) >= 1)
    steps, loss = np.asarray(steps, dtype=float)[ok], np.asarray(loss, dtype=float)[ok]
    if len(steps) < 2 or steps[-1] <= steps[0]:
        return np.array([]), np.array([]), np.array([])
    band = np.minimum((np.log(steps / steps[0]) / np.log(steps[-1] / steps[0]) * bands).astype(int), bands - 1)
    groups = [loss[band == k] for k in np.unique(band)]
    se = [g.std(ddof=1) / math.sqrt(len(g)) if len(g) > 1 else math.inf for g in groups]
    return (np.array([steps[band == k].mean() for k in np.unique(band)]), np.array([g.mean() for g in groups]),
            np.array(se))


def loss_bump(steps: np.ndarray, loss: np.ndarray, after: float = 0, bands: int = 16,
              z: float = 2.0) -> dict[str, np.ndarray | float]:
    """RESEARCH.md section 1's bump in the training loss at a phase change: a loss that falls faster per step
    than it did before. A power law or an exponential only ever falls slower per step, a steady decline keeps
    its pace, a stall and then a drop speeds up. On log-spaced bands of the steps from `after` on (the end of
    warm-up, while the loss speeds up with the lr; loss_bands), the bands that set a new low (a spike and
    its recovery neither set a pace nor count), and between neighbouring ones the fall per step
    r = -(loss_b - loss_a) / (step_b - step_a) with its standard error se. Where r - z se exceeds the slowest
    pace before it, the smallest earlier r + z se (at least 0: a stalled loss has pace 0), the excess times
    the steps it lasts is what the loss fell beyond that pace: noise within z standard errors counts for
    nothing. Returns "size", the sum (nats; 0 for a loss that never speeds up; after a stall, about all it
    fell after), "step", the middle of the pair that most exceeds its pace (NaN if none), and, for the
    figure, "bands" (the mean steps of the bands that set a new low), "at" (the pairs' middles), "rate" (r)
    and "excess" (per pair, nats); size and step NaN with fewer than 3 pairs."""
    steps, loss = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
    kept = steps >= max(after, 1)
    at_band, mean_loss, se = loss_bands(steps[kept], loss[kept], bands)
    lows = [k for k in range(len(mean_loss)) if k == 0 or mean_loss[k] < mean_loss[:k].min()]
    at_band, mean_loss, se = at_band[lows], mean_loss[lows], se[lows]
    at = (at_band[:-1] + at_band[1:]) / 2
    span = np.diff(at_band)
    rate = -np.diff(mean_loss) / span if len(at_band) > 1 else np.array([])
    rate_se = np.hypot(se[:-1], se[1:]) / span if len(at_band) > 1 else np.array([])
    excess = np.zeros(len(at))
    out = {"bands": at_band, "at": at, "rate": rate, "excess": excess, "size": math.nan, "step": math.nan}
    if len(rate) < 3:
        return out
    pace = np.maximum(np.minimum.accumulate(rate + z * rate_se)[:-1], 0.0)  # the slowest pace before each pair
    faster = np.nan_to_num(np.maximum(rate[1:] - z * rate_se[1:] - pace, 0.0))  # a one-step band: unknown, 0
    excess[1:] = faster * span[1:]
    out["size"] = float(excess.sum())
    if faster.max() > 0:
        out["step"] = float(at[1 + int(np.argmax(faster))])
    return out


def steepest_drop(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Where a probe value (the ICL score) falls fastest per e-fold of steps: (rate, step), the rate
    -(v_b - v_a) / (ln(1 + s_b) - ln(1 + s_a)) between neighbouring probes and the step between them
    (the geometric mean of 1 + s_a and 1 + s_b, less 1). NaN with fewer than 2 finite probes at distinct
    steps, or where it never falls."""
    ok = np.isfinite(values)
    steps, values = np.asarray(steps, dtype=float)[ok], np.asarray(values, dtype=float)[ok]
    x = np.log1p(steps)
    apart = np.diff(x) > 0  # a probe logged twice at one step (a resume) is no interval
    if not apart.any():
        return math.nan, math.nan
    rate = np.where(apart, -np.diff(values) / np.where(apart, np.diff(x), 1.0), -np.inf)
    k = int(np.argmax(rate))
    return (float(rate[k]), float(np.expm1((x[k] + x[k + 1]) / 2))) if rate[k] > 0 else (math.nan, math.nan)


def diagnostics_series(run: RunFiles) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{statistic: {matrix: (steps, values)}} of the weight diagnostics the run logged (`diag/<matrix>/<stat>`,
    logging.diagnostics_every), finite values only (a matrix may lack a step: an update ratio of a LoRA B
    that starts at 0); {} without them."""
    keys = sorted({k for m in run.metrics for k in m if k.startswith("diag/")})
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in keys:
        matrix, _, stat = key.removeprefix("diag/").rpartition("/")
        steps, values = run.series(key)
        if len(values):
            out.setdefault(stat, {})[matrix] = (steps, values)
    return out


def diagnostics_summary(run: RunFiles) -> dict[str, float]:
    """The weight diagnostics of a run that logged them (logging.diagnostics_every; RESEARCH.md section 6),
    over every hidden matrix and every logged step; {} without them:

      diag_update_ratio:   mean ||W_after - W_before|| / ||W_before|| of a step, the angular step;
      diag_cos_w_grad:     mean cosine between a weight row and its gradient (tangent descent: near 0);
      diag_row_norm_drift: mean over matrices of |last / first - 1| of the mean row norm (tangent descent
                           with retraction: 0, the norms held).
    """
    stats = {stat: {matrix: list(values) for matrix, (_, values) in by_matrix.items()}
             for stat, by_matrix in diagnostics_series(run).items()}
    if not stats:
        return {}

    def mean_of(stat: str) -> float:
        values = [v for series in stats.get(stat, {}).values() for v in series]
        return float(np.mean(values)) if values else math.nan

    drift = [abs(series[-1] / series[0] - 1) for series in stats.get("row_norm", {}).values() if series[0] > 0]
    return {"diag_update_ratio": mean_of("update_ratio"), "diag_cos_w_grad": mean_of("cos_w_grad"),
            "diag_row_norm_drift": float(np.mean(drift)) if drift else math.nan}


def dynamics_summary(run: RunFiles) -> dict[str, float | str]:
    """The training-dynamics landmarks of a run that has probes (RESEARCH.md sections 1 and 2); NaN where
    the probes or the metrics do not tell:

      init_position_spread:  max - min over positions of the loss by position at the first probe (step 0):
                             near 0 = flat, as an untrained model's should be;
      position_law_inf, position_law_c: L_inf and c of L(t) = L_inf + b t^-c fitted to the loss by position
                             at the last probe (power_law_fit; c says little where b is near 0);
      icl_score, icl_label:  at the last probe (negative = later tokens are predicted better);
      icl_score_se:          its bootstrap standard error over the probe windows (NaN in older probe files);
      prefix_matching_max:   the highest prefix-matching score of any head at the last probe;
      induction_loss_first, induction_loss_second: loss on the first and on the repeated copy, last probe;
      induction_loss_multiset: the best order-blind loss on the repeated copy (below it: copying by order);
      repeat_reliability, repeat_reliability_3: how often copying the token after the latest earlier
                             occurrence of the last 1 or 3 tokens is right in the training text
                             (probes.repeat_statistics);
      m1_near_zero_step:     the first probe step where KL(u || p_bar) < M1_NEAR_ZERO;
      unigram_loss_step:     the first logged step where the training loss is at or below H(unigram);
      bigram_loss_step:      the same for H(bigram) (RESEARCH.md expects it after unigram_loss_step);
      m2_min_step, m3_min_step: the probe step of the lowest M2 = KL(u || p) and M3 = KL(b || p), each the mean
                             over positions (section 2: M2 is U-shaped, lowest when the model predicts the
                             unigram everywhere; M3's minimum comes later);
      attn_row_sum, attn_entropy_ratio, attn_entropy_slope: at the last probe, the mean over every head at
                             every depth of probes.attention_stats' row_sum, entropy_ratio and entropy_slope;
      attn_sink_max:         the highest sink fraction of any head at the last probe;
      loss_bump, loss_bump_step: the phase change's bump in the training loss (RESEARCH.md section 1): the
                             nats the loss fell, after warm-up, beyond the slowest pace per step it had
                             kept before, and where it sped up most (loss_bump);
      icl_drop, icl_drop_step: the ICL score's steepest fall per e-fold of steps between probes, and where
                             (steepest_drop): a phase change shows both at about the same step.
    """
    if not run.probes:
        return {}
    first, last = run.probes[0], run.probes[-1]
    curve = np.array([v if _finite(v) else math.nan for v in first.get("position_loss", [])], dtype=float)
    heads = [h for depth in last.get("induction", {}).get("prefix_matching", []) for h in depth if _finite(h)]
    m1 = run.probe_values("distribution", "M1")
    near_zero = run.probe_steps[m1 < M1_NEAR_ZERO]
    h_unigram = first.get("distribution", {}).get("unigram_entropy")
    steps, loss = run.series("loss")
    below = steps[loss <= h_unigram] if _finite(h_unigram) else np.array([])
    h_bigram = first.get("distribution", {}).get("bigram_entropy")
    below_bigram = steps[loss <= h_bigram] if _finite(h_bigram) else np.array([])
    induction = last.get("induction", {})
    attention = last.get("attention", [])

    def per_head(key: str) -> np.ndarray:
        return np.array([v if _finite(v) else math.nan for depth in attention for v in depth.get(key, [])], dtype=float)

    def lowest(key: str) -> float:
        values = run.probe_values("distribution", key)
        return float(run.probe_steps[np.nanargmin(values)]) if np.isfinite(values).any() else math.nan

    def mean_of(key: str) -> float:
        values = per_head(key)
        return float(values.mean()) if len(values) else math.nan  # NaN where a head's is (or older probes)

    law = power_law_fit(np.array([v if _finite(v) else math.nan for v in last.get("position_loss") or []],
                                 dtype=float))
    bump = loss_bump(steps, loss, after=run.warmup)
    icl_drop, icl_drop_step = steepest_drop(run.probe_steps, run.probe_values("icl_score"))
    return {
        "init_position_spread": float(np.nanmax(curve) - np.nanmin(curve)) if len(curve) else math.nan,
        "position_law_inf": law["L_inf"],
        "position_law_c": law["c"],
        "icl_score": last["icl_score"] if _finite(last.get("icl_score")) else math.nan,
        "icl_score_se": last["icl_score_se"] if _finite(last.get("icl_score_se")) else math.nan,
        "icl_label": last.get("icl_label", ""),
        "prefix_matching_max": max(heads) if heads else math.nan,
        "induction_loss_first": induction.get("loss_first", math.nan),
        "induction_loss_second": induction.get("loss_second", math.nan),
        "induction_loss_multiset": induction.get("loss_multiset", math.nan),
        "repeat_reliability": induction.get("repeat_reliability", math.nan),
        "repeat_reliability_3": induction.get("repeat_reliability_3", math.nan),
        "m1_near_zero_step": float(near_zero[0]) if len(near_zero) else math.nan,
        "unigram_loss_step": float(below[0]) if len(below) else math.nan,
        "bigram_loss_step": float(below_bigram[0]) if len(below_bigram) else math.nan,
        "m2_min_step": lowest("M2"),
        "m3_min_step": lowest("M3"),
        "attn_row_sum": mean_of("row_sum"),
        "attn_entropy_ratio": mean_of("entropy_ratio"),
        "attn_entropy_slope": mean_of("entropy_slope"),
        "attn_sink_max": float(np.nanmax(sinks)) if np.isfinite(sinks := per_head("sink_fraction")).any() else math.nan,
        "loss_bump": bump["size"],
        "loss_bump_step": bump["step"],
        "icl_drop": icl_drop,
        "icl_drop_step": icl_drop_step,
    }
