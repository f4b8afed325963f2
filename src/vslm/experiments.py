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
    sweep = ["train.lr=1e-3", "train.lr=3e-3"]   # optional: tried on seed 0, the lowest val_loss is kept

Runs go to out/<variant>/seed-<seed> (with a sweep: out/<variant>/<choice>/seed-<seed>): a finished one
is reused and an unfinished one resumed, so an interrupted experiment is completed by running the same
command again. A sweep trains every choice on seed 0, keeps the one with the lowest validation loss (a
diverged run counts as infinite) and trains the other seeds with it; seed 0 of the kept choice is
reused, so the reported spread includes the tuning seed, as it is tuned on the same validation set.

With `cross_eval = true` (the dataset-quality experiment, RESEARCH.md section 4: variants that
differ in `data.source`), every run is also scored on every variant's held-out text, each token
once, with the run's tokenizer: a train x eval matrix of bits per byte (and loss per token), mean
and sample standard deviation over seeds, in results.json, results.md and report.html's heat map.
"""

from __future__ import annotations

import json
import math
import re
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

from vslm.config import DataConfig, RunConfig, load_config, one_line_error
from vslm.data.shards import prepare_corpus
from vslm.describe import build_for_accounting
from vslm.errors import ConfigError, VSLMError
from vslm.eval.corpus import score_tokens
from vslm.model import parameter_count, training_flops_per_token
from vslm.plain import plain
from vslm.report.experiment import write_experiment_report
from vslm.report.runs import dynamics_summary, read_run
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import CHECKPOINTS, CONFIG, METRICS, device_of, load_run, read_run_config
from vslm.train.trainer import Trainer, TrainingDiverged

SIGNIFICANCE = 0.05
FIXED_TOKENIZERS = ("byte", "gpt2")  # the same for every corpus: a run's shards of any corpus can be reused
COLUMNS = ("variant", "params", "FLOPs/token", "tokens", "val_loss", "val_bpb", "Δ val_loss", "p (Welch)", "verdict")
# runs with probes add their training-dynamics landmarks (vslm.report.runs.dynamics_summary), mean ± std
DYNAMICS = {"icl_score": "ICL score", "prefix_matching_max": "prefix matching (max head)",
            "induction_loss_first": "induction loss, 1st copy", "induction_loss_second": "induction loss, 2nd copy",
            "repeat_reliability": "copying right (text, 1-token match)",
            "repeat_reliability_3": "copying right (text, 3-token match)",
            "init_position_spread": "position spread at step 0", "m1_near_zero_step": "KL(u‖p̄)<0.05 at step",
            "unigram_loss_step": "loss ≤ H(u) at step"}


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[\w.-]+$")  # it names a folder
    overrides: list[str] = []
    sweep: list[str] = []  # alternative overrides, one per choice (several in one choice: space-separated)


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    base: str
    seeds: int = Field(3, ge=1)
    overrides: list[str] = []
    corpora: list[str] = []  # if given, the whole experiment once per corpus (data.source), in out/<corpus name>/
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


def read_experiment(name_or_path: str) -> tuple[str, dict, str]:
    """(name, parsed TOML, label for errors) of a built-in experiment or a TOML path."""
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
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML: {e}") from None
    if path.is_file() and isinstance(raw.get("base"), str) and (path.parent / raw["base"]).is_file():
        raw["base"] = str(path.parent / raw["base"])  # a relative base is looked up beside the file
    return name, raw, label


def load_experiment(name_or_path: str) -> tuple[str, ExperimentSpec]:
    """(name, validated spec) of a built-in experiment or a TOML path; a relative base is looked up beside it."""
    name, raw, label = read_experiment(name_or_path)
    return name, _validate(raw, label)


def _validate(raw: dict, label: str) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix=label)) from None


def tokens_per_run(cfg: RunConfig) -> int:
    t = cfg.train
    return t.steps * t.batch_size * t.grad_accum * cfg.model.context


NO_SWEEP = ""  # the one choice of a variant without a sweep


def plan_experiment(spec: ExperimentSpec, seeds: int,
                    extra_overrides: Sequence[str] = ()) -> dict[str, dict[str, list[RunConfig]]]:
    """Every variant's config for every sweep choice and seed, validated (and budgets compared) before
    anything trains: {variant: {choice: [config per seed]}}, choice NO_SWEEP for a variant without one."""
    if seeds < 1:
        raise ConfigError(f"an experiment needs at least 1 seed, got {seeds}")
    plan: dict[str, dict[str, list[RunConfig]]] = {}
    for variant in spec.variants:
        plan[variant.name] = {}
        for choice in variant.sweep or [NO_SWEEP]:
            words = [*spec.overrides, *variant.overrides, *choice.split()]
            try:
                plan[variant.name][choice] = [
                    load_config(spec.base, [*words, f"train.seed={seed}", *extra_overrides, "logging.progress=false"])
                    for seed in range(seeds)]
            except ConfigError as e:
                raise ConfigError(f"variant '{variant.name}'{f' ({choice})' if choice else ''}: {e}") from None
    budgets = {f"{name}{f' ({choice})' if choice else ''}": tokens_per_run(cfgs[0])
               for name, choices in plan.items() for choice, cfgs in choices.items()}
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{name} {tokens:,}" for name, tokens in budgets.items())
        raise ConfigError(f"variants train unequal token budgets (steps x batch_size x grad_accum x context): {listed}")
    return plan


def _choice_folder(choice: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", choice)


def _corpus_folder(corpus: str) -> str:
    """A corpus name as it is, a path by its file name (without suffix)."""
    return _choice_folder(Path(corpus).stem if "/" in corpus else corpus)


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
    """Train (or reuse) every variant x seed, write out/results.json and results.md; returns the summary
    (with `corpora`: {corpus: summary}, each corpus in out/<corpus>/, and out/results.md joining them).
    A knowledge experiment (`kind = "knowledge"`) goes to vslm.knowledge.experiment."""
    name, raw, label = read_experiment(spec_name_or_path)
    if raw.get("kind") == "knowledge":
        from vslm.knowledge.experiment import parse_spec, run_knowledge_experiment

        return run_knowledge_experiment(name, parse_spec(raw, label), Path(out), seeds, extra_overrides, console,
                                        spec_name_or_path)
    spec = _validate(raw, label)
    seeds = spec.seeds if seeds is None else seeds
    out = Path(out)
    command = shlex.join(["vslm", "experiment", spec_name_or_path, *extra_overrides, "--seeds", str(seeds),
                          "--out", str(out)])
    if not spec.corpora:
        return _run_variants(name, spec, plan_experiment(spec, seeds, extra_overrides), out, command, console)
    plans = {}
    for corpus in spec.corpora:  # every corpus validated before anything trains
        try:
            plans[corpus] = plan_experiment(spec, seeds, [f"data.source={corpus}", *extra_overrides])
        except ConfigError as e:
            raise ConfigError(f"corpus '{corpus}': {e}") from None
    summaries = {}
    for corpus, plan in plans.items():
        if console:
            console.rule(f"{name} on {corpus}")
        summaries[corpus] = _run_variants(f"{name} on {corpus}", spec, plan, out / _corpus_folder(corpus), command,
                                          console)
    parts = [f"# Experiment {name}\n\n{spec.description}\n\n```sh\n{command}\n```\n"]
    parts += [(out / _corpus_folder(corpus) / "results.md").read_text(encoding="utf-8")
              .replace("# Experiment", "## Experiment", 1) for corpus in plans]
    (out / "results.md").write_text("\n".join(parts), encoding="utf-8")
    return summaries


def _run_variants(name: str, spec: ExperimentSpec, plan: dict[str, dict[str, list[RunConfig]]], out: Path,
                  command: str, console: Console | None) -> dict[str, dict]:
    """One experiment's runs in out (sweeps first), and its results.json and results.md there."""
    seeds = len(next(iter(next(iter(plan.values())).values())))
    runs, sweeps, folders, kept = [], {}, {}, {}

    def say(text: str) -> None:
        if console:
            console.print(text, highlight=False, markup=False)  # "[train.lr=1e-3]" is not a style tag

    def train(cfg: RunConfig, folder: Path, label: str) -> dict:
        result = train_or_reuse(cfg, folder)
        reused = ", reused" if result["reused"] else ""
        say(f"{label}: val_loss {result['val_loss']:.4f} ({result['train_time_s']:.1f} s of training{reused})")
        return result

    for variant, choices in plan.items():
        chosen = NO_SWEEP
        if NO_SWEEP not in choices:
            tried = {}
            for choice, cfgs in choices.items():
                try:
                    tried[choice] = train(cfgs[0], out / variant / _choice_folder(choice) / "seed-0",
                                          f"{variant} [{choice}] seed 0")["val_loss"]
                except TrainingDiverged as e:
                    say(f"{variant} [{choice}] seed 0: diverged ({e})")
                    tried[choice] = math.inf
            chosen = min(tried, key=tried.get)
            sweeps[variant] = {"tried": tried, "chosen": chosen}
        kept[variant] = chosen
        for seed, cfg in enumerate(choices[chosen]):
            folder = (out / variant / _choice_folder(chosen) if chosen else out / variant) / f"seed-{seed}"
            folders.setdefault(variant, []).append(folder)
            result = train(cfg, folder, f"{variant}{f' [{chosen}]' if chosen else ''} seed {seed}")
            runs.append({"variant": variant, "seed": seed, **{k: result[k] for k in (
                "val_loss", "val_bpb", "train_time_s", "params", "flops_per_token", "reused")},
                **dynamics_summary(read_run(folder))})
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in plan}
    summary = summarize(by_variant, tokens_per_run(next(iter(next(iter(plan.values())).values()))[0]))
    for variant, sweep in sweeps.items():
        summary[variant]["chosen"] = sweep["chosen"]
    dynamics = summarize_dynamics(by_variant)
    report = {"experiment": name, "description": spec.description, "command": command, "seeds": seeds,
              "runs": runs, "summary": summary, "dynamics": dynamics, "sweeps": sweeps}
    if spec.cross_eval:
        report["cross_eval"] = cross_evaluate(folders, {v: plan[v][kept[v]][0].data for v in plan}, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(plain(report), indent=2) + "\n", encoding="utf-8")
    rows = _rows(summary)
    tables = [(COLUMNS, rows)]
    if sweeps:
        tables.append((("variant", "choice (seed 0)", "val_loss", "kept"), _sweep_rows(sweeps)))
    if dynamics:
        tables.append((("variant", *DYNAMICS.values()), _dynamics_rows(dynamics)))
    markdown = results_markdown(name, spec.description, command, tables)
    if spec.cross_eval:
        markdown += _matrix_markdown(report["cross_eval"])
    (out / "results.md").write_text(markdown, encoding="utf-8")
    write_experiment_report(out)
    if console:
        for i, (columns, table_rows) in enumerate(tables):
            title = (f"{name}: {spec.description}" if spec.description else name) if i == 0 else \
                "sweep" if columns[1].startswith("choice") else "training dynamics"
            _print_table(console, title, columns, table_rows)
    return summary


def _print_table(console: Console, title: str, columns: Sequence[str], rows: list[tuple[str, ...]]) -> None:
    table = Table(title=title)
    for i, col in enumerate(columns):  # full width even past the console's: a table of cut numbers is no use
        table.add_column(col, justify="left" if col in ("variant", "verdict") else "right", no_wrap=True,
                         min_width=max(len(col), *(len(row[i]) for row in rows)))
    for row in rows:
        table.add_row(*row)
    console.print(table, crop=False)


def mean_std(xs: list[float]) -> dict[str, float]:
    if any(math.isnan(x) for x in xs):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.mean(xs), "std": _sample_std(xs)}


def summarize_dynamics(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant whose runs have probes: mean and sample std over seeds of each landmark in DYNAMICS
    (NaN where a seed never reached it: then the mean is NaN too, and says so)."""
    out = {}
    for name, rs in runs.items():
        if not all("icl_score" in r for r in rs):
            continue
        out[name] = {key: mean_std([r[key] for r in rs]) for key in DYNAMICS}
        out[name]["icl_label"] = rs[0]["icl_label"]
    return out


def cross_evaluate(folders: dict[str, list[Path]], data_of: dict[str, DataConfig],
                   console: Console | None = None) -> dict:
    """Every run (variant x seed, in `folders`) scored on every variant's held-out documents (its data
    config in `data_of`), every token once: bits per byte and loss per token per cell, then mean and
    sample std over seeds per (train, eval)."""
    names = list(folders)
    cells: dict[tuple[str, str], list[dict]] = {(t, e): [] for t in names for e in names}
    for train_name, seed_folders in folders.items():
        for seed, folder in enumerate(seed_folders):
            device = device_of(read_run_config(folder).train.device)  # where it trained: "auto" = CUDA if any
            run_cfg, model, tokenizer = load_run(folder, device=str(device))
            for eval_name in names:
                data = data_of[eval_name]
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

    return {"corpora": names, "sources": {n: data_of[n].source for n in names},
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


def _rows(summary: dict[str, dict]) -> list[tuple[str, ...]]:
    def pm(mean: float, std: float) -> str:
        return f"{mean:.4f} ± {'-' if math.isnan(std) else f'{std:.4f}'}"

    return [(name, f"{s['params']:,}", f"{s['flops_per_token']:,}", f"{s['tokens']:,}",
             pm(s["val_loss_mean"], s["val_loss_std"]), pm(s["val_bpb_mean"], s["val_bpb_std"]),
             f"{s['diff_vs_baseline']:+.4f}", "-" if math.isnan(s["p_value"]) else f"{s['p_value']:.3g}", s["verdict"])
            for name, s in summary.items()]


def _sweep_rows(sweeps: dict[str, dict]) -> list[tuple[str, ...]]:
    return [(variant, choice, "diverged" if math.isinf(loss) else f"{loss:.4f}",
             "kept" if choice == s["chosen"] else "")
            for variant, s in sweeps.items() for choice, loss in s["tried"].items()]


def _dynamics_rows(dynamics: dict[str, dict]) -> list[tuple[str, ...]]:
    def pm(stat: dict) -> str:  # NaN: a step landmark some seed never reached, or a probe that was not run
        if math.isnan(stat["mean"]):
            return "n/a"
        spread = "-" if math.isnan(stat["std"]) else f"{stat['std']:.3f}"
        return f"{stat['mean']:.3f} ± {spread}"

    return [(name, *(pm(d[key]) for key in DYNAMICS)) for name, d in dynamics.items()]


def results_markdown(name: str, description: str, command: str, tables: list[tuple[Sequence[str], list]]) -> str:
    lines = [f"# Experiment {name}", "", description, "", "```sh", command, "```"]
    for columns, rows in tables:
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
