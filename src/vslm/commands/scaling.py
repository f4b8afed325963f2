"""`vslm scaling SPEC --out DIR` (vslm.lab.scaling) and `vslm plan --hours H --from DIR/fit.json`: the
compute-optimal size and budget for H hours on this machine, from the fitted law and the measured speed.

The plan measures the speed of vslm.commands.plan's ladder of shapes on this machine (seconds per token
= overhead + per_flop x FLOPs per token), with the study's data, context, batch and architecture, and
takes the shape whose H hours of tokens, D = H x its tokens/s, give the lowest loss by the law:
argmin over N of L(N, D(N)). That is the compute-optimal allocation under this machine's real cost
(time), which counts the attention and head FLOPs and the per-token overhead that C = 6 N D leaves out.
The predicted loss and its interval come from the bootstrap's laws at the chosen (N, D); each
bootstrap law's own choice gives the interval of the optimal size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vslm.commands.plan import TOKENS_PER_PARAM, CostFit, Shape, make_plan
from vslm.config import apply_overrides, validate
from vslm.errors import UsageError, VSLMError
from vslm.lab.scaling import run_scaling
from vslm.lab.scaling_fit import CHINCHILLA, Law

__all__ = ["plan_from_fit", "print_law_plan", "run_scaling"]

# a study's model fields that the plan's ladder sets itself (or that follow from the tokenizer)
SIZE_FIELDS = {"width", "depth", "heads", "head_dim", "kv_heads", "vocab_size", "ffn", "order", "unique_blocks",
               "embed_width"}


# the study's training recipe beside its data, context, batch and architecture: its law describes runs made so, and
# the plan makes its run so (its lr, schedule and warm-up too, in place of the plan's lr by width)
RECIPE = ("optimizer", "momentum", "tangent_update", "tangent_retract", "tangent_when", "hidden_lr_scale",
          "weight_decay", "betas", "eps", "grad_clip", "decay_fraction")
SCHEDULE = ("lr", "min_lr", "warmup", "schedule")


def read_fit(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "fit.json"
    if not path.is_file():
        raise VSLMError(f"no fit at {path}: give the fit.json of `vslm scaling SPEC --out DIR`")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VSLMError(f"{path} is not the fit.json of `vslm scaling SPEC --out DIR` (not JSON: {e})") from None
    if not isinstance(result, dict) or not result.get("fit"):
        why = result.get("error", "the study did not finish") if isinstance(result, dict) else "not a study's fit"
        raise VSLMError(f"{path} holds no fit ({why})")
    if missing := _missing(result):
        raise VSLMError(f"{path} is not the fit.json of `vslm scaling SPEC --out DIR`: {missing}")
    return result


def _missing(result: dict) -> str | None:
    """What a fit.json lacks of what the plan reads (an edited or truncated one), None if nothing."""
    fit, base = result["fit"], result.get("base_config")

    def number(x) -> bool:  # a finite int or float (JSON's true is not one)
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(fit, dict) or (gone := [k for k in ("E", "A", "alpha", "B", "beta") if not number(fit.get(k))]):
        return f"fit.{gone[0] if isinstance(fit, dict) else 'E'} is missing or not a finite number"
    if fit["alpha"] <= 0 or fit["beta"] <= 0:
        return (f"its law's alpha {fit['alpha']:.3g} or beta {fit['beta']:.3g} is not positive: the loss does not "
                "fall with size or data over the study's grid, so no size is better by it (widen or rerun the study)")
    if not isinstance(base, dict) or not all(isinstance(base.get(k), dict) for k in ("model", "data", "train")):
        return "base_config (with model, data and train) is missing"
    runs = result.get("runs")
    if not isinstance(runs, list) or not runs or not all(
            isinstance(r, dict) and number(r.get("params")) and number(r.get("tokens")) and "left_out" in r
            for r in runs):
        return "runs (each with params, tokens and left_out) is missing or incomplete"
    if all(r["left_out"] is not None for r in runs):
        return "every one of its runs is left out, so no run was fitted"
    law = Law(**{k: fit[k] for k in ("E", "A", "alpha", "B", "beta")})
    for r in runs:  # the law as written gives the fitted loss written beside each run (a hand-edited law does not)
        given = float(law.loss(r["params"], r["tokens"]))
        if r["left_out"] is None and number(r.get("fitted_loss")) and not math.isclose(given, r["fitted_loss"],
                                                                                       rel_tol=1e-6):
            return (f"its law gives run {r.get('label', '?')} a loss of {given:.4g}, not the {r['fitted_loss']:.4g} "
                    "fitted beside it: the law or the runs were edited")
    boots = result.get("bootstrap", [])
    if not isinstance(boots, list) or not all(
            isinstance(row, list) and len(row) == 5 and all(v is None or number(v) for v in row) for row in boots):
        return "bootstrap is not a list of (E, A, alpha, B, beta) rows of numbers"
    return None


def refuse_study_changes(overrides: Sequence[str]) -> None:
    """With --from, an override of what the study's law was fitted on (its data, model, batch or optimizer) would
    plan a run the law does not describe: refused, naming it. Where the data is found (data.origin) may change."""
    fixed = [f"train.{k}" for k in (*RECIPE, "batch_size", "grad_accum")]
    for word in overrides:
        key = word.partition("=")[0].strip()
        if key == "data.origin":
            continue
        if key in ("data", "model", "train") or key.startswith(("data.", "model.")) or key in fixed:
            raise UsageError(f"override '{word}': --from plans the study's data, model, batch and optimizer, which its "
                             "law was fitted on; leave it out (or fit a study with it)")


def refuse_uncarried(base: dict, path: Path) -> None:
    """A study's model or data that the plan's ladder of uniform shapes cannot carry (per-layer schedules or
    blocks, grouped-query heads, an embedding width of its own, copying lists): refused, naming the field,
    rather than planned as another model."""
    from vslm.config import DataConfig, ModelConfig

    for section, schema in (("model", ModelConfig), ("data", DataConfig)):
        default = schema().model_dump(mode="json", exclude_none=True)  # as RunConfig.to_raw writes a study's
        for key, value in base[section].items():
            nested = isinstance(value, dict | list) and value != default.get(key)
            if nested or (key in ("kv_heads", "embed_width") and value is not None):
                raise UsageError(f"{path}: the study's {section}.{key} is not carried by plan --from, whose sizes are "
                                 "uniform GPT shapes; plan from a study without it")


def study_overrides(base: dict) -> list[str]:
    """The study's data, context, batch and architecture as dotted overrides of the plan's base config."""
    words = [f"model.{k}={json.dumps(v, ensure_ascii=False)}" for k, v in base["model"].items()
             if k not in SIZE_FIELDS and isinstance(v, str | int | float | bool)]
    words += [f"data.{k}={json.dumps(v, ensure_ascii=False)}" for k, v in base["data"].items()
              if isinstance(v, str | int | float | bool)]
    words += [f"train.{k}={base['train'][k]}" for k in ("batch_size", "grad_accum") if k in base["train"]]
    words += [f"train.{k}={json.dumps(base['train'][k], ensure_ascii=False)}" for k in RECIPE
              if base["train"].get(k) is not None]
    return words


def law_chooser(law: Law):
    """(sizes, cost fit, seconds) -> the shape whose `seconds` of tokens give the lowest predicted loss."""
    def choose(sizes: dict[Shape, tuple[int, int]], fit: CostFit, seconds: float) -> Shape:
        return min(sizes, key=lambda s: float(law.loss(sizes[s][0], seconds * fit.tokens_per_s(sizes[s][1]))))
    return choose


def plan_from_fit(hours: float, fit_path: Path, overrides: Sequence[str] = (), seconds: float = 5.0,
                  max_measure: int = 5, console: Console | None = None) -> dict:
    """vslm.commands.plan.make_plan with the law's choice in place of 20 tokens per parameter; the plan
    dict gains `law`, `predicted_loss` (with `loss_interval`), `n_interval`, `within_fit`."""
    result = read_fit(fit_path)
    refuse_study_changes(overrides)
    refuse_uncarried(result["base_config"], Path(fit_path))
    fit = result["fit"]
    law = Law(**{k: fit[k] for k in ("E", "A", "alpha", "B", "beta")})
    boots = [Law(*row) for row in result.get("bootstrap", []) if all(v is not None for v in row)]
    plan = make_plan(hours, None, [*study_overrides(result["base_config"]), *overrides], seconds, max_measure,
                     console, chooser=law_chooser(law))
    n, d = plan["params"], plan["tokens"]
    budget_s = hours * 3600
    plan["law"] = fit
    plan["predicted_loss"] = float(law.loss(n, d))
    plan["loss_interval"] = _percentiles([float(b.loss(n, d)) for b in boots], 0.90)  # a central 90% interval
    chosen = [law_chooser(b)(plan["sizes"], plan["fit"], budget_s) for b in boots]
    plan["n_interval"] = _percentiles([plan["sizes"][s][0] for s in chosen])
    used = [r for r in result["runs"] if r["left_out"] is None]
    plan["within_fit"] = (min(r["params"] for r in used) <= n <= max(r["params"] for r in used)
                          and min(r["tokens"] for r in used) <= d <= max(r["tokens"] for r in used))
    plan["fit_path"] = str(fit_path)
    plan["fit_warnings"] = [w for w in result.get("warnings", []) if isinstance(w, str)]
    study_train = result["base_config"]["train"]  # the study's lr and schedule, not the plan's lr by width
    schedule = {k: study_train[k] for k in SCHEDULE if study_train.get(k) is not None}
    if "warmup" in schedule:  # before the steps' end, and before a wsd schedule's decay
        steps, decay = plan["steps"], study_train.get("decay_fraction", 0.0)
        room = steps - round(decay * steps) if schedule.get("schedule") == "wsd" else steps - 1
        schedule["warmup"] = max(0, min(schedule["warmup"], room))
    plan["config"] = validate(apply_overrides(plan["config"].to_raw(),
                                              [f"train.{k}={json.dumps(v, ensure_ascii=False)}"
                                               for k, v in schedule.items()]))
    plan["config"] = plan["config"].model_copy(update={"description": (
        f"from vslm plan --from {fit_path}: {d:,} tokens, {d / n:.0f} per parameter, predicted val_loss "
        f"{plan['predicted_loss']:.3f} by the fitted law, {plan['predicted_train_s'] / 60:.1f} min of training on the "
        "machine it measured")})
    return plan


def _percentiles(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The central `level` interval of the finite values."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def print_law_plan(plan: dict, out: Path, console: Console) -> None:
    law, fit = Law(**{k: plan["law"][k] for k in ("E", "A", "alpha", "B", "beta")}), plan["fit"]
    budget_s = plan["hours"] * 3600
    table = Table(title=f"model sizes for {plan['hours']:g} hours here, by the law of {plan['fit_path']}")
    for col in ("width x depth", "params", "tokens/s fitted", "tokens in the hours", "tokens/param", "predicted loss"):
        table.add_column(col, justify="right")
    for shape, (n, f) in plan["sizes"].items():
        tokens = budget_s * fit.tokens_per_s(f)
        mark = " <- plan" if shape == plan["shape"] else ""
        table.add_row(f"{shape.width} x {shape.depth}{mark}", f"{n:,}", f"{fit.tokens_per_s(f):,.0f}", f"{tokens:,.0f}",
                      f"{tokens / n:.1f}", f"{float(law.loss(n, tokens)):.4f}")
    console.print(table)
    lo_hi = plan["loss_interval"]
    interval = f" [90%: {lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else ""
    n_lo_hi = plan["n_interval"]
    n_interval = f" (bootstrap 95%: {n_lo_hi[0]:,.0f} to {n_lo_hi[1]:,.0f})" if n_lo_hi else ""
    cfg = plan["config"]
    console.print(
        f"plan: width {plan['shape'].width}, depth {plan['shape'].depth}, {plan['params']:,} parameters{n_interval}, "
        f"{plan['tokens']:,} tokens ({plan['tokens_per_param']:.1f} per parameter) = {plan['steps']:,} steps of "
        f"{cfg.train.batch_size} x {cfg.model.context}; predicted val_loss {plan['predicted_loss']:.3f}{interval}, "
        f"{plan['predicted_train_s'] / 60:.1f} min of training"
        + (f" (+ ~{plan['predicted_probe_s'] / 60:.1f} min of probes at {plan['probes']} steps)" if plan["probes"]
           else ""), highlight=False)
    notes = [
        f"The law: L = {law.E:.3g} + {law.A:.3g} / N^{law.alpha:.3f} + {law.B:.3g} / D^{law.beta:.3f} (N with the "
        f"embeddings); N_opt ~ C^{law.a:.2f}, D_opt ~ C^{law.b:.2f}. Chinchilla: alpha {CHINCHILLA['alpha']}, beta "
        f"{CHINCHILLA['beta']}, about {TOKENS_PER_PARAM:.0f} tokens per parameter.",
        "The size minimises the law's loss at the tokens each size trains in the hours at its measured speed "
        "(the machine's real cost, not 6 N D). The interval of the loss is over the bootstrap's laws at this (N, D).",
        "Inside the fitted grid of sizes and budgets." if plan["within_fit"] else
        "Outside the fitted grid of sizes or budgets: the law is extrapolated.",
        "The sizes are the plan's ladder of shapes (depth about width / 64, heads of 32 dimensions), not the "
        "study's rule: the law is read by parameters and tokens only.",
        *(f"The study's fit warned: {w}" for w in plan.get("fit_warnings", [])),
    ]
    ladder = list(plan["sizes"])
    if plan["shape"] in (ladder[0], ladder[-1]):
        edge = "smallest" if plan["shape"] == ladder[0] else "largest"
        notes.append(f"The {edge} size of the ladder: the law's best lies there or past it (the bootstrap's interval "
                     f"collapses on the edge), so a {'smaller' if edge == 'smallest' else 'larger'} model may do "
                     "better still.")
    for note in notes:
        console.print(f"  - {note}", highlight=False)
    console.print(f"config written to {out}; train it with: vslm train {out}", highlight=False, markup=False)
