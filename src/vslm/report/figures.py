"""The report's figures, drawn from a run's files with matplotlib and returned as base64 PNG.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: no global state and no
GUI backend, so drawing works headless, in threads and in tests (PNG output goes through Agg).
Probe figures put the step on a log(1 + step) axis: probes are log-spaced (0, 1, 2, 4, ...), and
the early steps are where the distribution and context curves change most.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, NullLocator

from vslm.report.runs import (
    RunFiles,
    diagnostics_series,
    finite_mean,
    log_slope,
    loss_bands,
    loss_bump,
    power_law_fit,
    steepest_drop,
)

WIDTH = 9.0  # inches: 900 pixels at DPI, about the width of the page's column
DPI = 100
CURVES = 6  # loss-by-position curves drawn for this many probe steps


def png_base64(fig: Figure) -> str:
    """The figure as base64 PNG, for an <img src="data:image/png;base64,..."> that needs no file beside the page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(columns: int = 1, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    return fig, list(fig.subplots(1, columns, squeeze=False)[0])


def _log_steps(ax: Axes, max_step: float, axis: str = "x") -> None:
    """A log(1 + step) axis labelled with plain steps 0, 1, 2, 5, 10, 20, 50, ...: step 0 stays on it."""
    max_step = max(max_step, 1.0)  # a run probed at step 0 only still gets a non-empty axis
    getattr(ax, f"set_{axis}scale")("function", functions=(np.log1p, np.expm1))
    _plain_ticks(getattr(ax, f"{axis}axis"), max_step, zero=True)
    pad = 0.04 * math.log1p(max_step)  # a margin set in log space: the linear default can reach step -1
    getattr(ax, f"set_{axis}lim")(math.expm1(-pad), math.expm1(math.log1p(max_step) + pad))


def _round_numbers(top: float, mantissas: tuple[int, ...] = (1, 2, 5)) -> list[float]:
    """m * 10^k for m in `mantissas`, up to `top`."""
    return [m * 10.0**k for k in range(int(math.log10(max(top, 1))) + 1) for m in mantissas
            if m * 10.0**k <= top]


@functools.lru_cache(maxsize=1024)  # asked for the same few labels thousands of times a figure
def _label_points(text: str, axis_name: str, size: float | str) -> float:
    """A tick label's extent along its axis (width on x, height on y), in points, with a gap of half a
    character: the tick font of that size, measured without drawing."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size)
    width, height, _ = text_to_path.get_text_width_height_descent(text, prop, ismath=False)
    return (width if axis_name == "x" else height) + prop.get_size_in_points() / 2


class _RoundTicks(Locator):
    """Ticks at round numbers (1, 2, 5, 10, ... or sparser), the axis' end `top` and 0 if asked, as many as
    the drawn axis has room for: at draw time it takes the densest of its tiers (1-2-5 per decade down to
    one tick every few decades) whose labels do not touch, and drops a round tick that would touch `top`'s
    label. A step axis to 100,000 on a half-width panel would otherwise write its labels over each other."""

    def __init__(self, top: float, zero: bool):
        super().__init__()
        self.top, self.zero = top, zero

    def tiers(self) -> list[list[float]]:
        """1-2-5 per decade; then 1, 10, 100, ...; then 10, 100, ... (1 may touch 0); then 100, 10^4, ...
        and sparser."""
        decades = int(math.log10(max(self.top, 1))) + 1
        rounds = [_round_numbers(self.top), _round_numbers(self.top, (1,))]
        rounds += [[10.0**k for k in range(every, decades, every)] for every in range(1, decades)]
        return [sorted({*([0.0] if self.zero else []), *r, self.top}) for r in rounds]

    def __call__(self) -> list[float]:
        tiers = self.tiers()
        if self.axis is None or self.axis.axes is None:
            return tiers[0]
        for ticks in tiers:
            kept = self._clear_of_top(ticks)
            if self._fit(kept):
                return kept
        return [0.0, self.top] if self.zero else [self.top]

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        return self()

    def _pixels(self, ticks: list[float]) -> np.ndarray:
        """Where the ticks fall along the drawn axis, in display pixels."""
        scale = self.axis.get_transform()
        low, high = scale.transform(np.asarray(self.axis.get_view_interval(), dtype=float))
        bbox = self.axis.axes.bbox
        length = bbox.width if self.axis.axis_name == "x" else bbox.height
        return (scale.transform(np.asarray(ticks, dtype=float)) - low) / (high - low) * length

    def _extent(self, tick: float) -> float:
        """The room a tick's label takes along the axis, in pixels, with a gap of half a character."""
        from matplotlib import rcParams

        name = self.axis.axis_name
        return _label_points(f"{tick:,.0f}", name, rcParams[f"{name}tick.labelsize"]) * self.axis.axes.figure.dpi / 72

    def _touch(self, a: float, b: float) -> bool:
        pa, pb = self._pixels([a, b])
        return abs(pb - pa) < (self._extent(a) + self._extent(b)) / 2

    def _clear_of_top(self, ticks: list[float]) -> list[float]:
        return [t for t in ticks if t == self.top or (t == 0 and self.zero) or not self._touch(t, self.top)]

    def _fit(self, ticks: list[float]) -> bool:
        return not any(self._touch(a, b) for a, b in itertools.pairwise(ticks))


def _plain_ticks(axis: Axis, top: float, zero: bool = False) -> None:
    """Round ticks up to `top` (and `top` itself), as many as fit, written as plain numbers (not 10^1),
    without minor ticks."""
    axis.set_major_locator(_RoundTicks(top, zero))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axis.set_minor_locator(NullLocator())


def _reference(ax: Axes, level: float, label: str, color: str) -> None:
    if math.isfinite(level):
        ax.axhline(level, color=color, linestyle="--", linewidth=1, label=f"{label} = {level:.3f}")


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan


def has_bpb_axis(run: RunFiles) -> bool:
    """Whether loss_figure draws its right axis in bits per byte (it needs a validation loss and its bpb)."""
    val, bpb = run.series("val_loss")[1], run.series("val_bpb")[1]
    return bool(len(bpb) and len(val) and val[-1] > 0)


def loss_figure(run: RunFiles) -> Figure:
    """Training loss at every logged step, validation loss at eval steps, bits per byte on the right axis."""
    fig, (ax,) = _figure()
    steps, loss = run.series("loss")
    ax.plot(steps, loss, "-" if len(loss) > 1 else "o", color="C0", linewidth=1, markersize=3, label="train loss")
    val_steps, val = run.series("val_loss")
    if len(val):
        ax.plot(val_steps, val, "o-", color="C3", markersize=4, label="val loss")
    bpb = run.series("val_bpb")[1]
    if has_bpb_axis(run):
        per_nat = bpb[-1] / val[-1]  # bits per byte per nat per token: a constant of the tokenizer and corpus
        right = ax.secondary_yaxis("right", functions=(lambda y: y * per_nat, lambda b: b / per_nat))
        right.set_ylabel("bits per byte")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _position_matrix(run: RunFiles, key: str = "position_loss") -> np.ndarray:
    """(probe steps, positions) loss matrix (or, with key "position_loss_se", its standard errors); NaN where
    a probe wrote null or lacks the key."""
    width = max(len(p.get("position_loss") or []) for p in run.probes)
    matrix = np.full((len(run.probes), width), np.nan)
    for i, p in enumerate(run.probes):
        row = [math.nan if v is None else v for v in p.get(key) or []]
        matrix[i, : len(row)] = row[:width]
    return matrix


Z95 = 1.96  # bands are value +- 1.96 se: a 95% interval over the choice of probe windows
BAND = f"shaded: ± {Z95} se (bootstrap over the probe windows)"


def _band_legend(ax: Axes, label: str = BAND) -> None:
    """One grey legend entry standing for every band of the panel: a wide pale line without data (an empty
    fill_between trips the log(1 + step) axis' transform)."""
    ax.plot([], [], color="grey", alpha=0.3, linewidth=8, solid_capstyle="butt", label=label)


def _band(ax: Axes, x: np.ndarray, values: np.ndarray, se: np.ndarray, color, label: str | None = None) -> bool:
    """Shade values +- Z95 se where both are finite (older probe files have no se: nothing is drawn);
    returns whether anything was."""
    finite = np.isfinite(values) & np.isfinite(se)
    if not finite.any():
        return False
    ax.fill_between(x, values - Z95 * se, values + Z95 * se, where=finite, color=color, alpha=0.2, linewidth=0,
                    label=label)
    return True


def has_position_loss(run: RunFiles) -> bool:
    return any(p.get("position_loss") for p in run.probes)


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges halfway between centers (len + 1), the outer ones as far out as the nearest gap (1 if one)."""
    gaps = np.diff(centers) if len(centers) > 1 else np.array([1.0])
    return np.concatenate([[centers[0] - gaps[0] / 2], centers[:-1] + gaps / 2, [centers[-1] + gaps[-1] / 2]])


def position_heatmap(run: RunFiles) -> Figure:
    """Loss by position (x) at each probe step (y, log-scaled): RESEARCH.md section 1's steps x positions matrix."""
    matrix = _position_matrix(run)
    steps = run.probe_steps
    edges = _edges(np.log1p(steps))  # in log(1 + step): each row a band around its step
    positions = np.arange(matrix.shape[1] + 1) + 0.5  # position t (1 .. T-1 tokens of context) spans t +- 0.5
    fig, (ax,) = _figure(height=4.2)
    mesh = ax.pcolormesh(positions, np.expm1(edges), matrix, cmap="viridis", shading="flat")
    _log_steps(ax, steps[-1], axis="y")
    ax.set_ylim(np.expm1(edges[0]), np.expm1(edges[-1]))
    ax.set_xlabel("position (tokens of context)")
    ax.set_ylabel("training step")
    fig.colorbar(mesh, ax=ax, label="loss (nats)")
    return fig


def position_slope_heatmap(run: RunFiles) -> Figure:
    """d loss / d log t over positions (x, log-spaced bands) at each probe step (y, log-scaled): Olsson et al.
    2022's view of where in the context the loss falls. Blue: the loss falls with position there."""
    from matplotlib.colors import TwoSlopeNorm

    matrix, steps = _position_matrix(run), run.probe_steps
    rows = [log_slope(row) for row in matrix]
    where = rows[0][0]
    slopes = np.array([r[1] for r in rows])
    edges, x_edges = _edges(np.log1p(steps)), np.exp(_edges(np.log(where)))
    top = float(np.nanmax(np.abs(slopes))) if np.isfinite(slopes).any() else 1.0
    fig, (ax,) = _figure(height=4.2)
    mesh = ax.pcolormesh(x_edges, np.expm1(edges), slopes, cmap="RdBu_r", shading="flat",
                         norm=TwoSlopeNorm(0.0, -max(top, 1e-6), max(top, 1e-6)))
    _log_steps(ax, steps[-1], axis="y")
    ax.set_ylim(np.expm1(edges[0]), np.expm1(edges[-1]))
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, float(x_edges[-1]))
    ax.set_xlabel("position (tokens of context, log scale)")
    ax.set_ylabel("training step")
    fig.colorbar(mesh, ax=ax, label="d loss / d log t (nats)")
    return fig


def position_curves(run: RunFiles) -> Figure:
    """Loss against position (log x) at a few probe steps spread evenly in log(step), with ln V for reference
    and, where the probes wrote it, a band of +- 1.96 standard errors over windows at each position."""
    matrix, errors = _position_matrix(run), _position_matrix(run, "position_loss_se")
    picks = np.unique(np.round(np.geomspace(1, len(run.probes), min(CURVES, len(run.probes)))).astype(int) - 1)
    fig, (ax,) = _figure()
    positions = np.arange(1, matrix.shape[1] + 1)
    banded = False
    for n, i in enumerate(picks):
        color = _viridis(n, len(picks))
        ax.plot(positions, matrix[i], color=color, label=f"step {run.probe_steps[i]:,.0f}")
        banded |= _band(ax, positions, matrix[i], errors[i], color)
    if banded:
        _band_legend(ax)
    law = power_law_fit(matrix[-1])
    if math.isfinite(law["c"]):  # the last probe's curve against RESEARCH.md's L(t) = L_inf + b t^-c
        ax.plot(positions, law["L_inf"] + law["b"] * positions ** -law["c"], "--", color="black", linewidth=1,
                label=f"fit at step {run.probe_steps[-1]:,.0f}: {law['L_inf']:.2f} + {law['b']:.2f} t^-{law['c']:.2f}")
    _reference(ax, _last_finite(run.probe_values("distribution", "log_vocab")), "ln V", "grey")
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, float(positions[-1]))
    ax.set_xlabel("position (tokens of context, log scale)")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def _viridis(n: int, count: int) -> tuple[float, float, float, float]:
    """The n-th of `count` colours from dark to light: early steps dark, late steps light."""
    return colormaps["viridis"](0.9 * n / max(count - 1, 1))


def has_errors(run: RunFiles) -> bool:
    """Whether the probes wrote standard errors over windows (files from before they did have none)."""
    return bool(np.isfinite(run.probe_errors("icl_score")).any() or any(p.get("position_loss_se") for p in run.probes))


def icl_label(run: RunFiles) -> str:
    labels = [p.get("icl_label") for p in run.probes if p.get("icl_label")]
    return labels[-1] if labels else ""


def icl_figure(run: RunFiles) -> Figure:
    """The in-context-learning score over training; below 0 the model does better late in the context. A band
    of +- 1.96 standard errors over windows where the probes wrote them; a dotted line at its steepest fall."""
    fig, (ax,) = _figure()
    steps, score = run.probe_steps, run.probe_values("icl_score")
    ax.plot(steps, score, "o-", color="C2", markersize=3, label=icl_name(icl_label(run)))
    _band(ax, steps, score, run.probe_errors("icl_score"), "C2", BAND)
    ax.axhline(0, color="grey", linewidth=1)
    rate, where = steepest_drop(steps, score)
    if math.isfinite(where):
        ax.axvline(where, color="C2", linestyle=":", linewidth=1.2,
                   label=f"steepest fall: {rate:.2f} nats per e-fold of steps, at step {where:,.0f}")
    _log_steps(ax, steps[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel("ICL score (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def loss_bump_figure(run: RunFiles) -> Figure:
    """The training loss on log-spaced bands of steps (loss_bands), with the spans where it fell faster per
    step than it had before, after warm-up, shaded: RESEARCH.md section 1's bump (loss_bump)."""
    fig, (ax,) = _figure(height=3.0)
    steps, loss = run.series("loss")
    at, mean_loss, _ = loss_bands(steps, loss)
    ax.plot(at, mean_loss, "o-", color="C0", markersize=3, label="training loss, mean over log-spaced bands of steps")
    bump = loss_bump(steps, loss, after=run.warmup)
    shaded = False
    for k in np.flatnonzero(bump["excess"] > 0):  # pair k: from band k to band k + 1 of the bump's own bands
        ax.axvspan(bump["bands"][k], bump["bands"][k + 1], color="C1", alpha=0.25, linewidth=0,
                   label=None if shaded else f"falling faster per step than before: {bump['size']:.3f} nats in all")
        shaded = True
    if math.isfinite(bump["step"]):
        ax.axvline(bump["step"], color="C1", linestyle=":", linewidth=1.2,
                   label=f"sped up most at step {bump['step']:,.0f}")
    _log_steps(ax, float(steps[-1]) if len(steps) else 1.0)  # the run's last step, as the other figures
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def icl_name(label: str) -> str:
    if label == "short-context":
        return "ICL score, short context: mean loss of the last T/10 tokens - of T/10 around token T/10"
    if label == "short-context-tokens":
        return "ICL score, short context: loss[T-1] - loss[T/10]"
    return "ICL score: loss at token 500 - mean loss at token 50"


def distribution_figure(run: RunFiles) -> Figure:
    """Left: M1, M2, M3 (KL from the unigram / bigram). Right: the probe loss against ln V, H(unigram), H(bigram)."""
    fig, (left, right) = _figure(columns=2)
    steps = run.probe_steps
    banded = False
    for n, (key, label) in enumerate((("M1", "M1 = KL(u || mean p)"), ("M2", "M2 = mean KL(u || p)"),
                                      ("M3", "M3 = mean KL(b || p)"))):
        values = run.probe_values("distribution", key)
        left.plot(steps, values, "o-", color=f"C{n}", markersize=3, label=label)
        banded |= _band(left, steps, values, run.probe_errors("distribution", key), f"C{n}")
    if banded:
        _band_legend(left)
    left.set_ylabel("KL (nats)")
    loss = np.array([finite_mean(_floats(p.get("position_loss"))) for p in run.probes])
    right.plot(steps, loss, "o-", color="C0", markersize=3, label="probe loss")
    _reference(right, _last_finite(run.probe_values("distribution", "log_vocab")), "ln V", "grey")
    _reference(right, _last_finite(run.probe_values("distribution", "unigram_entropy")), "H(unigram)", "C1")
    _reference(right, _last_finite(run.probe_values("distribution", "bigram_entropy")), "H(bigram)", "C2")
    right.set_ylabel("loss (nats)")
    _finish_step_axes((left, right), steps[-1])
    return fig


def _finish_step_axes(axes, last_step: int) -> None:
    """Training-step x axes (log-scaled), grid and legend on each panel."""
    for ax in axes:
        _log_steps(ax, last_step)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")


def _floats(values: list | None) -> np.ndarray:
    """A probe's list with null (NaN) as NaN; an all-missing list as one NaN so means stay defined."""
    return np.array([math.nan if v is None else v for v in values or [None]], dtype=float)


def has_loss_bump(run: RunFiles) -> bool:
    """Whether loss_bands has bands to draw: 2 logged steps or more past step 0 (loss_bump_figure)."""
    steps, loss = run.series("loss")
    kept = steps[np.isfinite(loss) & (steps >= 1)]
    return len(kept) >= 2 and kept[-1] > kept[0]


DIAGNOSTICS = (("row_norm", "mean row norm / its first value"), ("cos_w_grad", "cos(weight row, its gradient)"),
               ("update_ratio", "||W after - W before|| / ||W before||"))


def diagnostics_figure(run: RunFiles) -> Figure:
    """One panel a statistic: a thin line a hidden matrix, their mean at each step in black. Row norms relative to
    their first logged value (tangent descent with retraction holds them at 1)."""
    series = diagnostics_series(run)
    shown = [(stat, label) for stat, label in DIAGNOSTICS if stat in series]
    fig, axes = _figure(columns=len(shown))
    last = 1.0
    for ax, (stat, label) in zip(axes, shown, strict=True):
        at: dict[float, list[float]] = {}  # step: the matrices' values there (a matrix may lack a step)
        for steps, values in series[stat].values():
            if stat == "row_norm":
                if not values[0] > 0:  # no first norm to divide by (a matrix that starts at 0): left out
                    continue
                values = values / values[0]
            ax.plot(steps, values, color="C0", alpha=0.35, linewidth=0.8)
            for step, value in zip(steps, values, strict=True):
                at.setdefault(float(step), []).append(float(value))
            last = max(last, float(steps[-1]))
        steps = sorted(at)
        ax.plot(steps, [np.mean(at[s]) for s in steps], color="black", linewidth=1.5,
                label=f"mean over the {max(map(len, at.values()), default=0)} matrices at each step")
        ax.set_ylabel(label)
    _finish_step_axes(axes, last)
    return fig


def has_distribution(run: RunFiles) -> bool:
    return bool(np.isfinite(run.probe_values("distribution", "M1")).any())


def has_induction(run: RunFiles) -> bool:
    return bool(np.isfinite(run.probe_values("induction", "loss_second")).any())


def induction_figure(run: RunFiles) -> Figure:
    """Left: loss on the first and second copy of a repeated random sequence. Right: max prefix-matching per depth."""
    fig, (left, right) = _figure(columns=2)
    steps = run.probe_steps
    banded = False
    for n, (key, label) in enumerate((("loss_first", "first copy"), ("loss_second", "second copy"))):
        values = run.probe_values("induction", key)
        left.plot(steps, values, "o-", color=f"C{n}", markersize=3, label=label)
        banded |= _band(left, steps, values, run.probe_errors("induction", key), f"C{n}")
    if banded:
        _band_legend(left, f"shaded: ± {Z95} se (bootstrap over the sequences)")
    left.set_ylabel("loss (nats)")
    one, three = (_last_finite(run.probe_values("induction", key)) for key in ("repeat_reliability",
                                                                                "repeat_reliability_3"))
    if math.isfinite(one):
        left.set_title(f"copying right in the training text: {one:.0%} after 1 token"
                       + (f", {three:.0%} after 3" if math.isfinite(three) else ""), fontsize=9)
    depths = max(len((p.get("induction") or {}).get("prefix_matching") or []) for p in run.probes)
    for d in range(depths):
        best = []
        for p in run.probes:
            heads = ((p.get("induction") or {}).get("prefix_matching") or [])
            best.append(np.nanmax(_floats(heads[d])) if d < len(heads) and np.isfinite(_floats(heads[d])).any()
                        else math.nan)
        right.plot(steps, best, "o-", markersize=3, label=f"depth {d}", color=_viridis(d, depths))
    right.set_ylabel("max prefix-matching score over heads")
    _finish_step_axes((left, right), steps[-1])
    return fig


ATTENTION_PANELS = {
    "entropy_ratio": ("entropy / log(visible keys)", "viridis", (0.0, 1.0)),
    "sink_fraction": ("fraction of queries sinking on token 0", "magma", (0.0, 1.0)),
    "row_sum": ("total attention weight per query", "cividis", None),
}


def _head_matrix(attention: list[dict], key: str) -> np.ndarray:
    """(depth, head) matrix of one statistic; NaN-padded where depths have fewer heads (layer-wise scaling)."""
    rows = [_floats(a.get(key)) for a in attention]
    matrix = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for d, row in enumerate(rows):
        matrix[d, : len(row)] = row
    return matrix


def attention_panels(attention: list[dict]) -> list[str]:
    """The statistics worth drawing: row_sum only where some head's weights do not sum to 1 (not softmax)."""
    panels = ["entropy_ratio", "sink_fraction"]
    row_sum = _head_matrix(attention, "row_sum")
    if np.isfinite(row_sum).any() and np.nanmax(np.abs(row_sum - 1)) > 1e-3:
        panels.append("row_sum")
    return panels


def attention_figure(attention: list[dict]) -> Figure:
    """Depth x head heat maps of the attention statistics at one probe step, each cell labelled with its value."""
    panels = attention_panels(attention)
    heads = max(len(a.get("entropy_ratio") or []) for a in attention)
    fig, axes = _figure(columns=len(panels), height=1.2 + 0.45 * len(attention) + 0.02 * heads)
    for ax, key in zip(axes, panels, strict=True):
        title, cmap, limits = ATTENTION_PANELS[key]
        matrix = _head_matrix(attention, key)
        vmin, vmax = limits or (np.nanmin(matrix), np.nanmax(matrix))
        image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        if matrix.size <= 64:
            for (d, h), value in np.ndenumerate(matrix):
                if math.isfinite(value):
                    dark = (value - vmin) / ((vmax - vmin) or 1) < 0.6
                    ax.text(h, d, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
        ax.set_title(f"{key}: {title}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_yticks(range(len(attention)), [f"depth {d} (block {a.get('block', '?')})"
                                              for d, a in enumerate(attention)])
        fig.colorbar(image, ax=ax, shrink=0.9)
    return fig


def literal(label: str) -> str:
    """A run's or a prompt's name as a legend shows it, as typed: '$' starts no math (a '$x^2$' folder drew x²,
    an unbalanced one raised), and a leading '_' (which hides a legend entry) keeps it shown."""
    label = label.replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def comparison_axes(runs: list[RunFiles]) -> tuple[str, str]:
    """(x, y) of a loss comparison: x 'tokens' where the runs see different tokens per step (a step of batch 32
    is four of batch 8), else 'step'; y 'val_bpb' where their tokenizers differ (a loss per token compares only
    between runs of one tokenizer), else 'loss'."""
    per_step = {round(m["tokens"] / m["step"]) for run in runs for m in run.metrics[-1:]
                if isinstance(m.get("tokens"), int | float) and m.get("step")}
    tokenizers = {(run.summary.get("tokenizer"), run.summary.get("vocab_size")) for run in runs}
    return "tokens" if len(per_step) > 1 else "step", "val_bpb" if len(tokenizers) > 1 else "loss"


def _at(run: RunFiles, steps: np.ndarray, x: str) -> np.ndarray:
    """Steps as the x axis shows them: steps, or the tokens seen by then (metrics.jsonl's count)."""
    if x == "step":
        return steps
    at, tokens = run.series("tokens")
    return np.interp(steps, at, tokens) if len(at) else steps * np.nan


def compare_loss(runs: list[RunFiles], labels: list[str], x: str = "step", y: str = "loss") -> Figure:
    """Every run's training loss (line) and validation loss (dashed, dots) in one run colour; runs that share a
    label (an experiment's seeds of one variant) share its colour and its one legend entry. `x`, `y`:
    comparison_axes (y 'val_bpb': validation bits per byte alone, the loss per token of runs of other
    tokenizers not being comparable)."""
    fig, (ax,) = _figure(height=4.2)
    colours = {label: f"C{n % 10}" for n, label in enumerate(dict.fromkeys(labels))}
    seen: set[str] = set()
    for run, label in zip(runs, labels, strict=True):
        first = label not in seen
        seen.add(label)
        shown = literal(label)
        if y == "loss":
            steps, loss = run.series("loss")
            ax.plot(_at(run, steps, x), loss, "-" if len(loss) > 1 else "o", color=colours[label], linewidth=1,
                    markersize=3, alpha=0.8 if first else 0.5, label=f"{shown} train" if first else None)
        val_steps, val = run.series("val_loss" if y == "loss" else "val_bpb")
        if len(val):
            ax.plot(_at(run, val_steps, x), val, "o--", color=colours[label], markersize=4,
                    label=f"{shown} val" if first else None)
    ax.set_xlabel("tokens seen" if x == "tokens" else "step")
    ax.set_ylabel("loss (nats per token)" if y == "loss" else "validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def loss_caption(x: str, y: str) -> str:
    """What a compare_loss figure plots, for its caption."""
    what = ("Training loss (lines) and validation loss (dashed, dots)" if y == "loss" else
            "Validation bits per byte (the runs' tokenizers differ: a loss per token would not compare)")
    where = (" against the tokens seen (the runs see different tokens per step)" if x == "tokens" else
             " against the step")
    return what + where


def compare_probe(runs: list[RunFiles], labels: list[str], path: tuple[str, ...], ylabel: str) -> Figure:
    """One probe scalar (the ICL score, M1) over training for every run that has it, in the runs' colours."""
    fig, (ax,) = _figure()
    last = 1.0
    for n, (run, label) in enumerate(zip(runs, labels, strict=True)):
        values = run.probe_values(*path)
        if np.isfinite(values).any():
            ax.plot(run.probe_steps, values, "o-", color=f"C{n % 10}", markersize=3, label=literal(label))
            last = max(last, float(run.probe_steps[-1]))
    _log_steps(ax, last)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def shape_figure(tokens: list[str], labels: list[str], metrics: dict[str, np.ndarray]) -> Figure:
    """How each prompt reshapes the continuation's next-token distributions, token by token (left: KL
    from the empty prompt's prediction and PMI; right: entropy). Takes `vslm.probes.shape_metrics` output."""
    fig, (left, right) = _figure(columns=2, height=3.8)
    n = len(tokens)
    x = np.arange(n)
    for k, label in enumerate(labels):
        color = f"C{k}"
        label = repr(label) if k else "(empty)"  # a prompt "empty" is not the empty prompt
        if k:
            left.plot(x, metrics["kl"][k, 0], "o-", markersize=3, color=color,
                      label=f"KL({literal(label)} || (empty))")
            left.plot(x, metrics["pmi"][k], "--", color=color, alpha=0.7, label=f"PMI {literal(label)}")
        right.plot(x, metrics["entropy"][k], "o-", markersize=3, color=color, label=literal(label))
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_ylabel("nats")
    right.set_ylabel("entropy of the next-token distribution (nats)")
    for ax in (left, right):
        ax.set_xticks(x[:: max(1, n // 20)], [repr(t)[1:-1] for t in tokens][:: max(1, n // 20)], rotation=60,
                      fontsize="small")
        ax.set_xlabel("continuation token")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def shape_course_figure(steps: list[int], prompts: list[str], tokens: list[str], js: np.ndarray,
                        rows: list[dict]) -> Figure:
    """A prompt's effect over training (`vslm shape --over-training`): left, the Jensen-Shannon from the
    empty prompt along the continuation (x) at each snapshot step (y, log-scaled), for the first prompt;
    right, log p(y | prompt) - log p(y | empty) over the steps, one line per prompt."""
    fig, (left, right) = _figure(columns=2, height=4.0)
    x = np.arange(len(tokens) + 1) - 0.5
    edges = np.expm1(_edges(np.log1p(np.asarray(steps, dtype=float))))
    mesh = left.pcolormesh(x, edges, js[:, 0, :], cmap="viridis", shading="flat")
    _log_steps(left, steps[-1], axis="y")
    left.set_ylim(edges[0], edges[-1])
    every = max(1, len(tokens) // 20)
    left.set_xticks(np.arange(len(tokens))[::every], [repr(t)[1:-1] for t in tokens][::every], rotation=60,
                    fontsize="small")
    left.set_xlabel(literal(f"continuation token (prompt {prompts[0]!r:.30})"))
    left.set_ylabel("training step")
    fig.colorbar(mesh, ax=left, label="JS from the empty prompt (nats)")
    for k, prompt in enumerate(prompts):
        shift = [r["log_prob_shift"] for r in rows[k :: len(prompts)]]  # step by step, prompt k (a prompt may repeat)
        right.plot(steps, shift, "o-", markersize=3, color=f"C{k}", label=literal(f"{prompt!r:.30}"))
    right.axhline(0, color="grey", linewidth=0.8)
    _log_steps(right, steps[-1])
    right.set_xlabel("training step")
    right.set_ylabel("log p(y | prompt) - log p(y | empty) (nats)")
    right.grid(alpha=0.3)
    right.legend(fontsize="x-small")
    return fig


def matrix_heatmap(matrix: list[list[float]], rows: list[str], columns: list[str], label: str,
                   spread: list[list[float]] | None = None) -> Figure:
    """A rows x columns heat map, each cell labelled with its value (and ± spread); low values dark.
    The dataset-quality experiment's train x eval matrix of bits per byte."""
    values = np.array(matrix, dtype=float)
    fig = Figure(figsize=(max(5.0, 1.25 * len(columns) + 2.5), max(3.0, 0.6 * len(rows) + 1.6)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    low, high = np.nanmin(values), np.nanmax(values)
    for (i, j), value in np.ndenumerate(values):
        if not math.isfinite(value):
            continue
        text = f"{value:.3f}"
        if spread is not None and math.isfinite(spread[i][j]):
            text += f"\n± {spread[i][j]:.3f}"
        dark = (value - low) / ((high - low) or 1) < 0.6
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black",
                fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    fig.colorbar(image, ax=ax, label=label)
    return fig
