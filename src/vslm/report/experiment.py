"""`report.html` of an experiment folder, drawn from its results.json and its runs' files: the variants'
table, every run's loss curves, the training-dynamics landmarks and, for a cross-evaluated experiment
(dataset quality), the train x eval heat map of bits per byte."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

from vslm.errors import VSLMError
from vslm.report import figures
from vslm.report.html import figure, number, page, pre, table
from vslm.report.html import section as html_section
from vslm.report.runs import RunFiles, read_run

RESULTS = "results.json"
REPORT = "report.html"
CORPORA = "corpora.json"  # an experiment over several corpora: their folders, in order

MATRIX_CAPTION = ("Bits per byte of the model trained on each row's corpus, on each column's held-out text "
                  "(every token once), mean ± sample std over seeds; darker is better. The diagonal is each model "
                  "on its own kind of text. Read a column to rank the training corpora for that kind of text, a "
                  "row to see how far a corpus's model carries to the others; bits per byte compare across "
                  "columns only roughly, since some texts are harder than others for any model.")


def write_experiment_report(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / RESULTS
    if not path.is_file():
        raise VSLMError(f"{folder} is not an experiment folder (no {RESULTS})")
    results = json.loads(path.read_text(encoding="utf-8"))
    out = folder / REPORT
    out.write_text(render(results, folder), encoding="utf-8")
    return out


def _runs(results: dict, folder: Path) -> tuple[list[RunFiles], list[str]]:
    """The experiment's finished runs that are still in its folder (VARIANT/seed-N), labelled by variant."""
    runs, labels = [], []
    for r in results.get("runs", []):
        run_dir = folder / r["variant"] / f"seed-{r['seed']}"
        if "failed" not in r and (run_dir / "metrics.jsonl").is_file():
            runs.append(read_run(run_dir))
            labels.append(r["variant"])
    return runs, labels


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "&ndash;"
    return f"{mean:.4f} ± {'-' if std is None else f'{std:.4f}'}"


def write_corpora_report(folder: str | Path) -> Path:
    """report.html of an experiment over several corpora (`corpora` in its spec): one page, a section per corpus
    holding what that corpus's own report.html shows, in the order of folder/corpora.json."""
    folder = Path(folder)
    path = folder / CORPORA
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        corpora = [(str(corpus), folder / sub) for corpus, sub in index["corpora"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VSLMError(f"{path} does not list the experiment's corpora ({type(e).__name__}: {e})") from None
    sections = []
    for i, (corpus, sub) in enumerate(corpora):
        if not (sub / RESULTS).is_file():  # a corpus not (yet) compared: said in its place
            sections.append(html_section(f"corpus-{i}", corpus, f"<p>No results yet in {escape(str(sub))}.</p>"))
            continue
        try:
            results = json.loads((sub / RESULTS).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VSLMError(f"{sub / RESULTS} is not valid JSON ({e}): run the experiment again to write it") from None
        parts = [html for _, _, html in experiment_sections(results, sub, key=f"c{i}-", level=3)]
        sections.append(html_section(f"corpus-{i}", corpus, f"<p>Runs and results in {escape(str(sub))} (its own "
                                f"page: {escape(str(sub / REPORT))}).</p>", *parts))
    out = folder / REPORT
    out.write_text(page(f"Experiment {index.get('experiment', folder.name)}",
                        index.get("description", ""), sections), encoding="utf-8")
    return out


def render(results: dict, folder: Path | None = None) -> str:
    """The page; with the experiment's folder, also the loss curves of its runs."""
    return page(f"Experiment {results['experiment']}", results.get("description", ""),
                experiment_sections(results, folder))


def experiment_sections(results: dict, folder: Path | None = None, key: str = "",
                        level: int = 2) -> list[tuple[str, str, str]]:
    """The page's sections (ids prefixed by `key`, headings of `level`); with the experiment's folder, also the
    loss curves of its runs."""
    def section(name: str, title: str, *parts: str) -> tuple[str, str, str]:
        return html_section(key + name, title, *parts, level=level)

    shown = results.get("table")  # the table as results.md has it (vslm.lab.tables.summary_rows)
    if shown:
        headers = shown["columns"]
        rows = [[escape(cell) for cell in row] for row in shown["rows"]]
    else:  # an experiment folder from before the paired tests (2026-12-02): its own columns
        headers = ["variant", "params", "FLOPs/token", "tokens", "val_loss", "val_bpb", "Δ val_loss", "p (Welch)",
                   "verdict"]
        rows = [[escape(name), number(s["params"]), number(s["flops_per_token"]), number(s["tokens"]),
                 _pm(s["val_loss_mean"], s["val_loss_std"]), _pm(s["val_bpb_mean"], s["val_bpb_std"]),
                 f"{s['diff_vs_baseline']:+.4f}", number(s["p_value"], 3), escape(s["verdict"])]
                for name, s in results["summary"].items()]
    sections = [section("variants", "Variants", table(headers, rows), pre(results["command"]))]
    settings = results.get("variants_table")  # as results.md shows it: each variant's overrides
    if settings:
        sections.append(section("settings", "What each variant sets", table(
            settings["columns"], [[escape(c) for c in row] for row in settings["rows"]])))
    sweep = results.get("sweep_table")  # as results.md shows it (vslm.lab.tables.sweep_rows)
    if sweep:
        sections.append(section("sweeps", "Sweeps", "<p>Each variant's choices tried and the one kept (the lowest "
                                "validation loss, or the one nearest the baseline's matched landmark); the table "
                                "above is of the kept choices.</p>",
                                table(sweep["columns"], [[escape(c) for c in row] for row in sweep["rows"]])))
    runs, labels = _runs(results, folder) if folder is not None else ([], [])
    if runs:
        x, y = figures.comparison_axes(runs)
        sections.append(section("curves", "Loss curves", figure(
            figures.compare_loss(runs, labels, x, y), "loss curves of every run",
            figures.loss_caption(x, y) + " of every seed, one colour a variant: seeds that spread as far as the "
            "variants lie apart are what the table calls within noise.")))
    dynamics = results.get("dynamics_table")  # as results.md shows it (vslm.lab.tables.dynamics_rows)
    if dynamics:
        sections.append(section("dynamics", "Training dynamics", table(
            dynamics["columns"], [[escape(c) for c in row] for row in dynamics["rows"]]),
            "<p>Landmarks from each run's probes, mean ± sample std over seeds (the README's 'Experiments' "
            "lists them; vslm.report.runs computes them).</p>"))
    for i, shown in enumerate(results.get("landmark_tables", [])):  # as results.md shows them
        short = next((name for word, name in (("unigram", "Unigram phase"), ("attention", "Attention"),
                                                ("diagnostics", "Weight diagnostics"),
                                                ("efficiency", "Sample efficiency")) if word in shown["title"]),
                     "Landmarks")
        sections.append(section(f"landmarks-{i}", short,
                                f"<p>{escape(shown['title'][:1].upper() + shown['title'][1:])}: mean ± sample std over "
                                "seeds.</p>",
                                table(shown["columns"], [[escape(c) for c in row] for row in shown["rows"]])))
    for i, shown in enumerate(results.get("lengths", {}).get("tables", [])):  # train.eval_lengths: as results.md
        m = results["lengths"]["multiples"][i] if i else 1  # table i > 0 compares at multiple i + 1 in order
        sections.append(section(f"lengths-{i}", "Past the context" if i == 0 else f"Length generalisation x{m}",
                                f"<p>{escape(shown['title'][:1].upper() + shown['title'][1:])}. Every position of "
                                "windows m times the training context attends over all of its past; x1 is the loss "
                                "within the context on the same windows.</p>",
                                table(shown["columns"], [[escape(c) for c in row] for row in shown["rows"]])))
    failed = [r for r in results.get("runs", []) if "failed" in r]
    if failed:
        rows_failed = [[escape(r["variant"]), str(r["seed"]), escape(r["failed"])] for r in failed]
        sections.append(section("failed", "Runs that did not finish", table(["variant", "seed", "reason"], rows_failed),
            "<p>Left out of their variant's statistics; the other runs were trained and compared.</p>"))
    resolve = results.get("resolve")
    if resolve:
        looks = [[str(i + 1), str(h["seeds"]), number(h["alpha"], 3),
                  "&ndash;" if h["widest_half_interval"] is None else f"±{h['widest_half_interval']:.4f}"]
                 for i, h in enumerate(resolve["looks"])]
        verdict = ("every interval within" if resolve["resolved"]
                   else f"stopped at {resolve['max_seeds']} seeds, not within")
        sections.append(section("looks", "Seeds added until resolved", table(
            ["look", "seeds", "alpha spent", "widest 95% interval"], looks),
            f"<p>{verdict} ±{resolve['width']:g} nats. Each look's test runs at its share of alpha "
            "(O'Brien-Fleming spending), so the repeated looks do not inflate the false-positive rate.</p>"))
    matrix = results.get("cross_eval")
    if matrix:
        names = matrix["corpora"]
        nan = [[math.nan if v is None else v for v in row] for row in matrix["bpb_std"]]
        heat = figures.matrix_heatmap(matrix["bpb_mean"], names, names, "bits per byte", nan)
        cells = [[escape(t)] + [_pm(m, sd) for m, sd in zip(matrix["bpb_mean"][i], matrix["bpb_std"][i], strict=True)]
                 for i, t in enumerate(names)]
        sources = ", ".join(f"{escape(n)} = {escape(src)}" for n, src in matrix["sources"].items())
        sections.append(section("matrix", "Trained on x evaluated on: bits per byte",
                                figure(heat, "train x eval matrix of bits per byte", MATRIX_CAPTION),
                                table(["trained on ↓, evaluated on →", *names], cells),
                                f"<p>Corpora: {sources}.</p>"))
        shown = matrix.get("transfer_table")
        if shown:
            sections.append(section("transfer", "Which training text transfers",
                                    table(shown["columns"], [[escape(c) for c in row] for row in shown["rows"]]),
                                    "<p>Excess bits per byte over the in-domain model, averaged over the other "
                                    "corpora; each row against the best by Welch's t-test, Holm across the rows.</p>"))
    return sections
