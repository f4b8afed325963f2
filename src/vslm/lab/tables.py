"""An experiment's results as tables: Markdown (results.md) and rich tables on the console. No torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

COLUMNS = ("variant", "params", "FLOPs/token", "tokens", "val_loss", "val_bpb", "Δ val_loss [95% CI]", "test",
           "p", "p (Holm)", "Δ at 80% power", "verdict")
# Δ val_loss: variant minus baseline (the first row), mean over seeds and its t-based 95% interval; test: "paired"
# when seed s gives both the same data order, validation windows and probe set, else "Welch"; p: two-sided, raw;
# p (Holm): adjusted across the table's variants, the verdict's; Δ at 80% power: the smallest true difference the
# verdict finds 4 times in 5 at this many seeds (noncentral t, from the spread observed, at Holm's strictest level:
# alpha over the number of variants tested); test's n: the seeds it compared (pairs, or the smaller arm)
# runs with probes add their training-dynamics landmarks (vslm.report.runs.dynamics_summary), mean ± std
DYNAMICS = {"icl_score": "ICL score", "prefix_matching_max": "prefix matching (max head)",
            "induction_loss_first": "induction loss, 1st copy", "induction_loss_second": "induction loss, 2nd copy",
            "induction_loss_multiset": "2nd copy, order-blind best",
            "repeat_reliability": "copying right (text, 1-token match)",
            "repeat_reliability_3": "copying right (text, 3-token match)",
            "init_position_spread": "position spread at step 0", "position_law_inf": "L_inf of L(t) = L_inf + b t^-c",
            "position_law_c": "its exponent c"}
# the unigram phase (RESEARCH.md section 2), in steps: M1 near 0 early; the loss past H(u) before H(bigram);
# M2 lowest early (U-shaped), M3 lowest later
PHASES = {"m1_near_zero_step": "KL(u‖p̄)<0.05 at step", "unigram_loss_step": "loss ≤ H(u) at step",
          "bigram_loss_step": "loss ≤ H(bigram) at step", "m2_min_step": "M2 lowest at step",
          "m3_min_step": "M3 lowest at step"}
# the phase change (RESEARCH.md section 1): the training loss's bump (the nats it fell, after warm-up,
# beyond the slowest pace per step it had kept before) and the ICL score's steepest fall, each with its step
PHASE_CHANGE = {"loss_bump": "loss bump (nats beyond its slowest pace)", "loss_bump_step": "sped up most at step",
                "icl_drop": "ICL score's steepest fall (nats / e-fold)", "icl_drop_step": "at step"}
# the attention weights at the last probe (RESEARCH.md section 3), over every head at every depth
ATTENTION = {"attn_row_sum": "weight per query (mean)", "attn_entropy_ratio": "entropy / log n (mean)",
             "attn_entropy_slope": "d entropy / d log n (mean)", "attn_sink_max": "sink fraction (max head)"}
# the weight diagnostics (logging.diagnostics_every; RESEARCH.md section 6), over every hidden matrix and logged step
DIAGNOSTICS = {"diag_update_ratio": "angular step ‖ΔW‖/‖W‖ (mean)", "diag_cos_w_grad": "cos(w, g) (mean)",
               "diag_row_norm_drift": "row-norm drift (mean |last/first - 1|)"}
LANDMARKS = ((DYNAMICS, "training dynamics", ".3f"),
             (PHASES, "the unigram phase (RESEARCH.md section 2), in steps", ".0f"),
             (PHASE_CHANGE, "the phase change (RESEARCH.md section 1): the training loss's bump and the ICL "
                            "score's fall, each where it is steepest", ".3f"),
             (ATTENTION, "attention weights at the last probe (RESEARCH.md section 3), every head at every depth",
              ".3f"),
             (DIAGNOSTICS, "weight diagnostics (RESEARCH.md section 6), every hidden matrix at every logged step",
              ".3g"))


FAILED_COLUMNS = ("variant", "seed", "did not finish")
LOOK_COLUMNS = ("look", "seeds", "alpha spent", "widest interval (±)", "target (±)")


def look_rows(history: list[dict], width: float) -> list[tuple[str, ...]]:
    """The looks of a resolving experiment: seeds, the alpha share its test had, the widest interval."""
    return [(str(i + 1), str(h["seeds"]), f"{h['alpha']:.3g}",
             "-" if math.isnan(h["widest_half_interval"]) else f"{h['widest_half_interval']:.4f}", f"{width:g}")
            for i, h in enumerate(history)]


def print_table(console, title: str, columns: Sequence[str], rows: list[tuple[str, ...]]) -> None:
    """rows on a rich console, every column full width even past the console's (a table of cut numbers is no
    use)."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    widths = [max(cell_len(col), *(cell_len(row[i]) for row in rows)) for i, col in enumerate(columns)]
    for col, width in zip(columns, widths, strict=True):
        table.add_column(col, justify="left" if col in ("variant", "verdict", "arm", "trains on", "also") else "right",
                         no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    needed = sum(widths) + 3 * len(widths) + 1  # a space either side of each cell, the borders
    if needed > console.width:  # rich would shrink some column to nothing (the variant names, first): widen
        console = Console(file=console.file, width=needed, color_system=console.color_system,
                          force_terminal=console.is_terminal)
    console.print(table, crop=False)


def matrix_markdown(matrix: dict) -> str:
    names = matrix["corpora"]
    lines = ["", "## Bits per byte: trained on (rows) x evaluated on (columns)", "",
             "Mean ± sample std over seeds, on each corpus's held-out documents, every token once.", "",
             "| trained on ↓, evaluated on → | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, train in enumerate(names):
        cells = [f"{m:.3f} ± {'-' if math.isnan(sd) else f'{sd:.3f}'}"
                 for m, sd in zip(matrix["bpb_mean"][i], matrix["bpb_std"][i], strict=True)]
        lines.append(f"| {train} | " + " | ".join(cells) + " |")
    if "transfer" in matrix:  # results.json of before 2026-12-03 has none
        lines += ["", "## Which training text transfers", "",
                  "Excess bits per byte over the in-domain model (the runs trained on that corpus), averaged over",
                  "the other corpora; mean ± sample std over seeds. Each row against the best by Welch's t-test,",
                  "Holm across the rows.", "",
                  "| " + " | ".join(TRANSFER_COLUMNS) + " |", "|" + "---|" * len(TRANSFER_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in transfer_rows(matrix["transfer"])]
    return "\n".join(lines) + "\n"


TRANSFER_COLUMNS = ("trained on", "excess bpb on the others", "Δ vs the best [95% CI]", "p", "p (Holm)", "verdict")


def transfer_rows(transfer: dict[str, dict]) -> list[tuple[str, ...]]:
    """The rows of TRANSFER_COLUMNS, best first (vslm.lab.stats.transfer); NaN and None as "-"."""
    def num(x, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}"

    rows = []
    for name, t in sorted(transfer.items(), key=lambda kv: kv[1]["mean"]):
        diff = "-" if t["verdict"] == "best" else \
            f"{num(t['diff'], '+.3f')} [{num(t['ci_low'], '+.3f')}, {num(t['ci_high'], '+.3f')}]"
        rows.append((name, f"{num(t['mean'], '.3f')} ± {num(t['std'], '.3f')}", diff, num(t.get("p"), ".3g"),
                     num(t.get("p_holm"), ".3g"), t["verdict"]))
    return rows


def summary_rows(summary: dict[str, dict]) -> list[tuple[str, ...]]:
    """The rows of COLUMNS; NaN (and None, as results.json holds it) written as "-"."""
    def missing(x) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    def pm(mean: float, std: float) -> str:
        return "-" if missing(mean) else f"{mean:.4f} ± {'-' if missing(std) else f'{std:.4f}'}"

    def diff(s: dict) -> str:
        if s["verdict"] == "baseline" or missing(s["diff_vs_baseline"]):
            return "-"
        ci = "" if missing(s.get("ci_low")) else f" [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
        return f"{s['diff_vs_baseline']:+.4f}{ci}"

    def num(x, fmt: str = ".3g") -> str:
        return "-" if missing(x) else f"{x:{fmt}}"

    def count(x) -> str:
        return "-" if missing(x) else f"{x:,}"

    return [(name, count(s["params"]), count(s["flops_per_token"]), count(s["tokens"]),
             pm(s["val_loss_mean"], s["val_loss_std"]), pm(s["val_bpb_mean"], s["val_bpb_std"]), diff(s),
             f"{s['test']} (n={s.get('test_n', s['seeds'])})" if s.get("test") else f"n={s['seeds']}",
             num(s["p_value"]),
             num(s.get("p_holm")),
             num(s.get("detectable"), ".4f"), s["verdict"])
            for name, s in summary.items()]


def length_columns(m: int) -> tuple[str, ...]:
    """COLUMNS for the comparison of loss at m x the context minus loss within it (length generalisation)."""
    named = {"val_loss": f"loss x{m} - x1", "val_bpb": f"bpb x{m} - x1", "Δ val_loss [95% CI]": "Δ [95% CI]"}
    return tuple(named.get(c, c) for c in COLUMNS)


def lengths_table(lengths: dict[str, dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Loss per token at each evaluated length (x1: within the context, on the same long windows), mean ±
    sample std over seeds, per variant: the columns and rows."""
    multiples = lengths["multiples"]
    rows = [(name, *(f"{s[f'x{m}']['mean']:.4f} ± "
                     + ("-" if math.isnan(s[f'x{m}']['std']) else f"{s[f'x{m}']['std']:.4f}") for m in multiples))
            for name, s in lengths["loss"].items()]
    return ("variant (loss at m x the context)", *(f"x{m}" for m in multiples)), rows


REACH_COLUMNS = ("variant", "tokens to the baseline's final val_loss", "baseline's tokens / these",
                 "seeds that reach it")


def reach_rows(reach: dict[str, dict]) -> list[tuple[str, ...]]:
    """The rows of REACH_COLUMNS (vslm.lab.experiments.summarize_reach), mean ± std over the seeds that reach it."""
    def pm(stat: dict, fmt: str) -> str:
        if stat["mean"] is None or math.isnan(stat["mean"]):
            return "not reached"
        std = stat["std"]
        return f"{stat['mean']:{fmt}} ± {'-' if std is None or math.isnan(std) else format(std, fmt)}"

    return [(name, pm(r["tokens"], ",.0f"), pm(r["ratio"], ".2f"), f"{r['reached']} of {r['seeds']}")
            for name, r in reach.items()]


def sweep_rows(sweeps: dict[str, dict]) -> list[tuple[str, ...]]:
    """(variant, choice, val_loss, kept), and the matched landmark's value where the experiment has `match`."""
    def num(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"

    return [(variant, choice, "diverged" if math.isinf(loss) else f"{loss:.4f}",
             *([num(s["measured"].get(choice))] if "measured" in s else []),
             (f"kept ({s['edge']}: widen the sweep)" if "edge" in s else "kept") if choice == s["chosen"] else "")
            for variant, s in sweeps.items() for choice, loss in s["tried"].items()]


def dynamics_rows(dynamics: dict[str, dict], keys: dict[str, str] = DYNAMICS,
                  fmt: str = ".3f") -> list[tuple[str, ...]]:
    """One row per variant of the landmarks `keys` (one of LANDMARKS' groups), mean ± sample std over seeds;
    a step (a key ending in _step) in whole steps whatever `fmt`."""
    def pm(stat: dict, fmt: str) -> str:  # NaN: a step landmark some seed never reached, or a probe not run
        if math.isnan(stat["mean"]):
            return "n/a"
        spread = "-" if math.isnan(stat["std"]) else f"{stat['std']:{fmt}}"
        return f"{stat['mean']:{fmt}} ± {spread}"

    return [(name, *(pm(d[key], ".0f" if key.endswith("_step") else fmt) for key in keys))
            for name, d in dynamics.items()]


def results_markdown(name: str, description: str, command: str, tables: list[tuple[Sequence[str], list]]) -> str:
    lines = [f"# Experiment {name}", "", description, "", "```sh", command, "```"]
    for columns, rows in tables:
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
