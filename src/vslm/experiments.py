"""`vslm experiment NAME`: the variants of one config trained over several seeds and compared honestly.

RESEARCH.md section 8: every comparison runs over several seeds, reports mean and spread and whether a
difference is significant (Welch's t-test), on a fixed validation set and equal token budgets, with
parameters and FLOPs per token beside every loss, and bits per byte. An experiment is a TOML file:

    description = "one line"
    base = "tiny"                      # the config every variant starts from (a built-in name or a path)
    seeds = 3                          # seeds 0..n-1 go to train.seed
    overrides = ["train.steps=300"]    # common to every variant
    [[variants]]                       # the first variant is the baseline
    name = "narrow"
    [[variants]]
    name = "wide"
    overrides = ["model.width=48"]

Runs go to out/<variant>/seed-<seed>: a finished one is reused and an unfinished one resumed, so an
interrupted experiment is completed by running the same command again.

With `cross_eval = true` (the dataset-quality experiment, RESEARCH.md section 4: variants that
differ in `data.source`), every run is also scored on every variant's held-out text, each token
once, with the run's tokenizer: a train x eval matrix of bits per byte (and loss per token), mean
and sample standard deviation over seeds, in results.json, results.md and report.html's heat map.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import statistics
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table
from scipy import stats

from vslm.config import RunConfig, load_config, one_line_error
from vslm.data.shards import prepare_corpus
from vslm.describe import build_for_accounting
from vslm.errors import ConfigError, VSLMError
from vslm.eval.corpus import score_tokens
from vslm.model import parameter_count, training_flops_per_token
from vslm.report.experiment import write_experiment_report
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import CHECKPOINTS, CONFIG, METRICS, load_run, read_run_config
from vslm.train.trainer import Trainer

SIGNIFICANCE = 0.05
FIXED_TOKENIZERS = ("byte", "gpt2")  # the same for every corpus: a run's shards of any corpus can be reused
COLUMNS = ("variant", "params", "FLOPs/token", "tokens", "val_loss", "val_bpb", "Δ val_loss", "p (Welch)", "verdict")


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[\w.-]+$")  # it names a folder
    overrides: list[str] = []


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    base: str
    seeds: int = Field(3, ge=1)
    overrides: list[str] = []
    variants: list[Variant] = Field(min_length=1)
    cross_eval: bool = False  # every run scored on every variant's held-out text (train x eval matrix)

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate variant names: {', '.join(duplicates)}")
        return self


def builtin_experiments() -> dict[str, str]:
    """Built-in experiment names and their one-line descriptions."""
    entries = sorted(resources.files("vslm.configs.experiments").iterdir(), key=lambda p: p.name)
    return {e.name.removesuffix(".toml"): tomllib.loads(e.read_text()).get("description", "")
            for e in entries if e.name.endswith(".toml")}


def load_experiment(name_or_path: str) -> tuple[str, ExperimentSpec]:
    """(name, validated spec) of a built-in experiment or a TOML path; a relative base is looked up beside it."""
    path = Path(name_or_path)
    if path.is_file():
        text, name, label = path.read_text(encoding="utf-8"), path.stem, str(path)
    else:
        entry = resources.files("vslm.configs.experiments") / f"{name_or_path}.toml"
        if not entry.is_file():
            names = ", ".join(builtin_experiments())
            raise ConfigError(f"no experiment '{name_or_path}': not a file, nor a built-in experiment ({names})")
        text, name, label = entry.read_text(), name_or_path, f"built-in experiment '{name_or_path}'"
    try:
        spec = ExperimentSpec.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML: {e}") from None
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix=label)) from None
    if path.is_file() and (path.parent / spec.base).is_file():
        spec.base = str(path.parent / spec.base)
    return name, spec


def tokens_per_run(cfg: RunConfig) -> int:
    t = cfg.train
    return t.steps * t.batch_size * t.grad_accum * cfg.model.context


def plan_experiment(spec: ExperimentSpec, seeds: int,
                    extra_overrides: Sequence[str] = ()) -> dict[str, list[RunConfig]]:
    """Every variant's config for every seed, validated (and budgets compared) before anything trains."""
    if seeds < 1:
        raise ConfigError(f"an experiment needs at least 1 seed, got {seeds}")
    plan = {}
    for variant in spec.variants:
        words = [*spec.overrides, *variant.overrides]
        try:
            plan[variant.name] = [load_config(spec.base, [*words, f"train.seed={seed}", *extra_overrides,
                                                          "logging.progress=false"]) for seed in range(seeds)]
        except ConfigError as e:
            raise ConfigError(f"variant '{variant.name}': {e}") from None
    budgets = {name: tokens_per_run(cfgs[0]) for name, cfgs in plan.items()}
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{name} {tokens:,}" for name, tokens in budgets.items())
        raise ConfigError(f"variants train unequal token budgets (steps x batch_size x grad_accum x context): {listed}")
    return plan


def _same_settings(cfg: RunConfig, saved: RunConfig) -> bool:
    cfg = cfg.with_vocab_size(saved.model.vocab_size)  # the saved config has it from the tokenizer
    return cfg.fingerprint("model", "data", "train") == saved.fingerprint("model", "data", "train")


def train_or_reuse(cfg: RunConfig, folder: Path) -> dict:
    """One run's final numbers: read back if the folder holds it finished, else trained (or resumed) to the end."""
    if (folder / CONFIG).exists():
        saved = read_run_config(folder)
        if not _same_settings(cfg, saved):
            raise VSLMError(f"{folder} holds a run with other settings than this experiment's; move it away")
        found = list_checkpoints(folder / CHECKPOINTS)
        if found and found[-1][0] == cfg.train.steps:
            final = json.loads((folder / METRICS).read_text().splitlines()[-1])
            model = build_for_accounting(saved)
            return {**final, "params": parameter_count(model), "flops_per_token": training_flops_per_token(model),
                    "reused": True}
        if found:
            trainer = Trainer(cfg, folder, resume=True)
        else:  # interrupted before its first checkpoint: nothing to keep, train it again
            shutil.rmtree(folder)
            trainer = Trainer(cfg, folder)
    else:
        trainer = Trainer(cfg, folder)
    final = trainer.fit()
    return {**final, "params": trainer.params, "flops_per_token": trainer.flops_per_token, "reused": False}


def _sample_std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def summarize(runs: dict[str, list[dict]], tokens: int) -> dict[str, dict]:
    """Per variant: cost, mean and sample std, and Welch's t-test of val_loss against the first (baseline)."""
    baseline = next(iter(runs))
    ref = [r["val_loss"] for r in runs[baseline]]
    summary = {}
    for name, rs in runs.items():
        losses, bpbs = [r["val_loss"] for r in rs], [r["val_bpb"] for r in rs]
        testable = name != baseline and min(len(losses), len(ref)) > 1
        p = float(stats.ttest_ind(losses, ref, equal_var=False).pvalue) if testable else math.nan
        diff = statistics.mean(losses) - statistics.mean(ref)
        verdict = ("baseline" if name == baseline else "untested (1 seed)" if math.isnan(p) else
                   "within noise" if p >= SIGNIFICANCE else "better (p<0.05)" if diff < 0 else "worse (p<0.05)")
        summary[name] = {"params": rs[0]["params"], "flops_per_token": rs[0]["flops_per_token"], "tokens": tokens,
                         "val_loss_mean": statistics.mean(losses), "val_loss_std": _sample_std(losses),
                         "val_bpb_mean": statistics.mean(bpbs), "val_bpb_std": _sample_std(bpbs),
                         "diff_vs_baseline": diff, "p_value": p, "verdict": verdict}
    return summary


def run_experiment(spec_name_or_path: str, out: Path, seeds: int | None = None, extra_overrides: Sequence[str] = (),
                   console: Console | None = None) -> dict[str, dict]:
    """Train (or reuse) every variant x seed, write out/results.json and results.md; returns the summary."""
    name, spec = load_experiment(spec_name_or_path)
    seeds = spec.seeds if seeds is None else seeds
    plan = plan_experiment(spec, seeds, extra_overrides)
    out = Path(out)
    runs = []
    for variant, cfgs in plan.items():
        for seed, cfg in enumerate(cfgs):
            result = train_or_reuse(cfg, out / variant / f"seed-{seed}")
            runs.append({"variant": variant, "seed": seed, **{k: result[k] for k in (
                "val_loss", "val_bpb", "train_time_s", "params", "flops_per_token", "reused")}})
            if console:
                reused = ", reused" if result["reused"] else ""
                console.print(f"{variant} seed {seed}: val_loss {result['val_loss']:.4f} "
                              f"({result['train_time_s']:.1f} s of training{reused})", highlight=False)
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in plan}
    summary = summarize(by_variant, tokens_per_run(next(iter(plan.values()))[0]))
    command = shlex.join(["vslm", "experiment", spec_name_or_path, *extra_overrides, "--seeds", str(seeds),
                          "--out", str(out)])
    report = {"experiment": name, "description": spec.description, "command": command, "seeds": seeds,
              "runs": runs, "summary": summary}
    if spec.cross_eval:
        report["cross_eval"] = cross_evaluate(plan, out, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_nan_to_none(report), indent=2) + "\n", encoding="utf-8")
    rows = _rows(summary)
    markdown = _markdown(name, spec.description, command, rows)
    if spec.cross_eval:
        markdown += _matrix_markdown(report["cross_eval"])
    (out / "results.md").write_text(markdown, encoding="utf-8")
    write_experiment_report(out)
    if console:
        table = Table(title=f"{name}: {spec.description}" if spec.description else name)
        for i, col in enumerate(COLUMNS):  # full width even past the console's: a table of cut numbers is no use
            table.add_column(col, justify="left" if col in ("variant", "verdict") else "right", no_wrap=True,
                             min_width=max(len(col), *(len(row[i]) for row in rows)))
        for row in rows:
            table.add_row(*row)
        console.print(table, crop=False)
    return summary


def cross_evaluate(plan: dict[str, list[RunConfig]], out: Path, console: Console | None = None) -> dict:
    """Every run (variant x seed) scored on every variant's held-out documents, every token once:
    bits per byte and loss per token per cell, then mean and sample std over seeds per (train, eval)."""
    names = list(plan)
    cells: dict[tuple[str, str], list[dict]] = {(t, e): [] for t in names for e in names}
    for train_name, cfgs in plan.items():
        for seed in range(len(cfgs)):
            run_cfg, model, tokenizer = load_run(out / train_name / f"seed-{seed}")
            for eval_name in names:
                data = plan[eval_name][0].data
                same = run_cfg.data.tokenizer in FIXED_TOKENIZERS and data.tokenizer == run_cfg.data.tokenizer
                corpus = prepare_corpus(data, tokenizer=None if same else tokenizer)
                score = score_tokens(model, corpus.val.tokens, corpus.token_bytes, tokenizer.eos_id)
                cells[train_name, eval_name].append({"train": train_name, "seed": seed, "eval": eval_name,
                                                     "bpb": score.bpb, "loss": score.loss, "tokens": score.tokens,
                                                     "bytes": score.bytes})
            if console:
                row = ", ".join(f"{e} {cells[train_name, e][-1]['bpb']:.3f}" for e in names)
                console.print(f"{train_name} seed {seed} on each corpus, bits per byte: {row}", highlight=False)

    def stat(key: str, reduce) -> list[list[float]]:
        return [[reduce([c[key] for c in cells[t, e]]) for e in names] for t in names]

    return {"corpora": names, "sources": {n: plan[n][0].data.source for n in names},
            "eval_tokens": {e: cells[names[0], e][0]["tokens"] for e in names},
            "bpb_mean": stat("bpb", statistics.mean), "bpb_std": stat("bpb", _sample_std),
            "loss_mean": stat("loss", statistics.mean), "loss_std": stat("loss", _sample_std),
            "runs": [c for t in names for e in names for c in cells[t, e]]}


def _matrix_markdown(matrix: dict) -> str:
    names = matrix["corpora"]
    lines = ["", "## Bits per byte: trained on (rows) x evaluated on (columns)", "",
             "Mean ± sample std over seeds, on each corpus's held-out documents, every token once.", "",
             "| trained on ↓, evaluated on → | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, train in enumerate(names):
        cells = [f"{m:.3f} ± {'-' if math.isnan(sd) else f'{sd:.3f}'}"
                 for m, sd in zip(matrix["bpb_mean"][i], matrix["bpb_std"][i], strict=True)]
        lines.append(f"| {train} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _nan_to_none(obj):
    """JSON has no NaN: an undefined spread or p-value is written as null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def _rows(summary: dict[str, dict]) -> list[tuple[str, ...]]:
    def pm(mean: float, std: float) -> str:
        return f"{mean:.4f} ± {'-' if math.isnan(std) else f'{std:.4f}'}"

    return [(name, f"{s['params']:,}", f"{s['flops_per_token']:,}", f"{s['tokens']:,}",
             pm(s["val_loss_mean"], s["val_loss_std"]), pm(s["val_bpb_mean"], s["val_bpb_std"]),
             f"{s['diff_vs_baseline']:+.4f}", "-" if math.isnan(s["p_value"]) else f"{s['p_value']:.3g}", s["verdict"])
            for name, s in summary.items()]


def _markdown(name: str, description: str, command: str, rows: list[tuple[str, ...]]) -> str:
    lines = [f"# Experiment {name}", "", description, "", "```sh", command, "```", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
