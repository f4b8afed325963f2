"""Several runs on one page: their loss curves, ICL score and M1 overlaid, and a table of final numbers."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

from vslm.errors import VSLMError
from vslm.report import figures
from vslm.report.html import figure, number, page, section, table
from vslm.report.runs import RunFiles, read_run

COMPARE = Path("runs") / "compare.html"


def compare_runs(run_dirs: Sequence[str | Path] | str | Path, out: str | Path = COMPARE) -> Path:
    """Write the comparison of `run_dirs` (run folders; one may be given alone) to `out` (a self-contained
    HTML file, or compare.html in `out` if it is a folder); returns the file written."""
    run_dirs = [run_dirs] if isinstance(run_dirs, str | Path) else run_dirs
    if not run_dirs:
        raise VSLMError("compare needs at least one run folder")
    runs = [read_run(Path(d)) for d in run_dirs]
    out = Path(out) / COMPARE.name if Path(out).is_dir() else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs), encoding="utf-8")
    return out


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Short distinct names: the folder's name, or more of its path where names repeat (experiments'
    `variant/seed-0` folders all end in `seed-0`)."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]  # the same folder given twice: nothing shorter tells them apart


def render(runs: list[RunFiles]) -> str:
    labels = run_labels([r.folder for r in runs])
    rows = []
    for run, label in zip(runs, labels, strict=True):
        steps = run.metrics[-1]["step"] if run.metrics else None
        tokens = run.metrics[-1].get("tokens") if run.metrics else None
        params = run.summary.get("params")
        rows.append([escape(label), number(steps), number(tokens if isinstance(tokens, int | float) else None),
                     number(int(params) if isinstance(params, int | float) else None),
                     *(number(run.final(key)) for key in ("loss", "val_loss", "val_bpb"))])
    sections = [section("runs", "Runs", table(["run", "steps", "tokens", "params", "loss", "val_loss", "val_bpb"],
                                              rows))]
    if any(run.series("loss")[1].size for run in runs):
        x, y = figures.comparison_axes(runs)
        caption = f"{figures.loss_caption(x, y)}, one colour per run. Compare them at equal {x.removesuffix('s')}s" + (
            "; a loss per token compares only between runs of one tokenizer (val_bpb otherwise)." if y == "loss"
            else ".")
        sections.append(section("loss", "Loss", figure(figures.compare_loss(runs, labels, x, y), "loss curves",
                                                       caption)))
    scored = [(run, label) for run, label in zip(runs, labels, strict=True)
              if np.isfinite(run.probe_values("icl_score")).any()]
    if scored:
        # the score's definition: Olsson's (context 512 or more), or a short context's bands or tokens, at T
        # (Olsson's score reads tokens 50 and 500 at any T of 512 or more: its T does not matter)
        kinds = {}
        for run, label in scored:
            kind = figures.icl_label(run) or "olsson"
            kinds[label] = (kind, None if kind == "olsson" else run.config.get("model", {}).get("context"))
        differ = len(set(kinds.values())) > 1
        shown = [f"{label} ({kind}{'' if t is None else f', T={t}'})" if differ else label
                 for label, (kind, t) in kinds.items()]
        named = dict(zip(kinds, shown, strict=True))
        definitions = sorted({figures.icl_name("" if kind == "olsson" else kind) for kind, _ in kinds.values()})
        caption = ("; ".join(definitions) + " (T: the context). Lower means more use of context. Compare when and "
                   "how far each run's score drops.")
        if differ:
            caption += (" These runs' scores are defined differently (the definition or the context T, in the "
                        "legend): only runs that share one compare.")
        sections.append(section("icl", "In-context learning score", figure(
            figures.compare_probe(runs, [named.get(label, label) for label in labels], ("icl_score",),
                                  "ICL score (nats)"), "ICL scores", caption)))
    if any(np.isfinite(run.probe_values("distribution", "M1")).any() for run in runs):
        sections.append(section("m1", "M1: distance from the unigram", figure(
            figures.compare_probe(runs, labels, ("distribution", "M1"), "M1 = KL(u || mean p) (nats)"), "M1",
            "KL from the corpus unigram to the model's mean prediction. Every run should fall to near 0 "
            "within the first few hundred steps; a run that stays high has not learned token frequencies.")))
    count = "1 run" if len(runs) == 1 else f"{len(runs)} runs"
    return page(f"VSLM comparison of {count}", ", ".join(str(r.folder) for r in runs), sections)
