"""Scaling laws on your own corpus and machine (`vslm scaling SPEC --out DIR`): a grid of model sizes x
token budgets, every run on one token stream, and the L(N, D) fit of vslm.lab.scaling_fit.

A spec is a TOML file (built-ins in vslm/configs/scaling, usable by name):

    description = "one line"
    base = "tiny"                       # the config every run starts from (a built-in name or a path)
    overrides = ["data.max_bytes=1000000", "train.batch_size=16"]   # common to every run
    widths = [16, 32, 48, 64]           # the sizes: depth and heads follow from the width (below)
    aspect = 16                         # depth = max(1, round(width / aspect))
    head_dim = 16                       # heads = max(1, width // head_dim)
    steps = [100, 200, 400, 800]        # the token budgets, in optimizer steps
    seed = 0                            # train.seed of every run: one data order for all
    bootstrap = 200                     # refits over runs resampled with replacement

Size rule: width w sets depth max(1, round(w / aspect)) and heads max(1, w // head_dim), so the
aspect ratio (width / depth) and the head size stay fixed as the model grows (nanoGPT's recipes keep
width / depth near 64: 4 x 128 ... 12 x 768; the tiny grid uses 16 to get depth 1 to 4).

Budgets: a run of s steps trains on D = s x batch_size x grad_accum x context tokens with its own
schedule (warmup, then decay to min_lr at step s), as Chinchilla's approach 3 trains each (N, D)
to the end of its own cosine. One token stream: the training windows are drawn by WindowSampler from
a generator seeded by train.seed alone (vslm.data.batches), so the k-th batch is the same whatever
the model or the number of steps; every run shares the data section, seed, batch, accumulation and
context (checked here), and a run with budget D sees exactly the first D tokens of that one stream
(tests/test_scaling.py checks it on token ids, through the trainer's own sampler).

Runs go to DIR/w<width>-d<depth>/steps-<s>/seed-<seed>, each trained by vslm.lab.runner.train_or_reuse
(a finished run is reused, an unfinished one resumed) through `_train_all`, the one place that trains:
vslm.lab.parallel's runner, so `--jobs N` and `--launcher ray` apply as for experiments.
Every run keeps log-spaced snapshots and probes (steps 0, 1, 2, 4, ...), so the training dynamics
compare across sizes. The fit, its bootstrap, approach 1 and both FLOP counts go to DIR/fit.json;
DIR/report.html draws them (vslm.report.scaling).

Choices: N counts every parameter, the embeddings included (Chinchilla's convention; Kaplan et al.
left them out: their count is in fit.json as params_non_embedding). The compute-optimal allocation
and approach 1 use C = 6 N D; the exact training FLOPs of vslm.model.accounting (the head, attention)
are in fit.json beside them, with their ratio to 6 N D.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator
from rich.console import Console

from vslm.config import RunConfig, fields_set_by, load_config, one_line_error
from vslm.errors import ConfigError, VSLMError, refuse_file_in_the_way
from vslm.files import write_text
from vslm.lab import scaling_fit
from vslm.lab.experiments import builtin_descriptions, fails_the_same, read_spec, run_state
from vslm.lab.parallel import Launcher, RunJob, run_jobs
from vslm.lab.runner import build_for_accounting, tokens_per_run
from vslm.model import parameter_count, training_flops_per_token
from vslm.plain import dumps
from vslm.report.runs import read_run
from vslm.report.scaling import FIT, write_scaling_report
from vslm.train.run_folder import refuse_a_run_as_collection

# set by the grid, never by an override: the size rule and the budgets
GRID_FIELDS = ("model.width", "model.depth", "model.heads", "model.head_dim", "train.steps", "train.seed")
# what fixes the token stream (vslm.data.batches.WindowSampler): equal in every run of a study
STREAM_FIELDS = {"train": ("seed", "batch_size", "grad_accum"), "model": ("context",)}
# in every run, whatever the base says (a command-line override still wins): weights and probes at steps
# 0, 1, 2, 4, ..., so the training dynamics compare across sizes and budgets
DYNAMICS = ("train.snapshots=true", 'logging.probe_every="auto"')


class ScalingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    description: str = ""
    base: str
    overrides: list[str] = []
    widths: list[PositiveInt] = Field(min_length=1)
    aspect: PositiveInt = 64
    head_dim: PositiveInt = 32
    steps: list[PositiveInt] = Field(min_length=1)
    seed: int = 0
    bootstrap: int = Field(200, ge=0)

    @field_validator("widths", "steps")
    @classmethod
    def _ascending(cls, values: list[int]) -> list[int]:
        if sorted(set(values)) != values:
            raise ValueError(f"must be strictly ascending (no repeats), got {values}")
        return values


@dataclass(frozen=True)
class Size:
    width: int
    aspect: int
    head_dim: int

    @property
    def depth(self) -> int:
        return max(1, round(self.width / self.aspect))

    @property
    def heads(self) -> int:
        return max(1, self.width // self.head_dim)

    @property
    def label(self) -> str:
        return f"w{self.width}-d{self.depth}"

    def overrides(self) -> list[str]:
        return [f"model.width={self.width}", f"model.depth={self.depth}", f"model.heads={self.heads}"]


@dataclass
class ScalingRun:
    """One (size, budget) of the grid: its config, folder and label (the runner's job), and its counts."""

    cfg: RunConfig
    folder: Path
    label: str
    size: Size
    steps: int
    tokens: int
    params: int
    params_non_embedding: int
    flops_per_token: int


def builtin_scaling_specs() -> dict[str, str]:
    """Built-in scaling specs and their one-line descriptions."""
    return builtin_descriptions("vslm.configs.scaling")


def load_scaling_spec(name_or_path: str) -> tuple[str, ScalingSpec]:
    """(name, validated spec) of a built-in scaling spec or a TOML path; a relative base is looked up beside it."""
    name, raw, label = read_spec(name_or_path, "vslm.configs.scaling", "scaling spec")
    try:
        return name, ScalingSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix=label, root=ScalingSpec)) from None


def non_embedding_params(model) -> int:
    """Parameters less the token and position embeddings (Kaplan et al.'s N)."""
    embeddings = model.embed.weight.numel() + (model.pos.weight.numel() if model.pos is not None else 0)
    return parameter_count(model) - embeddings


def plan_scaling(spec: ScalingSpec, out: Path, extra_overrides: Sequence[str] = ()) -> list[ScalingRun]:
    """Every run of the grid, validated and counted (on the meta device) before anything trains."""
    points = len(spec.widths) * len(spec.steps)
    params = len(scaling_fit.PARAMETERS)
    if points < params:
        raise ConfigError(f"the grid has {points} runs ({len(spec.widths)} sizes x {len(spec.steps)} budgets), fewer "
                          f"than the {params} parameters of the L(N, D) fit: give more widths or steps")
    if len(spec.widths) < 2 or len(spec.steps) < 2:
        raise ConfigError(f"the grid needs at least 2 widths and 2 budgets to tell alpha from beta, got "
                          f"{len(spec.widths)} widths and {len(spec.steps)} budgets")
    for word in [*spec.overrides, *extra_overrides]:
        if grid := fields_set_by(word, GRID_FIELDS):  # `model={...}` sets them all
            raise ConfigError(f"override '{word}': {', '.join(grid)} {'is' if len(grid) == 1 else 'are'} set by the "
                              "scaling grid (widths, aspect, head_dim, steps, seed), not by an override")
    shared = [*spec.overrides, *DYNAMICS, *extra_overrides, "logging.progress=false"]
    runs = []
    for width in spec.widths:
        size = Size(width, spec.aspect, spec.head_dim)
        for steps in spec.steps:
            words = [*spec.overrides, *DYNAMICS, *size.overrides(), f"train.steps={steps}", f"train.seed={spec.seed}",
                     *extra_overrides, "logging.progress=false"]
            try:
                cfg = load_config(spec.base, words, shared=True)
            except ConfigError as e:  # blamed on the shared part where it fails the same without the grid
                who = "the spec's base and overrides (and the command line's)" if fails_the_same(spec.base, shared, e) \
                    else f"size {size.label}, {steps} steps"
                raise ConfigError(f"{who}: {e}") from None
            if cfg.train.warmup >= steps:
                raise ConfigError(f"train.warmup {cfg.train.warmup} is not below the smallest budget's {steps} steps")
            model = build_for_accounting(cfg)
            runs.append(ScalingRun(cfg, Path(out) / size.label / f"steps-{steps}" / f"seed-{spec.seed}",
                                   f"{size.label} {steps} steps", size, steps, tokens_per_run(cfg),
                                   parameter_count(model), non_embedding_params(model),
                                   training_flops_per_token(model)))
    first = runs[0].cfg
    for run in runs[1:]:  # one token stream: what WindowSampler's draws depend on is the same in every run
        same = run.cfg.data == first.data and all(getattr(getattr(run.cfg, s), f) == getattr(getattr(first, s), f)
                                                  for s, fields in STREAM_FIELDS.items() for f in fields)
        if not same:
            raise ConfigError(f"{run.label} would see another token stream than {runs[0].label}: the data section, "
                              "train.seed, batch_size, grad_accum and model.context must be the same in every run")
    return runs


def _train_all(runs: list[ScalingRun], console: Console | None = None, launcher: Launcher | None = None) -> list[dict]:
    """Every run trained or reused (vslm.lab.parallel.run_jobs: one after another, in worker processes, or
    on a Ray cluster), in order: its final numbers, or {"failed": reason} for a run that diverged or crashed.
    The one place a scaling study trains."""
    def said(job: RunJob, result: dict) -> None:
        if console:
            text = result["failed"] if "failed" in result else \
                f"val_loss {result['val_loss']:.4f} ({result['train_time_s']:.1f} s of training" \
                f"{', reused' if result['reused'] else ''})"
            console.print(f"{job.label}: {text}", highlight=False, markup=False)

    return run_jobs([RunJob(run.cfg, run.folder, run.label) for run in runs], launcher, said)


def _curve(folder: Path, tokens_per_step: int) -> dict[str, list[float]]:
    steps, loss = read_run(folder).series("loss")
    return {"tokens": (steps * tokens_per_step).tolist(), "loss": loss.tolist()}


def study(runs: list[ScalingRun], results: list[dict], bootstrap: int = 200, starts: int | None = None,
          seed: int = 0) -> dict:
    """The runs' table (with what was left out and why), the approach 3 fit with its bootstrap, approach 1,
    the compute-optimal exponents and the literature beside them: fit.json's content."""
    rows, left_out, curves = [], [], []
    for run, result in zip(runs, results, strict=True):
        row = {"label": run.label, "folder": str(run.folder.relative_to(run.folder.parents[2])),
               "width": run.size.width, "depth": run.size.depth,
               "heads": run.size.heads, "steps": run.steps, "tokens": run.tokens, "params": run.params,
               "params_non_embedding": run.params_non_embedding, "flops_per_token": run.flops_per_token,
               "flops_6nd": 6 * run.params * run.tokens, "flops_exact": run.flops_per_token * run.tokens}
        if "failed" in result:
            reason = result["failed"]
        elif not (isinstance(result.get("val_loss"), float) and math.isfinite(result["val_loss"])):
            reason = f"final val_loss is {result.get('val_loss')}"
        else:
            reason = None
            row.update(val_loss=result["val_loss"], train_loss=result.get("loss"),
                       train_time_s=result.get("train_time_s"), reused=result.get("reused"))
            curves.append({"params": run.params, **_curve(run.folder, run.tokens // run.steps)})
        row["left_out"] = reason
        if reason:
            left_out.append({"label": run.label, "reason": reason})
        rows.append(row)
    used = [r for r in rows if r["left_out"] is None]
    out: dict = {"runs": rows, "left_out": left_out, "chinchilla": scaling_fit.CHINCHILLA,
                 "choices": {
                     "N": "all parameters, embeddings included (Chinchilla's convention); params_non_embedding is "
                          "Kaplan et al.'s count",
                     "D": "training tokens: steps x batch_size x grad_accum x context",
                     "loss": "final validation loss (nats per token) on the fixed validation windows",
                     "flops": "the compute-optimal allocation and approach 1 use C = 6 N D; flops_exact (vslm.model."
                              "accounting: training FLOPs per token x D) is beside it in every run"},
                 "huber_delta": scaling_fit.HUBER_DELTA}
    ratios = {r["label"].split()[0]: r["flops_exact"] / r["flops_6nd"] for r in rows}
    out["flops_exact_over_6nd"] = ratios
    try:
        fit = scaling_fit.fit_law([r["params"] for r in used], [r["tokens"] for r in used],
                                  [r["val_loss"] for r in used], starts=starts, bootstrap=bootstrap, seed=seed)
    except VSLMError as e:
        out["error"] = str(e)
        return out
    law = fit.law
    for r, residual in zip(used, fit.residuals, strict=True):
        r["fitted_loss"] = float(law.loss(r["params"], r["tokens"]))
        r["residual"] = float(residual)
    largest = max(r["flops_6nd"] for r in used)
    falls = law.alpha > 0 and law.beta > 0  # else no compute-optimal point: _warnings says why
    n_opt, d_opt = law.optimal(largest) if falls else (math.nan, math.nan)
    out["fit"] = {**law.as_dict(), "a": law.a if falls else math.nan, "b": law.b if falls else math.nan,
                  "objective": fit.objective, "starts": fit.starts,
                  "converged_starts": fit.converged_starts, "bootstrap": len(fit.bootstrap),
                  "intervals": fit.intervals(),
                  "rms_residual": float(math.sqrt(sum(x * x for x in fit.residuals) / len(fit.residuals))),
                  "at_largest_run": {"flops": largest, "n_opt": float(n_opt), "d_opt": float(d_opt),
                                     "tokens_per_param": float(d_opt / n_opt)}}
    out["bootstrap"] = [[b.E, b.A, b.alpha, b.B, b.beta] for b in fit.bootstrap]
    out["approach1"] = scaling_fit.envelope(curves)
    out["warnings"] = _warnings(law, used)
    return out


def few_runs(runs: int) -> str | None:
    """A note when the grid is too small for the law's intervals to mean much: with about as many runs as
    parameters the fit passes near every point, so its residuals and bootstrap say little."""
    params = len(scaling_fit.PARAMETERS)
    if runs >= 2 * params:
        return None
    return (f"{runs} runs for the law's {params} parameters: the fit passes near every point, so its intervals "
            f"and rms residual say little (give {2 * params} or more runs, e.g. 4 sizes x 3 budgets)")


OUTLIER = 3.0  # a run whose log residual is this many times the other runs' rms or more: named in the warnings


def _warnings(law: scaling_fit.Law, used: list[dict]) -> list[str]:
    """The fit's doubts, said in fit.json, the report and `vslm plan --from`: too few runs, exponents that are
    not positive, an irreducible loss above the lowest measured or at about 0, a run the law does not fit."""
    notes = [note] if (note := few_runs(len(used))) else []
    if law.alpha <= 0 or law.beta <= 0:
        notes.append(f"alpha {law.alpha:.3g} or beta {law.beta:.3g} is not positive: the loss does not fall with "
                     "size or data over this grid, and the compute-optimal exponents mean nothing")
    low = min(r["val_loss"] for r in used)
    if law.E > low:
        notes.append(f"E = {law.E:.3f} is above the lowest measured loss {low:.3f}")
    elif law.E < 1e-3 * low:
        notes.append(f"E = {law.E:.3g}, about 0: this grid does not pin down the irreducible loss (the size and "
                     "data terms take all of it), and the compute-optimal split rests on that; give runs that "
                     "reach lower losses (larger sizes, longer budgets)")
    fitted = [r for r in used if "residual" in r]
    total = sum(r["residual"] ** 2 for r in fitted)
    for r in fitted:  # a point the law does not fit, against the rms of the others (its own would hide it)
        others = math.sqrt(max(total - r["residual"] ** 2, 0.0) / (len(fitted) - 1)) if len(fitted) > 1 else 0.0
        if others > 0 and abs(r["residual"]) > OUTLIER * others:
            notes.append(f"{r['label']}: its loss {r['val_loss']:.3f} is off the law's {r['fitted_loss']:.3f} by a log "
                         f"residual of {r['residual']:+.3f}, {abs(r['residual']) / others:.1f} x the other runs' rms: "
                         "a point the law does not fit")
    return notes


def run_scaling(spec_name_or_path: str, out: Path, extra_overrides: Sequence[str] = (), console: Console | None = None,
                dry_run: bool = False, starts: int | None = None, launcher: Launcher | None = None) -> dict:
    """Plan (and with dry_run stop there), train or reuse every run, fit, write out/fit.json and
    out/report.html. Raises VSLMError (after writing both) when the fit cannot be made."""
    name, spec = load_scaling_spec(spec_name_or_path)
    out = Path(out)
    runs = plan_scaling(spec, out, extra_overrides)
    refuse_file_in_the_way(out)  # the dry run says it too
    refuse_a_run_as_collection(out, "a scaling grid")
    command = shlex.join(["vslm", "scaling", spec_name_or_path, *extra_overrides, "--out", str(out)])
    if console:
        total = sum(r.tokens for r in runs)
        console.print(f"{name}: {len(spec.widths)} sizes x {len(spec.steps)} budgets = {len(runs)} runs, "
                      f"{total:,} tokens in all, one token stream (seed {spec.seed})", highlight=False)
        for width in spec.widths:
            r = next(r for r in runs if r.size.width == width)
            heads = f"{r.size.heads} head{'s' if r.size.heads != 1 else ''}"
            console.print(f"  {r.size.label}: {heads}, {r.params:,} parameters "
                          f"({r.params_non_embedding:,} without embeddings), {r.flops_per_token:,} FLOPs/token",
                          highlight=False)
        budgets = ", ".join(f"{r.steps} steps = {r.tokens:,} tokens" for r in runs[: len(spec.steps)])
        console.print(f"  budgets: {budgets}", highlight=False)
        if note := few_runs(len(runs)):
            console.print(f"note: {note}", highlight=False, markup=False)
    if dry_run:
        states = {r.folder: run_state(r.cfg, r.folder) for r in runs}
        if console and (other := [str(f) for f, state in states.items() if state == "other_settings"]):
            console.print(f"{len(other)} run folder{'s hold runs' if len(other) > 1 else ' holds a run'} of other "
                          "settings, which the study refuses: "
                          f"{', '.join(other)}", highlight=False, markup=False)
        return {"scaling": name, "runs": [{"label": r.label, "params": r.params, "tokens": r.tokens,
                                           "folder": str(r.folder), "state": states[r.folder]} for r in runs]}
    results = _train_all(runs, console, launcher)
    report = {"scaling": name, "description": spec.description, "command": command,
              "rule": {"aspect": spec.aspect, "head_dim": spec.head_dim, "widths": spec.widths, "steps": spec.steps,
                       "depth": "max(1, round(width / aspect))", "heads": "max(1, width // head_dim)"},
              "base_config": runs[0].cfg.to_raw(),  # data.max_bytes = "none" kept: a plan from it reads no 8 MB cap
              **study(runs, results, spec.bootstrap, starts, spec.seed)}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / FIT, dumps(report, indent=1) + "\n")
    write_scaling_report(out)
    for note in report.get("warnings", []) if console else ():  # the fit's doubts, in the report too
        console.print(f"warning: {note}", highlight=False, markup=False)
    if "error" in report:
        raise VSLMError(f"{report['error']} ({len(report['left_out'])} runs left out; {out / FIT} and "
                        f"{out / 'report.html'} list them)")
    return report
