"""`report.html` of a scaling study, drawn from its fit.json and its run folders (no torch): loss against
tokens per size with the fitted law, iso-FLOP curves with the fitted optimum, the fit's residuals,
approach 1's envelope, and the fit beside Chinchilla's numbers; which runs were left out and why."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vslm.errors import VSLMError
from vslm.report.figures import _figure
from vslm.report.html import figure, number, page, pre, section, table
from vslm.report.runs import read_run

FIT = "fit.json"
REPORT = "report.html"
ISO_CURVES = 5


def _law(fit: dict):
    def loss(n, d):
        return fit["E"] + fit["A"] / np.power(n, fit["alpha"]) + fit["B"] / np.power(d, fit["beta"])
    return loss


def _has_optimum(fit: dict) -> bool:
    """Whether the law falls with size and data (alpha, beta > 0), so that a compute-optimal point exists;
    the study writes a and b as null where not."""
    return fit.get("a") is not None and not math.isnan(fit["a"])


def _optimal(fit: dict, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = (fit["alpha"] * fit["A"] / (fit["beta"] * fit["B"])) ** (1 / (fit["alpha"] + fit["beta"]))
    c6 = flops / 6
    return g * c6 ** fit["a"], c6 ** fit["b"] / g


def _sizes(runs: list[dict]) -> list[int]:
    return sorted({r["params"] for r in runs})


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def loss_vs_tokens(folder: Path, runs: list[dict], fit: dict | None) -> Figure:
    """Final validation loss per (size, budget), a line per size; the fitted law dashed; the training loss
    (smoothed) of each size's longest run faint behind."""
    fig, (ax,) = _figure(height=4.4)
    for i, n in enumerate(_sizes(runs)):
        mine = sorted((r for r in runs if r["params"] == n), key=lambda r: r["tokens"])
        color = f"C{i % 10}"
        ok = [r for r in mine if r["left_out"] is None]
        label = f"{mine[0]['label'].split()[0]} ({n:,} params)"
        if ok:
            ax.plot([r["tokens"] for r in ok], [r["val_loss"] for r in ok], "o-", color=color, label=label)
            longest = folder / ok[-1]["folder"]
            if longest.is_dir():
                steps, loss = read_run(longest).series("loss")
                per_step = ok[-1]["tokens"] / ok[-1]["steps"]
                window = max(1, len(loss) // 20)
                smooth = _smooth(loss, window)
                ax.plot(steps[window - 1 :] * per_step, smooth, color=color, alpha=0.25, linewidth=1)
        for r in mine:
            if r["left_out"] is not None:
                ax.plot([r["tokens"]], [ax.get_ylim()[1]], "x", color=color)
        if fit:
            d = np.geomspace(min(r["tokens"] for r in runs) / 2, max(r["tokens"] for r in runs) * 2, 50)
            ax.plot(d, _law(fit)(n, d), "--", color=color, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("validation loss (nats per token)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return fig


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # a study whose runs all failed draws none
        ax.legend(fontsize="small")


def isoflop(runs: list[dict], fit: dict) -> Figure:
    """The fitted law along iso-FLOP lines C = 6 N D (N on the x axis), its minimum marked, and the runs."""
    fig, (ax,) = _figure(height=4.4)
    used = [r for r in runs if r["left_out"] is None]
    lo, hi = min(r["flops_6nd"] for r in used), max(r["flops_6nd"] for r in used)
    flops = np.geomspace(lo, hi, ISO_CURVES)
    sizes = _sizes(runs)
    n = np.geomspace(sizes[0] / 4, sizes[-1] * 4, 200)
    law = _law(fit)
    n_opt, d_opt = _optimal(fit, flops) if _has_optimum(fit) else (None, None)
    for i, c in enumerate(flops):
        color = f"C{i % 10}"
        ax.plot(n, law(n, c / (6 * n)), color=color, linewidth=1.2, label=f"C = {c:.2g} FLOPs")
        if n_opt is not None:
            ax.plot([n_opt[i]], [law(n_opt[i], d_opt[i])], "*", color=color, markersize=12, markeredgecolor="k")
    scatter = ax.scatter([r["params"] for r in used], [r["val_loss"] for r in used],
                         c=np.log10([r["flops_6nd"] for r in used]), cmap="viridis", edgecolors="k", zorder=3)
    fig.colorbar(scatter, ax=ax, label="log10 C of the run (6 N D)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats per token)")
    top = max(r["val_loss"] for r in used)
    ax.set_ylim(fit["E"] * 0.98 if math.isfinite(fit["E"]) else None, top * 1.15)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def residuals(runs: list[dict]) -> Figure:
    """log L_fit - log L per run against its tokens, one colour per size."""
    fig, (ax,) = _figure(height=3.4)
    used = [r for r in runs if r["left_out"] is None and r.get("residual") is not None]
    for i, n in enumerate(_sizes(used)):
        mine = [r for r in used if r["params"] == n]
        ax.plot([r["tokens"] for r in mine], [r["residual"] for r in mine], "o", color=f"C{i % 10}",
                label=mine[0]["label"].split()[0])
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("log L_fit - log L")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def envelope_figure(folder: Path, runs: list[dict], approach1: dict, fit: dict | None) -> Figure:
    """Approach 1: every run's smoothed training loss against C = 6 N D with the envelope; N_opt(C) beside."""
    fig, (ax, ax2) = _figure(columns=2, height=3.8)
    sizes = _sizes(runs)
    for r in runs:
        if r["left_out"] is not None or not (folder / r["folder"]).is_dir():
            continue
        steps, loss = read_run(folder / r["folder"]).series("loss")
        window = max(1, len(loss) // 20)
        c = 6 * r["params"] * steps * r["tokens"] / r["steps"]
        ax.plot(c[window - 1 :], _smooth(loss, window), color=f"C{sizes.index(r['params']) % 10}", alpha=0.5,
                linewidth=0.8)
    if approach1["flops"]:
        ax.plot(approach1["flops"], approach1["loss"], "k.", label="envelope")
        ax2.plot(approach1["flops"], approach1["params"], "ko", label="N_opt (approach 1)")
    if fit and _has_optimum(fit):
        c = np.geomspace(min(r["flops_6nd"] for r in runs) / 10, max(r["flops_6nd"] for r in runs), 50)
        ax2.plot(c, _optimal(fit, c)[0], "--", color="C3", label=f"N_opt (approach 3), a = {fit['a']:.2f}")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("C = 6 N D (FLOPs)")
        a.grid(alpha=0.3, which="both")
    ax2.set_yscale("log")
    ax.set_ylabel("training loss (smoothed)")
    ax2.set_ylabel("parameters")
    _legend(ax)
    _legend(ax2)
    return fig


def _interval(fit: dict, key: str, digits: int = 3) -> str:
    lo_hi = fit.get("intervals", {}).get(key)
    if fit.get(key) is None or math.isnan(fit[key]):
        return "-"
    value = f"{fit[key]:.{digits}g}"
    if not lo_hi or any(v is None for v in lo_hi):
        return value
    return f"{value} [{lo_hi[0]:.{digits}g}, {lo_hi[1]:.{digits}g}]"


def render(folder: Path, result: dict) -> str:
    runs, fit = result["runs"], result.get("fit")
    chinchilla = result["chinchilla"]
    sections = []
    if "error" in result:
        sections.append(section("error", "No fit", f"<p>{escape(result['error'])}</p>"))
    if fit:
        rows = [[escape(k), _interval(fit, k), number(chinchilla[k], 3)] for k in ("E", "A", "alpha", "B", "beta")]
        rows += [["a (N_opt ~ C^a)", _interval(fit, "a"), number(chinchilla["a"], 2)],
                 ["b (D_opt ~ C^b)", _interval(fit, "b"), number(chinchilla["b"], 2)],
                 ["tokens per parameter at the optimum", number(fit["at_largest_run"]["tokens_per_param"], 1),
                  "~20"]]
        a1 = result.get("approach1", {})
        rows.append(["a, approach 1 (envelope)", number(a1.get("a"), 2), "0.50"])
        at = fit["at_largest_run"]
        text = (f"<p>L(N, D) = E + A / N^alpha + B / D^beta, fitted to {len(runs) - len(result['left_out'])} runs "
                f"(Chinchilla's approach 3: Huber loss, delta {result['huber_delta']:g}, on log L; L-BFGS from "
                f"{fit['starts']:,} starting points, {fit['converged_starts']:,} converged); intervals are 2.5 and "
                f"97.5 percentiles over {fit['bootstrap']} bootstrap refits over runs. RMS residual in log L: "
                f"{fit['rms_residual']:.4f}. "
                + (f"At the largest run's compute C = {at['flops']:.3g} FLOPs (6 N D) the law's optimum is "
                   f"N = {at['n_opt']:,.0f}, D = {at['d_opt']:,.0f} ({at['tokens_per_param']:.1f} tokens per "
                   "parameter). " if _has_optimum(fit) else
                   "The law has no compute-optimal point: its loss does not fall with both size and data. ")
                + "Chinchilla's numbers come from models of "
                "70M to 16B parameters on MassiveText: "
                "a different corpus, tokenizer and scale; what compares is the exponents and the ratio, not E, A, B "
                "(their units depend on the tokenizer).</p>")
        notes = "".join(f"<li>{escape(w)}</li>" for w in result.get("warnings", []))
        sections.append(section("fit", "The fit, beside Chinchilla",
                                table(["", "this study [95% bootstrap interval]", "Chinchilla"], rows), text,
                                f"<ul>{notes}</ul>" if notes else ""))
    sections.append(section("tokens", "Loss against tokens, per size",
                            figure(loss_vs_tokens(folder, runs, fit), "loss against tokens per size",
                                   "Final validation loss of each run (dots; a run left out is an x at the top), "
                                   "the fitted law for each size (dashed), and the smoothed training loss of each "
                                   "size's longest run (faint). Every run sees a prefix of the same token stream.")))
    if fit:
        sections.append(section("isoflop", "Iso-FLOP curves",
                                figure(isoflop(runs, fit), "iso-FLOP curves",
                                       "The fitted law along lines of equal compute C = 6 N D, as a function of N; "
                                       "the star is the compute-optimal size the law gives at that C. The dots are "
                                       "the runs, coloured by their own compute.")))
        sections.append(section("residuals", "Residuals",
                                figure(residuals(runs), "residuals of the fit",
                                       "log L_fit - log L per run: a trend along D or across sizes means the law's "
                                       "form does not hold over this grid (e.g. repeated data at the largest "
                                       "budgets, or a learning rate that suits some sizes better).")))
    if result.get("approach1", {}).get("flops"):
        sections.append(section("envelope", "Approach 1: the envelope",
                                figure(envelope_figure(folder, runs, result["approach1"], fit), "envelope",
                                       "Left: each run's smoothed training loss against its compute so far, and "
                                       "the lowest loss at each compute (the envelope). Right: the size that "
                                       "reaches it, against the closed form of approach 3. With a handful of "
                                       "sizes N_opt moves in steps, so approach 1's exponent is coarse.")))
    run_rows = [[escape(r["label"]), number(r["params"]), number(r["params_non_embedding"]), number(r["tokens"]),
                 f"{r['flops_6nd']:.3g}", f"{r['flops_exact']:.3g}", number(r.get("val_loss")),
                 number(r.get("fitted_loss")), escape(r["left_out"] or "")] for r in runs]
    sections.append(section("runs", "Runs",
                            table(["run", "N", "N without embeddings", "D", "6ND", "exact FLOPs", "val_loss",
                                   "fitted", "left out because"], run_rows),
                            "<p>" + escape("; ".join(f"{k}: {v}" for k, v in result["choices"].items())) + "</p>",
                            pre(result.get("command", ""))))
    if result["left_out"]:
        items = "".join(f"<li>{escape(x['label'])}: {escape(x['reason'])}</li>" for x in result["left_out"])
        sections.insert(0, section("left-out", "Runs left out of the fit", f"<ul>{items}</ul>"))
    return page(f"Scaling study {result.get('scaling', '')}", result.get("description", ""), sections)


def write_scaling_report(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / FIT
    if not path.is_file():
        raise VSLMError(f"{folder} is not a scaling study folder (no {FIT})")
    result = json.loads(path.read_text(encoding="utf-8"))
    out = folder / REPORT
    out.write_text(render(folder, result), encoding="utf-8")
    return out
