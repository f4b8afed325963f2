"""`report.html` of one run folder: its config, loss curves, weight diagnostics, training-dynamics probes and
its last FactWorld evaluation (`vslm facts eval`), each section present only when the run wrote what it needs
(a run without probes or diagnostics gets the loss section only)."""

from __future__ import annotations

import math
from pathlib import Path

from vslm.report import figures
from vslm.report.facts import facts_section
from vslm.report.html import figure, number, page, pre, section, table
from vslm.report.runs import RunFiles, diagnostics_series, read_run

REPORT = "report.html"

CAPTIONS = {
    "loss": "Training loss at every logged step and validation loss at each evaluation.{right} Look for a steady "
            "fall, validation close to training (a widening gap is overfitting) and no spikes.",
    "bpb_axis": " The right axis reads the same loss in bits per byte, comparable across tokenizers.",
    "diagnostics": "Every hidden weight matrix at each diagnostics step (logging.diagnostics_every; RESEARCH.md "
                   "section 6), one thin line a matrix, their mean in black. Left: its mean row norm over its "
                   "first value (tangent descent with retraction holds it at 1; AdamW's drifts). Middle: the "
                   "cosine between a weight row and its gradient. Right: the "
                   "update's size relative to the weights, the angular step.",
    "heatmap": "Loss at each position of the fixed probe windows (x) at each probe step (y, log scale). At step 0 "
               "a row is flat at about ln V; later rows grow darker from left to right when the model uses "
               "context, the loss falling with position.",
    "slope": "The same matrix as d loss / d log t (Olsson et al. 2022), on log-spaced bands of positions: blue "
             "where the loss falls with position (the model uses that much context), white where it is flat.",
    "curves": "Loss by position at a few probe steps (log x). Flat at ln V at step 0, falling with position "
              "later: the model uses context. Dashed: the power law L(t) = L_inf + b t^-c (Kaplan et al. 2020) "
              "fitted to the last probe's curve.",
    "icl": "The in-context-learning score: loss late in the context minus loss early (Olsson et al. 2022). "
           "Negative means the model uses context. Dotted: its steepest fall per e-fold of steps.",
    "loss_bump": "The training loss, mean over log-spaced bands of steps. A loss that falls as a power law falls "
                 "ever slower per step; shaded where, after warm-up, it falls faster than it did before: "
                 "RESEARCH.md section 1's bump, a phase change such as the formation "
                 "of induction heads, expected where the ICL score drops. The legend gives the nats the loss fell "
                 "beyond its slowest earlier pace.",
    "distribution": "Left: M1 = KL(unigram || mean prediction), M2 = mean KL(unigram || prediction), "
                    "M3 = mean KL(bigram || prediction). Expect M1 to fall from about ln V - H(unigram) to "
                    "near 0 early and stay there, M2 to be U-shaped (lowest when the model predicts the "
                    "unigram everywhere) and M3 to reach its minimum later. Right: the probe loss should pass "
                    "H(unigram) before it falls below H(bigram).",
    "induction": "A random token sequence repeated twice. Left: the first copy cannot be predicted from "
                 "context (random tokens); once induction heads form, the loss on the second copy collapses. "
                 "Right: the prefix-matching score (attention from a token of the second copy to the token after "
                 "its first occurrence) of the best head at each depth; a head far above the rest is an "
                 "induction head. Whether copying pays depends on the text: the title gives how often, in the "
                 "training windows, the token after the latest earlier occurrence of the last 1 (or 3) tokens "
                 "is the next token (repeat reliability; induction heads form late or not at all where it is "
                 "low, Aoyama et al. 2025).",
    "attention": "Per depth and head: entropy_ratio = attention entropy / log(visible keys), 1 spread evenly "
                 "over what the query can see, 0 on one key; sink_fraction = share of queries putting more "
                 "than 0.3 of their weight on token 0 (attention sinks). Look for focused heads (low ratio) "
                 "and sinks forming in later depths.",
    "band": " Shaded: value ± 1.96 standard errors, a 95% interval over the choice of the probe windows "
            "(bootstrap over windows); a difference well inside it is the windows, not the model.",
    "row_sum": " row_sum = total weight a query hands out: 1 for softmax, less for softmax1, Z^(1-gamma) for "
               "power attention.",
}


def write_report(run_dir: str | Path) -> Path:
    """Draw the run's report from its files alone and write it to RUN/report.html; returns that path."""
    run = read_run(Path(run_dir))
    out = run.folder / REPORT
    out.write_text(render(run), encoding="utf-8")
    return out


def render(run: RunFiles) -> str:
    sections = [_config_section(run)]
    if run.series("loss")[1].size:
        right = CAPTIONS["bpb_axis"] if figures.has_bpb_axis(run) else ""  # the caption names only what is drawn
        sections.append(section("loss", "Loss", figure(figures.loss_figure(run), "loss curves",
                                                       CAPTIONS["loss"].format(right=right))))
    if diagnostics_series(run):
        sections.append(section("diagnostics", "Weight diagnostics", figure(
            figures.diagnostics_figure(run), "weight diagnostics", CAPTIONS["diagnostics"])))
    if run.probes:
        sections += _probe_sections(run)
    if run.facts:
        sections.append(facts_section(run.facts))
    if run.samples.strip():
        sections.append(section("samples", "Samples", pre(run.samples)))
    # titled by its folder: a run of `demo` with other settings is not the demo; the config's own description
    # (of the config as built in, before this run's overrides) says where it started, and what changed since
    description = run.config.get("description", "")
    subtitle = (f"{run.folder}, from the config {run.name}" + (f" ({description})" if description else "")
                + changed_from_builtin(run.name, run.config))
    if progress := unfinished(run):
        subtitle += f"; {progress}"
    return page(f"VSLM report: {run.folder.name}", subtitle, sections)


SHOWN_CHANGES = 6
DERIVED = {"model.vocab_size"}  # set from the run's tokenizer


def changed_from_builtin(name: str, config: dict) -> str:
    """', with model.width 128 -> 192, ...' where a run of a built-in config (by name) holds other values than
    that config as this version builds it (the run's overrides; for an old run, also what the built-in changed
    since), the first SHOWN_CHANGES; '' where none differ, or the name is not a built-in's."""
    import tomllib

    from vslm.config import as_text, builtin_configs, flat_values, load_config

    if name not in builtin_configs():
        return ""
    try:
        built = flat_values(tomllib.loads(load_config(name).to_toml()))
    except Exception:  # noqa: BLE001 - a report describes what it can: a config the package no longer builds
        return ""
    ran = flat_values(config)
    keys = sorted(k for k in (built.keys() | ran.keys()) - DERIVED - {"name", "description"}
                  if built.get(k) != ran.get(k))
    if not keys:
        return ""

    def value(tree: dict, key: str) -> str:
        return "-" if key not in tree else as_text(tree[key])

    shown = ", ".join(f"{k} {value(built, k)} -> {value(ran, k)}" for k in keys[:SHOWN_CHANGES])
    more = f" and {len(keys) - SHOWN_CHANGES} more (config.toml)" if len(keys) > SHOWN_CHANGES else ""
    return f", with {shown}{more}"


def unfinished(run: RunFiles) -> str:
    """'unfinished: 32 of 100 steps' when the run's last logged step is short of its config's train.steps
    (still running, stopped or killed; with why where it diverged, as summary.json says), else ''."""
    planned = run.config.get("train", {}).get("steps")
    if not run.metrics:  # not even a first step: or its log is gone
        return f"no logged step of {planned:,} (metrics.jsonl is missing or empty)" if isinstance(planned, int) \
            else "no logged step (metrics.jsonl is missing or empty)"
    done = run.metrics[-1].get("step", 0)
    diverged = run.summary.get("diverged")
    why = f" (diverged at step {diverged.get('step')}: {diverged.get('what')})" if isinstance(diverged, dict) else ""
    if isinstance(planned, int) and done < planned:
        return f"unfinished: {done:,} of {planned:,} steps{why}"
    return why.strip(" ()")


def _config_section(run: RunFiles) -> tuple[str, str, str]:
    """Final numbers, parameters and FLOPs per token (from summary.json when the run has one), and the config."""
    rows = [["steps trained", number(run.metrics[-1]["step"]) + (f" ({unfinished(run)})" if unfinished(run)
                                                                   else "")]] if run.metrics else []
    rows += [[key, number(run.final(key))] for key in ("loss", "val_loss", "val_bpb")]
    tokens, seconds = run.final("tokens"), run.final("train_time_s")
    if math.isfinite(tokens):
        rows.append(["tokens", number(int(tokens))])
    if math.isfinite(seconds):
        rows.append(["training time (s)", number(seconds, 1)])
    for key in ("params", "flops_per_token"):
        if isinstance(run.summary.get(key), int | float):
            rows.append([key.replace("_", " "), number(int(run.summary[key]))])
    return section("config", "Run and config", table(["", "value"], rows),
                   "<details><summary>resolved config.toml</summary>" + pre(run.config_text) + "</details>")


def _probe_sections(run: RunFiles) -> list[tuple[str, str, str]]:
    out = []
    band = CAPTIONS["band"] if figures.has_errors(run) else ""  # older probe files have no standard errors
    if figures.has_position_loss(run):
        out.append(section("position", "Loss by position over training",
                           figure(figures.position_heatmap(run), "position-loss heat map", CAPTIONS["heatmap"]),
                           figure(figures.position_slope_heatmap(run), "d loss / d log t heat map",
                                  CAPTIONS["slope"]),
                           figure(figures.position_curves(run), "loss-by-position curves",
                                  CAPTIONS["curves"] + band)))
    if any(p.get("icl_score") is not None for p in run.probes):
        label = figures.icl_label(run)
        note = {"short-context": " Short context (under 512 tokens): the score is the mean loss of the last T/10 "
                                  "tokens minus that of T/10 tokens around token T/10 (bands: one token is noisy).",
                "short-context-tokens": " Short context (under 512 tokens): the score is loss[T-1] - loss[T/10], "
                                        "single tokens (logging.icl_short = tokens)."}.get(label, "")
        bump = (figure(figures.loss_bump_figure(run), "training loss bump", CAPTIONS["loss_bump"])
                if figures.has_loss_bump(run) else "")  # under 2 logged steps: no bands
        out.append(section("icl", "In-context learning score" + (" (short context)" if note else ""),
                           figure(figures.icl_figure(run), "ICL score", CAPTIONS["icl"] + note + band), bump))
    if figures.has_distribution(run):
        out.append(section("distribution", "Unigram and bigram stage",
                           figure(figures.distribution_figure(run), "M1 M2 M3 and loss",
                                  CAPTIONS["distribution"] + band)))
    if figures.has_induction(run):
        out.append(section("induction", "Induction",
                           figure(figures.induction_figure(run), "induction probe", CAPTIONS["induction"])))
    last = next((p for p in reversed(run.probes) if p.get("attention")), None)
    if last is not None:
        caption = f"At step {last['step']:,}. " + CAPTIONS["attention"]
        if "row_sum" in figures.attention_panels(last["attention"]):
            caption += CAPTIONS["row_sum"]
        out.append(section("attention", "Attention at the last probe step",
                           figure(figures.attention_figure(last["attention"]), "attention statistics", caption)))
    return out
