"""Named comparisons (`vslm experiment NAME`): the variants of one config trained over several seeds and
compared honestly.

RESEARCH.md section 8: every comparison runs over several seeds, reports mean and spread and whether a
difference is significant, on a fixed validation set and equal token budgets, with parameters and
FLOPs per token beside every loss, and bits per byte. Each variant is compared with the baseline (the
first) by a paired t-test on the per-seed differences where the seeds pair (seeds_pair: seed s gives
both the same data order, validation windows and probe set), else by Welch's t-test; Holm's method
holds the family-wise error rate across the variants of one table, and with fewer than 3 seeds per
arm there is no test (vslm.lab.stats). An experiment is a TOML file:

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

A `sweep` at the top level is the sweep of every variant that lists none (`sweep = []` lists none: no
sweep). `--sweep OVERRIDE...` on the command line (repeatable, one choice each) replaces every variant's:
each variant at its best of those choices, so that none is judged at a learning rate that suits another
(refused where a sweep it replaces sets a field its choices do not). `sweep_seeds = k` (`--sweep-seeds K`)
trains every choice on seeds 0..k-1 and keeps the lowest mean: a choice that is best on seed 0 alone but
unstable on others is not kept (a diverged seed makes its choice's mean infinite). A command-line override
of a field a sweep sets is refused: it would win over every choice. `--variants a,b` narrows the spec to
the baseline and the variants named (_narrowed): the same runs in the same folders, fewer in the table,
and Holm's correction across those alone.

Runs go to out/<variant>/seed-<seed> (with a sweep: out/<variant>/<choice>/seed-<seed>): a finished one
is reused and an unfinished one resumed, so an interrupted experiment is completed by running the same
command again. A sweep trains every choice on seed 0, keeps the one with the lowest validation loss (a
diverged run counts as infinite) and trains the other seeds with it; seed 0 of the kept choice is
reused (with sweep_seeds, seeds 0..k-1), so the reported spread includes the tuning seeds, as they are
tuned on the same validation set.
With `match = "diag_update_ratio"` (MATCHABLE: here the angular step ||dW|| / ||W||, RESEARCH.md
section 6) the baseline keeps its lowest validation loss as before, and every other variant keeps the
choice where its seed-0 value of that landmark (the mean over sweep_seeds) first reaches the baseline's
(matched_choice: the sweep listed in rising order): the comparison is then at a matched angular step, not
at each variant's best learning rate.

Seeds decided by the data: with `resolve` (`vslm experiment NAME --resolve 0.02 --max-seeds 12`) seeds
are added in rounds (as many as the first round had) until every variant's 95% interval of its
difference from the baseline is at most ±0.02 nats wide, or max_seeds is reached; the verdict is taken
at the look where it stops, at that look's share of alpha (vslm.lab.stats.spending_levels), so that the
repeated looks do not inflate the false-positive rate.

The runs of one round are independent: `launcher` (vslm.lab.parallel) trains them in worker processes
or on a Ray cluster, with the same numbers as one after another at the same threads per run (set
train.threads: torch rounds some CPU reductions by thread count, vslm.lab.parallel). A run that diverges
or fails is listed in the results and left out of its variant's statistics; the others go on.

With `cross_eval = true` (the dataset-quality experiment, RESEARCH.md section 4: variants that
differ in `data.source`), every run is also scored on every variant's held-out text, each token
once, with the run's tokenizer: a train x eval matrix of bits per byte (and loss per token), mean
and sample standard deviation over seeds, in results.json, results.md and report.html's heat map. Which
text transfers: each corpus's mean excess over the in-domain model on the other corpora, compared with
the best by Welch's t-test, Holm across the others (vslm.lab.stats.transfer). The main table's rows are
each on its own text and compared with nothing; `resolve`'s looks read the transfer table's intervals.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import statistics
import tomllib
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from vslm.config import (
    DataConfig,
    RunConfig,
    bare_builtin,
    builtin_configs,
    builtin_file,
    fields_set_by,
    load_config,
    one_line_error,
)
from vslm.data.shards import prepare_corpus
from vslm.data.sources import check_source
from vslm.errors import ConfigError, VSLMError, did_you_mean, refuse_file_in_the_way, repeated
from vslm.eval.corpus import score_tokens
from vslm.files import in_use, write_text
from vslm.lab.parallel import Launcher, RunJob, run_jobs
from vslm.lab.runner import build_for_accounting, same_settings, tokens_per_run
from vslm.lab.stats import (
    MIN_SEEDS,
    SIGNIFICANCE,
    mean_std,
    planned_looks,
    resolved,
    sample_std,
    spending_levels,
    summarize,
    transfer,
)
from vslm.lab.tables import (
    COLUMNS,
    DYNAMICS,
    FAILED_COLUMNS,
    LANDMARKS,
    LOOK_COLUMNS,
    REACH_COLUMNS,
    TRANSFER_COLUMNS,
    dynamics_rows,
    length_columns,
    lengths_table,
    look_rows,
    matrix_markdown,
    print_table,
    reach_rows,
    results_markdown,
    summary_rows,
    sweep_rows,
    transfer_rows,
)
from vslm.model import parameter_count, training_flops_per_token
from vslm.plain import dumps, listed
from vslm.report.experiment import CORPORA, write_corpora_report, write_experiment_report
from vslm.report.runs import RunFiles, diagnostics_summary, dynamics_summary, read_run
from vslm.train.checkpoint import list_checkpoints
from vslm.train.run_folder import (
    CHECKPOINTS,
    CONFIG,
    device_of,
    layout_moved,
    load_run,
    read_run_config,
    refuse_a_run_as_collection,
)

VARIANT_COLUMNS = ("variant", "overrides")
# cross_eval's main table: each row's val_loss is on its own corpus's text, so rows are not compared there
OWN_TEXT = "not compared: its own corpus's held-out text (the transfer table compares)"
FIXED_TOKENIZERS = ("byte", "gpt2")  # the same for every corpus: a run's shards of any corpus can be reused


def _sweep(choices: list[str]) -> list[str]:
    """A sweep's choices: none blank (it would read as no sweep), none twice or two in one folder (one run
    would stand for both), none setting a field twice (the last value would win unsaid)."""
    if any(not c.strip() for c in choices):
        raise ValueError("a sweep choice is blank: give each choice its overrides")
    if twice := repeated(choices):
        raise ValueError(f"the sweep lists {', '.join(map(repr, twice))} twice")
    for choice in choices:
        if twice := repeated([word.split("=", 1)[0].strip() for word in choice.split()]):
            raise ValueError(f"the sweep choice '{choice}' sets {', '.join(twice)} twice: give each value its own "
                             "choice (--sweep FIELD=A --sweep FIELD=B)")
    folders: dict[str, str] = {}
    for choice in choices:
        if (other := folders.setdefault(_choice_folder(choice), choice)) != choice:
            raise ValueError(f"the sweep choices '{other}' and '{choice}' would share the run folder "
                             f"{_choice_folder(choice)} (characters other than letters, digits and . = + - become "
                             "_): write one of them otherwise")
    return choices


def _keys(choices: Sequence[str]) -> set[str]:
    """The fields a sweep's choices set: {"train.lr", ...}."""
    return {word.split("=", 1)[0] for choice in choices for word in choice.split()}


def _numbers(choices: Sequence[str]) -> dict[str, list[float]]:
    """The fields every choice of a sweep sets to a number, and their values in the sweep's order."""
    values: dict[str, list[float]] = {}
    for choice in choices:
        for word in choice.split():
            key, _, value = word.partition("=")
            try:
                values.setdefault(key, []).append(float(value))
            except ValueError:
                values.setdefault(key, []).append(math.nan)  # not a number: not a step size
    return {k: v for k, v in values.items() if len(v) == len(choices) and all(map(math.isfinite, v))}


def _rising(name: str, choices: list[str]) -> None:
    """A sweep a `match` reads (matched_choice) lists its step sizes in rising order: every field that each
    choice sets to a number, and that varies, rises from one choice to the next; one such field at least."""
    if len(choices) < 2:
        return
    varying = {k: vs for k, vs in _numbers(choices).items() if len(set(vs)) > 1}  # a constant is no step size
    if not varying:
        raise ValueError(f"match: variant '{name}''s sweep varies no number in every choice; a match keeps the "
                         "first choice to reach the baseline's value, so list a step size (train.lr=...) rising")
    for key, vs in varying.items():
        if any(b <= a for a, b in itertools.pairwise(vs)):
            raise ValueError(f"match: variant '{name}''s sweep lists {key} as {', '.join(f'{v:g}' for v in vs)}; a "
                             "match keeps the first choice to reach the baseline's value, so list it rising")


def sweep_edge(choices: Sequence[str], chosen: str) -> str | None:
    """Where a sweep of 3 or more numbers keeps its lowest or highest value ("the highest train.lr"), so that its
    best may lie past the sweep; None inside it, or for a sweep of no number every choice sets."""
    if len(choices) < 3 or chosen not in choices:
        return None
    for key, vs in _numbers(choices).items():
        value = vs[list(choices).index(chosen)]
        if len(set(vs)) >= 3 and value in (min(vs), max(vs)):
            return f"the {'lowest' if value == min(vs) else 'highest'} {key}"
    return None


Sweep = Annotated[list[str], AfterValidator(_sweep)]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    name: str = Field(pattern=r"^[\w.-]*\w[\w.-]*$")  # it names a folder inside --out: never "." nor ".."
    overrides: list[str] = []
    sweep: Sweep | None = None  # alternative overrides, one per choice (several in one choice: space-separated);
    # None: the experiment's top-level sweep; [] none at all


# landmarks positive by construction, so that a sweep can keep the choice nearest in ratio (`match`)
MATCHABLE = ("diag_update_ratio", "attn_row_sum", "attn_entropy_ratio")


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    description: str = ""
    base: str
    seeds: int = Field(3, ge=1)
    overrides: list[str] = []
    corpora: list[str] = []  # if given, the whole experiment once per corpus (data.source), in out/<corpus name>/
    variants: list[Variant] = Field(min_length=1)
    cross_eval: bool = False  # every run scored on every variant's held-out text (train x eval matrix)
    match: str | None = None  # a landmark: the other variants' sweeps keep the choice nearest the baseline's
    sweep: Sweep = []  # the sweep of every variant that lists none of its own (sweep = [] lists none)
    sweep_seeds: int = Field(1, ge=1)  # a sweep keeps the choice of the lowest mean over seeds 0..sweep_seeds-1

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentSpec:
        if self.sweep and all(v.sweep is not None for v in self.variants):
            raise ValueError("the top-level sweep is no variant's: each lists its own")
        for variant in self.variants:
            variant.sweep = list(self.sweep) if variant.sweep is None else variant.sweep
        if self.sweep_seeds > 1 and not any(v.sweep for v in self.variants):
            raise ValueError(f"sweep_seeds = {self.sweep_seeds}, and no variant has a sweep to choose on them")
        if self.match is not None and self.match not in MATCHABLE:
            raise ValueError(f"match '{self.match}' is not a landmark a sweep can match in ratio"
                             + (did_you_mean(self.match, MATCHABLE) or "") + f" (one of {', '.join(MATCHABLE)})")
        if self.match is not None:  # and its runs measure it: _check_match, on the configs
            if not any(v.sweep for v in self.variants[1:]):
                raise ValueError(f"match '{self.match}' chooses among a sweep's choices: give a variant after "
                                 "the baseline a sweep")
            for variant in self.variants[1:]:
                _rising(variant.name, variant.sweep)
        if duplicates := repeated([v.name for v in self.variants]):
            raise ValueError(f"duplicate variant names: {', '.join(duplicates)}")
        folders = [_corpus_folder(c) for c in self.corpora]  # each corpus trains into out/<its folder>
        if duplicates := sorted({c for c, f in zip(self.corpora, folders, strict=True) if f in repeated(folders)}):
            raise ValueError(f"corpora {', '.join(duplicates)} would share a folder in --out (the same corpus "
                             "twice, or two files of the same name)")
        return self


def builtin_descriptions(package: str) -> dict[str, str]:
    """The TOML files of a package of built-ins (experiments, scaling specs): name -> one-line description."""
    entries = sorted(resources.files(package).iterdir(), key=lambda p: p.name)
    return {e.name.removesuffix(".toml"): tomllib.loads(e.read_text()).get("description", "")
            for e in entries if e.name.endswith(".toml")}


def builtin_experiments() -> dict[str, str]:
    """Built-in experiment names and their one-line descriptions."""
    return builtin_descriptions("vslm.configs.experiments")


def read_spec(name_or_path: str, package: str, what: str) -> tuple[str, dict, str]:
    """(name, parsed TOML, label for errors) of a TOML path or a built-in of `package` (an experiment or a
    scaling spec, `what`). A relative `base` is looked up beside the file, else taken as a built-in config's
    name (as a config's own base is), never in the folder the command runs from: one missing is named where
    it was looked for. A bare built-in name is the built-in, whatever file of that name lies here."""
    path = Path(name_or_path)
    own = not bare_builtin(name_or_path, package) and path.is_file()
    if own:
        try:
            text, name, label = path.read_text(encoding="utf-8"), path.stem, str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{what} {path}: cannot read it ({e})") from None
    else:
        entry = builtin_file(name_or_path, package)
        if entry is None:
            known = builtin_descriptions(package)
            raise ConfigError(f"no {what} '{name_or_path}'{did_you_mean(name_or_path, known)}: not a file, nor a "
                              f"built-in {what} ({', '.join(known)})")
        text, name, label = entry.read_text(), name_or_path, f"built-in {what} '{name_or_path}'"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: invalid TOML: {e}") from None
    base = raw.get("base")
    if own and isinstance(base, str) and base and not Path(base).is_absolute():
        if not bare_builtin(base, "vslm.configs") and (path.parent / base).is_file():
            raw["base"] = str(path.parent / base)
        elif base not in (builtins := builtin_configs()):
            raise ConfigError(f"the {what}'s base '{base}': no config '{base}'{did_you_mean(base, builtins)}: "
                              f"not a file beside {path} ({path.parent / base}), nor a built-in config "
                              f"({', '.join(builtins)})")
    return name, raw, label


def read_experiment(name_or_path: str) -> tuple[str, dict, str]:
    """(name, parsed TOML, label for errors) of a built-in experiment or a TOML path (read_spec)."""
    return read_spec(name_or_path, "vslm.configs.experiments", "experiment")


KINDS = ("knowledge",)  # an experiment's `kind`; left out: a comparison of variants


def experiment_kind(raw: dict, label: str) -> str | None:
    """The experiment's `kind`, None for a comparison of variants; an unknown one is refused."""
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{label}: unknown kind {kind!r}: leave it out for a comparison of variants, or give "
                          f"{' or '.join(map(repr, KINDS))}")
    return kind


def load_experiment(name_or_path: str, sweep: Sequence[str] | None = None, sweep_seeds: int | None = None,
                    variants: Sequence[str] | None = None) -> tuple[str, ExperimentSpec]:
    """(name, validated spec) of a built-in experiment or a TOML path; a relative base is looked up beside it.
    sweep, sweep_seeds, variants: the command line's `--sweep`, `--sweep-seeds` and `--variants` (_validate)."""
    name, raw, label = read_experiment(name_or_path)
    return name, _validate(raw, label, sweep, sweep_seeds, variants)


def _validate(raw: dict, label: str, sweep: Sequence[str] | None = None, sweep_seeds: int | None = None,
              variants: Sequence[str] | None = None) -> ExperimentSpec:
    """The spec; with variants (`--variants`), only the baseline and those named; with sweep (`--sweep`), every
    variant's sweep is that one instead of its own (refused where one it replaces sets a field its choices do
    not: that grid would be lost unsaid); with sweep_seeds (`--sweep-seeds`), the spec's sweep_seeds is that
    number."""
    if variants:
        raw = _narrowed(raw, label, variants)
    if sweep:  # the spec's sweep, and no variant's own
        variants = raw.get("variants")
        if isinstance(variants, list):  # else validation names the fault
            for owner, own in [("the experiment's top-level sweep", raw.get("sweep")),
                               *((f"the sweep of variant '{v.get('name')}'", v.get("sweep")) for v in variants
                                 if isinstance(v, dict))]:
                if isinstance(own, list) and all(isinstance(c, str) for c in own) and (
                        lost := sorted(_keys(own) - _keys(sweep))):
                    raise ConfigError(f"{label}: --sweep replaces {owner}, which also sets {', '.join(lost)}: that "
                                      "grid would be lost (give per-variant grids in an experiment file)")
            raw = raw | {"variants": [{k: v for k, v in variant.items() if k != "sweep"}
                                      if isinstance(variant, dict) else variant for variant in variants]}
        raw = raw | {"sweep": list(sweep)}
    if sweep_seeds is not None:
        raw = raw | {"sweep_seeds": sweep_seeds}
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        loc = e.errors()[0]["loc"]  # a fault of the flags' values, or of the file
        given = {"sweep": bool(sweep), "sweep_seeds": sweep_seeds is not None}
        flags = [f"--{field.replace('_', '-')}" for field, on in given.items() if on and (not loc or loc[0] == field)]
        raise ConfigError(one_line_error(e, prefix=label + (f" with {' and '.join(flags)}" if flags else ""),
                                         root=ExperimentSpec)) from None


def _narrowed(raw: dict, label: str, names: Sequence[str]) -> dict:
    """raw with its variants narrowed to the baseline (the first) and the variants named (`--variants`), in
    the file's order; a name that is no variant's is refused."""
    listed = raw.get("variants")
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
        return raw  # validation names the fault
    known = [v.get("name") for v in listed]
    for name in names:
        if name not in known:
            raise ConfigError(f"{label}: --variants names '{name}', which is none of its variants"
                              + (did_you_mean(name, known) or f" ({', '.join(map(str, known))})"))
    return raw | {"variants": [v for i, v in enumerate(listed) if i == 0 or v.get("name") in names]}


def _prepare(raw: dict, label: str, out: Path, seeds: int | None, resolve: float | None, max_seeds: int | None,
             sweep: Sequence[str] | None, sweep_seeds: int | None,
             variants: Sequence[str] | None) -> tuple[ExperimentSpec, int, list[int]]:
    """(spec, seeds, looks) of a comparison of variants, checked as run_experiment and dry_run both check it:
    the spec with the command line's sweep, the looks, the sweep's seeds against the first look, and the
    results already in out against the most seeds it trains."""
    spec = _validate(raw, label, sweep, sweep_seeds, variants)
    seeds = spec.seeds if seeds is None else seeds
    looks = check_resolve(seeds, resolve, max_seeds)
    if spec.sweep_seeds > looks[0]:
        raise ConfigError(f"{label}: sweep_seeds {spec.sweep_seeds} is more than the {looks[0]} seed"
                          f"{'s' * (looks[0] > 1)} of the first look, and a sweep chooses on seeds the comparison "
                          f"reuses: pass --seeds {spec.sweep_seeds} or more, or --sweep-seeds {looks[0]}")
    refuse_file_in_the_way(out)  # before anything is planned or trained: the dry run says it too
    refuse_a_run_as_collection(out, "an experiment")
    check_results_kept(out, looks[-1], [v.name for v in spec.variants])
    return spec, seeds, looks


NO_SWEEP = ""  # the one choice of a variant without a sweep


def refuse_seed_overrides(parts: Sequence[tuple[str, Sequence[str]]]) -> None:
    """An experiment sets train.seed itself (seed s trains with train.seed = s). Given in an override it would
    come before that and be lost, or after it and make every seed one run: identical seeds that a paired
    test calls significant. parts: (where, its override words)."""
    for where, words in parts:
        if any(fields_set_by(word, ["train.seed"]) for word in words):  # `train={...}` too
            raise ConfigError(f"{where}: train.seed is the experiment's to set (seed s trains with train.seed = s): "
                              "give the number of seeds instead (seeds = N in the file, --seeds N)")


def plan_experiment(spec: ExperimentSpec, seeds: int, extra_overrides: Sequence[str] = (),
                    corpus: str | None = None) -> dict[str, dict[str, list[RunConfig]]]:
    """Every variant's config for every sweep choice and seed, validated (and budgets compared) before
    anything trains: {variant: {choice: [config per seed]}}, choice NO_SWEEP for a variant without one.
    corpus: the data.source of one of the spec's `corpora`. The data sources are check_sources'."""
    if seeds < 1:
        raise ConfigError(f"an experiment needs at least 1 seed, got {seeds}")
    refuse_seed_overrides([("the command line", extra_overrides), ("the experiment's overrides", spec.overrides),
                           *((f"variant '{v.name}'", [*v.overrides, *(w for c in v.sweep or [] for w in c.split())])
                             for v in spec.variants)])
    swept: dict[str, str] = {}  # a field a sweep sets: the first variant whose sweep sets it
    for variant in spec.variants:
        for key in _keys(variant.sweep):
            swept.setdefault(key, variant.name)
    for word in extra_overrides:  # it would come after every choice, and win over it
        if keys := fields_set_by(word, swept):
            raise ConfigError(f"the command line's override {word} sets {keys[0]}, which the sweep of variant "
                              f"'{swept[keys[0]]}' sets: it would win over every choice")
    shared = [f"data.source={corpus}"] if corpus else []  # part of the spec, not of the command line
    plan = _configs(spec, seeds, shared, extra_overrides)
    _check_configs_differ(spec, plan, shared, extra_overrides)
    _check_match(spec, plan)
    budgets = {_label(name, choice): tokens_per_run(cfgs[0])
               for name, choices in plan.items() for choice, cfgs in choices.items()}
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{name} {tokens:,}" for name, tokens in budgets.items())
        hint = ("; on the command line a --sweep choice is every word after it up to the next flag: put other "
                "overrides before the first --sweep" if any(c != NO_SWEEP for v in plan.values() for c in v) else "")
        raise ConfigError(f"variants train unequal token budgets (steps x batch_size x grad_accum x context): "
                          f"{listed}{hint}")
    return plan


def _check_match(spec: ExperimentSpec, plan: dict[str, dict[str, list[RunConfig]]]) -> None:
    """Refuse `match` on a landmark that some config does not measure, before anything trains."""
    if spec.match is None:
        return
    needs = ("logging.diagnostics_every", lambda c: c.logging.diagnostics_every > 0) if spec.match.startswith(
        "diag_") else ("logging.probe_every", lambda c: c.logging.probe_every != 0)
    for name, choices in plan.items():
        for choice, cfgs in choices.items():
            if not needs[1](cfgs[0]):
                raise ConfigError(f"match '{spec.match}': variant '{_label(name, choice)}' does not measure it "
                                  f"(set {needs[0]})")


def check_sources(plan: dict[str, dict[str, list[RunConfig]]]) -> None:
    """Each data section of a plan once (data.sources.check_source: no file read, nothing downloaded): a
    source that cannot be read is named before the first run trains, not after the others have."""
    data = {}
    for name, choices in plan.items():
        for choice, cfgs in choices.items():
            data.setdefault(cfgs[0].data.model_dump_json(), (cfgs[0].data, _label(name, choice)))
    for source, label in data.values():
        try:
            check_source(source)
        except VSLMError as e:  # the variants' own source, or the one they all share
            raise type(e)(f"variant '{label}': {e}" if len(data) > 1 else str(e)) from None


def _label(variant: str, choice: str) -> str:
    return f"{variant} ({choice})" if choice else variant


def _configs(spec: ExperimentSpec, seeds: int, shared: Sequence[str],
             extra_overrides: Sequence[str]) -> dict[str, dict[str, list[RunConfig]]]:
    """{variant: {choice: [config per seed]}}. A config that fails names the variant (and its sweep choice),
    and the shared part the fault lies in where there is one: the experiment's base or overrides, or the
    command line's; only the shared part when every variant fails the same way."""
    def load(variant: Variant, choice: str, seed: int) -> RunConfig:
        words = [*spec.overrides, *shared, *variant.overrides, *choice.split(), f"train.seed={seed}",
                 *extra_overrides, "logging.progress=false"]
        return load_config(spec.base, words, shared=True)  # a shared override may apply to some variants only

    def fails_alike(error: ConfigError) -> bool:
        for variant in spec.variants:
            for choice in variant.sweep or [NO_SWEEP]:
                try:
                    load(variant, choice, 0)
                    return False
                except ConfigError as e:
                    if str(e) != str(error):
                        return False
        return True

    plan: dict[str, dict[str, list[RunConfig]]] = {}
    for variant in spec.variants:
        plan[variant.name] = {}
        for choice in variant.sweep or [NO_SWEEP]:
            try:
                plan[variant.name][choice] = [load(variant, choice, seed) for seed in range(seeds)]
            except ConfigError as e:
                who = f"variant '{variant.name}'" + (f" ({choice})" if choice else "")
                if (part := _culprit(spec, shared, extra_overrides, e)) is not None:
                    who = part if fails_alike(e) else f"{who}, with {part}"
                elif choice in spec.sweep and fails_the_same(spec.base, [*spec.overrides, *shared, *choice.split()],
                                                             e):  # every variant's sweep (--sweep), not this variant
                    who = f"sweep choice '{choice}' (every variant's)"
                raise ConfigError(f"{who}: {e}") from None
    return plan


def fails_the_same(base: str, words: Sequence[str], failed: ConfigError) -> bool:
    """Whether the config of `base` with these override words alone fails as `failed` did: the fault lies in
    them, not in what a plan added to them (a variant, a sweep choice, a size)."""
    try:
        load_config(base, list(words), shared=True)
    except ConfigError as e:
        return str(e) == str(failed)
    return False


def _culprit(spec: ExperimentSpec, shared: Sequence[str], extra_overrides: Sequence[str],
             failed: ConfigError) -> str | None:
    """Which shared part a config error comes from, if one: the same error from the base alone, from the base
    with the experiment's overrides, or with the command line's."""
    for words, who in (([], f"the experiment's base '{spec.base}'"), (spec.overrides, "the experiment's overrides"),
                       (extra_overrides, "the command line's overrides")):
        if fails_the_same(spec.base, [*shared, *words], failed):
            return who
    return None


def _check_configs_differ(spec: ExperimentSpec, plan: dict[str, dict[str, list[RunConfig]]], shared: Sequence[str],
                          extra_overrides: Sequence[str]) -> None:
    """Refuse variants, or a variant's sweep choices, that train the same configs (a comparison of a thing
    with itself): most often a command-line override that sets the very field they differ on."""
    def dump(cfgs: list[RunConfig]) -> str:
        return cfgs[0].model_dump_json()

    def collapsed(choices: dict[str, list[RunConfig]]) -> bool:
        return len({dump(cfgs) for cfgs in choices.values()}) < len(choices)

    def because(why: str, apart: Callable[[dict], bool]) -> str:
        """why, and the command line's overrides where the configs differ without them."""
        try:
            alone = _configs(spec, 1, shared, ()) if extra_overrides else {}
        except ConfigError:  # the spec needs the command line's overrides to validate
            alone = {}
        if alone and apart(alone):
            why += (f": the command line's override{'s' * (len(extra_overrides) > 1)} {shlex.join(extra_overrides)} "
                    f"set{'s' * (len(extra_overrides) == 1)} what they differ on")
        return why

    for name, choices in plan.items():
        if collapsed(choices):
            raise ConfigError(because(f"variant '{name}': its sweep choices train the same configs",
                                      lambda alone, name=name: not collapsed(alone[name])))
    seen: dict[tuple[str, ...], str] = {}
    for name, choices in plan.items():
        key = tuple(dump(cfgs) for cfgs in choices.values())
        if (first := seen.setdefault(key, name)) != name:
            raise ConfigError(because(f"variants '{first}' and '{name}' train the same configs",
                                      lambda alone: len({tuple(dump(c) for c in cs.values())
                                                         for cs in alone.values()}) == len(alone)))


# what seed s decides beside the weights: the data order (the sampler), the validation windows and the
# probe set. Variants that agree on these (they change model or optimizer fields only) pair seed by seed.
PAIRING_FIELDS = {"train": ("seed", "batch_size", "grad_accum", "steps", "eval_windows"),
                  "model": ("context", "vocab_size")}


def seeds_pair(a: RunConfig, b: RunConfig) -> bool:
    """Whether runs a and b see the same data order, validation windows and probe set: the same data
    section and PAIRING_FIELDS (tests/test_pairing.py pins that these are what decides them)."""
    if a.data != b.data:
        return False
    return all(getattr(getattr(a, section), f) == getattr(getattr(b, section), f)
               for section, fields in PAIRING_FIELDS.items() for f in fields)


def _choice_folder(choice: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", choice)


def _corpus_folder(corpus: str) -> str:
    """A corpus name as it is, a path by its file name (without suffix)."""
    return _choice_folder(Path(corpus).stem if "/" in corpus else corpus)


def check_results_kept(out: Path, most: int, variants: Sequence[str] | None = None, stopped: bool = False) -> None:
    """Refuse (ConfigError) an experiment into a folder whose results (results.json, or a corpus folder's)
    summarize more seeds than this command trains at most, or (given `variants`, the ones it trains)
    variants it leaves out: its smaller tables and verdicts would take their place. The runs would stay, but
    a quick `--seeds 1` look, or a `--variants` look at two of seven, would silently replace the result.
    stopped: `most` is the seeds of the look where a resolving experiment stopped, checked again before its
    results are written (it may stop before the seeds already summarized)."""
    for path in [out / "results.json", *sorted(out.glob("*/results.json"))]:
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            held = results["seeds"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an experiment's results: nothing of ours to keep
        if isinstance(held, int) and held > most:
            did = f"resolved at {most} seeds (its runs are kept)" if stopped else f"trains {most}"
            raise ConfigError(f"{path} summarizes {held} seeds and this command {did}: its results would "
                              f"replace those; pass --seeds {held} (the finished runs are reused) or another --out")
        summary = results.get("summary")
        if variants is not None and isinstance(summary, dict) and (left := [v for v in summary if v not in variants]):
            raise ConfigError(f"{path} holds the results of {', '.join(left)}, which this command leaves out: its "
                              "results would replace those; train them too (without --variants: their finished "
                              "runs are reused) or pass another --out")


def check_resolve(seeds: int, resolve: float | None, max_seeds: int | None) -> list[int]:
    """The seed counts at which the experiment looks at its results: [seeds] without resolve, else the
    planned rounds up to max_seeds (vslm.lab.stats.planned_looks). Bad combinations are a ConfigError."""
    if seeds < 1:  # first: before the folder's results are judged against the seed count
        raise ConfigError(f"an experiment needs at least 1 seed, got {seeds}")
    if resolve is None:
        if max_seeds is not None:
            raise ConfigError("--max-seeds goes with --resolve WIDTH (the interval width to reach)")
        return [seeds]
    if not (math.isfinite(resolve) and resolve > 0):
        raise ConfigError(f"--resolve must be a positive, finite width in nats, got {resolve}")
    max_seeds = 12 if max_seeds is None else max_seeds
    if max_seeds < MIN_SEEDS:
        raise ConfigError(f"--max-seeds {max_seeds} is below {MIN_SEEDS}, the fewest seeds a test is run on")
    if seeds < MIN_SEEDS:
        raise ConfigError(f"--resolve starts from at least {MIN_SEEDS} seeds (no test below), got {seeds} (--seeds "
                          f"or the experiment's seeds): pass --seeds {MIN_SEEDS} or more")
    if max_seeds < seeds:
        raise ConfigError(f"--max-seeds {max_seeds} is below the {seeds} seeds the experiment starts with")
    return planned_looks(seeds, max_seeds)


def run_experiment(spec_name_or_path: str, out: Path, seeds: int | None = None, extra_overrides: Sequence[str] = (),
                   console: Console | None = None, launcher: Launcher | None = None, resolve: float | None = None,
                   max_seeds: int | None = None, sweep: Sequence[str] | None = None,
                   sweep_seeds: int | None = None, variants: Sequence[str] | None = None) -> dict[str, dict]:
    """Train (or reuse) every variant x seed, write out/results.json and results.md; returns the summary
    (with `corpora`: {corpus: summary}, each corpus in out/<corpus>/, and out/results.md joining them).
    launcher: where the runs train (vslm.lab.parallel; default one after another here); resolve, max_seeds:
    add seeds until every interval is at most ±resolve wide (module docstring); sweep: every variant's
    sweep, in place of the experiment's (`--sweep`: each variant at its best of these choices); sweep_seeds:
    the seeds a sweep chooses on, in place of the experiment's (`--sweep-seeds`); variants: only the baseline
    and these are trained and compared (`--variants`; the multiple-comparison correction counts these).
    An experiment of another kind (`kind = "knowledge"`) is refused here: `vslm experiment`
    (vslm.commands.experiment.run_experiment) runs every kind."""
    extra_overrides, sweep = listed(extra_overrides, "extra_overrides"), listed(sweep, "sweep") or None
    variants = None if variants is None else listed(variants, "variants")
    name, raw, label = read_experiment(spec_name_or_path)
    if "kind" in raw:
        raise ConfigError(f"{label} is a {raw['kind']} experiment: run it with `vslm experiment` "
                          "(vslm.commands.experiment.run_experiment)")
    out = Path(out)
    spec, seeds, looks = _prepare(raw, label, out, seeds, resolve, max_seeds, sweep, sweep_seeds, variants)
    words = ["vslm", "experiment", spec_name_or_path, *extra_overrides, "--seeds", str(seeds)]
    if variants:
        words += ["--variants", ",".join(variants)]
    for choice in sweep or ():
        words += ["--sweep", choice]
    if sweep_seeds is not None:
        words += ["--sweep-seeds", str(sweep_seeds)]
    if resolve is not None:
        words += ["--resolve", f"{resolve:g}", "--max-seeds", str(looks[-1])]
    command = shlex.join([*words, "--out", str(out)])
    launcher = launcher or Launcher()

    def run(title: str, plan: dict, folder: Path, corpus: str | None = None) -> dict:
        every = [*spec.overrides, *([f"data.source={corpus}"] if corpus else []), *extra_overrides]
        return _run_variants(title, spec, plan, folder, command, console, launcher, looks, resolve, every)

    plans = _plan_corpora(spec, looks[-1], extra_overrides)
    if not spec.corpora:
        return run(name, plans[None], out)
    summaries = {}
    for corpus, plan in plans.items():
        if console:
            console.rule(f"{name} on {corpus}")
        summaries[corpus] = run(f"{name} on {corpus}", plan, out / _corpus_folder(corpus), corpus)
    parts = [f"# Experiment {name}\n\n{spec.description}\n\n```sh\n{command}\n```\n"]
    parts += [(out / _corpus_folder(corpus) / "results.md").read_text(encoding="utf-8")
              .replace("# Experiment", "## Experiment", 1) for corpus in plans]
    write_text(out / "results.md", "\n".join(parts))
    write_text(out / CORPORA, dumps({"experiment": name, "description": spec.description, "command": command,
                                     "corpora": [[corpus, _corpus_folder(corpus)] for corpus in plans]}, indent=1))
    write_corpora_report(out)  # one page: every corpus's tables and curves
    return summaries


def _plan_corpora(spec: ExperimentSpec, seeds: int, extra_overrides: Sequence[str]) -> dict[str | None, dict]:
    """{corpus: plan} of every corpus of the spec ({None: plan} without `corpora`), each checked with its data
    sources before anything trains; a fault names its corpus."""
    plans = {}
    for corpus in spec.corpora or [None]:
        try:
            plans[corpus] = plan_experiment(spec, seeds, extra_overrides, corpus)
            check_sources(plans[corpus])
        except VSLMError as e:
            raise type(e)(f"corpus '{corpus}': {e}" if corpus else str(e)) from None
    return plans


def dry_run(spec_name_or_path: str, out: Path, seeds: int | None = None, extra_overrides: Sequence[str] = (),
            resolve: float | None = None, max_seeds: int | None = None, sweep: Sequence[str] | None = None,
            sweep_seeds: int | None = None, variants: Sequence[str] | None = None) -> dict:
    """What `vslm experiment` would train, checked as it checks (the spec, every config, the data sources,
    the results already in `out`) and read from `out`, with nothing trained and nothing in `out` written:
    {"experiment", "looks", "corpora": {corpus or "": {"variants": [row per variant and sweep choice]}}}. A row:
    params, FLOPs per token, tokens per run, whether its seeds pair with the baseline's, the runs it trains at
    the first look and at most, and of those the runs `out` holds finished (reused), stopped part-way (resumed),
    in use by another process, and of other settings (the real run refuses the last two, naming them). A sweep's
    later seeds are one row: the kept choice's (`kept`) where every choice's sweep seeds are finished, chosen as
    the run chooses; else (`kept` None) the case that trains most, a choice with none of them finished."""
    extra_overrides, sweep = listed(extra_overrides, "extra_overrides"), listed(sweep, "sweep") or None
    variants = None if variants is None else listed(variants, "variants")
    name, raw, label = read_experiment(spec_name_or_path)
    if experiment_kind(raw, label) is not None:
        raise ConfigError(f"{label} is a {raw['kind']} experiment: its dry run is "
                          "vslm.commands.experiment.dry_run_experiment's (`vslm experiment --dry-run`)")
    out = Path(out)
    spec, seeds, looks = _prepare(raw, label, out, seeds, resolve, max_seeds, sweep, sweep_seeds, variants)
    plans = _plan_corpora(spec, looks[-1], extra_overrides)
    result: dict = {"experiment": name, "looks": looks, "corpora": {}}
    for corpus, plan in plans.items():
        folder = out / _corpus_folder(corpus) if corpus else out
        base = next(iter(plan.values()))
        base_cfgs = next(iter(base.values()))
        rows = []
        baseline = next(iter(plan))
        tried: dict[str, dict[str, float]] = {}  # the sweeps already finished: as the run would choose (kept_choices)
        measured: dict[str, dict[str, float]] = {}
        for variant, choices in plan.items():
            swept = NO_SWEEP not in choices
            later = {}  # a sweep's later seeds of each choice: one row, the kept choice's where the sweep is done
            k = spec.sweep_seeds
            for choice, cfgs in choices.items():
                model = build_for_accounting(cfgs[0])
                where = folder / variant / _choice_folder(choice) if choice else folder / variant
                seeds_here = range(k) if swept else range(looks[-1])  # a sweep trains seeds 0..k-1 of every choice
                states = [run_state(cfgs[seed], where / f"seed-{seed}") for seed in seeds_here]
                row = {"variant": variant, "choice": choice, "params": parameter_count(model),
                       "flops_per_token": training_flops_per_token(model), "tokens": tokens_per_run(cfgs[0]),
                       "paired": all(seeds_pair(a, b) for a, b in zip(base_cfgs, cfgs, strict=True)),
                       "runs_first": k if swept else looks[0], "runs_most": len(states), "sweep": swept}
                rows.append(row | _counted(states, [where / f"seed-{seed}" for seed in seeds_here]))
                if (swept or (spec.match and variant == baseline)) and states[:k] == ["finished"] * k:
                    files = [read_run(where / f"seed-{seed}") for seed in range(k)]
                    tried.setdefault(variant, {})[choice] = statistics.fmean(f.final("val_loss") for f in files)
                    if spec.match:
                        measured.setdefault(variant, {})[choice] = statistics.fmean(
                            (dynamics_summary(f) | diagnostics_summary(f)).get(spec.match, math.nan) for f in files)
                if swept and looks[-1] > k:
                    seeds_later = range(k, looks[-1])
                    later[choice] = row | {"choice": "the kept choice", "runs_first": looks[0] - k,
                                           "runs_most": len(seeds_later), "sweep": False, "after_sweep": True}
                    later[choice] |= _counted([run_state(cfgs[seed], where / f"seed-{seed}") for seed in seeds_later],
                                              [where / f"seed-{seed}" for seed in seeds_later])
            if later:  # the kept choice's row where every choice's sweep seeds are done; else the costliest case
                done = len(tried.get(variant, {})) == len(choices) and (
                    not spec.match or variant == baseline or len(tried.get(baseline, {})) == len(plan[baseline]))
                if done and spec.match:
                    match_target(spec, baseline, tried, measured)  # refused as the run would refuse it
                kept = kept_choices(spec.match, baseline, tried, measured).get(variant) if done else None
                rows.append(later[kept] | {"kept": kept} if kept is not None else _costliest(list(later.values())))
        result["corpora"][corpus or ""] = {"folder": str(folder), "variants": rows}
    return result


def _costliest(rows: list[dict]) -> dict:
    """A sweep's later seeds where the choice it keeps is not known yet: the most any choice could train (the
    fewest finished, the largest cost) and every choice's folders in use or of other settings."""
    worst = min(rows, key=lambda r: r["finished"])
    return worst | {"kept": None, **{k: max(r[k] for r in rows) for k in ("flops_per_token", "params", "tokens",
                                                                         "in_use", "other_settings")},
                    "other_settings_folders": [f for r in rows for f in r["other_settings_folders"]]}


def _counted(states: list[str], folders: list[Path]) -> dict:
    """A dry run's counts of each RUN_STATES state, and the folders of other settings (the run refuses them)."""
    return {**{state: sum(s == state for s in states) for state in RUN_STATES},
            "other_settings_folders": [str(f) for s, f in zip(states, folders, strict=True) if s == "other_settings"]}


RUN_STATES = ("finished", "stopped", "in_use", "other_settings")


def run_state(cfg: RunConfig, folder: Path) -> str:
    """What a run folder holds for cfg, read only: "new" (nothing), "finished" (reused as it is), "stopped"
    (resumed, or trained again if it never checkpointed), "in_use" (another process is training it: refused
    until it ends) or "other_settings" (refused)."""
    if in_use(folder):
        return "in_use"
    if not (folder / CONFIG).exists():
        return "new"
    try:
        saved = read_run_config(folder)
    except VSLMError:
        return "other_settings"
    # another model than cfg builds now (a data.source elsewhere with the same text, a moved folder's, is the same)
    if not same_settings(cfg, saved, folder=folder) or layout_moved(folder, saved.model):
        return "other_settings"
    found = list_checkpoints(folder / CHECKPOINTS)
    return "finished" if found and found[-1][0] == cfg.train.steps else "stopped"


def _run_variants(name: str, spec: ExperimentSpec, plan: dict[str, dict[str, list[RunConfig]]], out: Path,
                  command: str, console: Console | None, launcher: Launcher, looks: list[int],
                  resolve: float | None, every: Sequence[str]) -> dict[str, dict]:
    """One experiment's runs in out (sweeps first, then the seeds in rounds up to each look), and its
    results.json and results.md there. `every`: the overrides every variant gets (the experiment's, the corpus,
    the command line's), for the table of what each variant sets."""
    levels = spending_levels(looks) if resolve is not None else [SIGNIFICANCE]

    def say(text: str) -> None:
        if console:
            console.print(text, highlight=False, markup=False)  # "[train.lr=1e-3]" is not a style tag

    def said(job: RunJob, result: dict) -> None:
        if "failed" in result:
            say(f"{job.label}: failed: {result['failed']}")
        else:
            reused = ", reused" if result["reused"] else ""
            say(f"{job.label}: val_loss {result['val_loss']:.4f} ({result['train_time_s']:.1f} s of training{reused})")

    if console and (launcher.kind != "local" or launcher.jobs > 1):
        say(f"training on {launcher.describe()}")
    sweeps: dict[str, dict] = {}
    chooser = range(spec.sweep_seeds)  # the seeds a sweep chooses on (each choice's mean over them)
    sweep_jobs = [(variant, choice, RunJob(cfgs[seed], out / variant / _choice_folder(choice) / f"seed-{seed}",
                                           f"{variant} [{choice}] seed {seed}"))
                  for variant, choices in plan.items() if NO_SWEEP not in choices for choice, cfgs in choices.items()
                  for seed in chooser]
    baseline = next(iter(plan))
    if spec.match and NO_SWEEP in plan[baseline]:  # its first seeds set the value the others match
        sweep_jobs[:0] = [(baseline, NO_SWEEP, RunJob(plan[baseline][NO_SWEEP][seed], out / baseline / f"seed-{seed}",
                                                      f"{baseline} seed {seed}")) for seed in chooser]
    losses: dict[str, dict[str, list[float]]] = {}  # {variant: {choice: [val_loss per seed]}}
    values: dict[str, dict[str, list[float]]] = {}  # the matched landmark, likewise
    for (variant, choice, job), result in zip(sweep_jobs, run_jobs([j for *_, j in sweep_jobs], launcher, said),
                                              strict=True):
        losses.setdefault(variant, {}).setdefault(choice, []).append(
            math.inf if "failed" in result else result["val_loss"])
        if spec.match:
            files = read_run(job.folder) if "failed" not in result else None
            value = (dynamics_summary(files) | diagnostics_summary(files)).get(spec.match, math.nan) if files else \
                math.nan
            values.setdefault(variant, {}).setdefault(choice, []).append(value)
    # a diverged or failed run counts as infinite: its choice's mean too; a landmark not measured (NaN), likewise
    tried = {variant: {choice: statistics.fmean(seen) for choice, seen in choices.items()}
             for variant, choices in losses.items()}
    measured = {variant: {choice: statistics.fmean(seen) for choice, seen in choices.items()}
                for variant, choices in values.items()}
    target = match_target(spec, baseline, tried, measured) if spec.match else math.nan
    kept = {variant: NO_SWEEP for variant in plan} | kept_choices(spec.match, baseline, tried, measured)
    for variant in plan:
        if variant in tried and NO_SWEEP not in tried[variant]:
            sweeps[variant] = {"tried": tried[variant], "chosen": kept[variant]}
            if spec.match:
                sweeps[variant] |= {"measured": measured[variant], "target": target}
            by_loss = not spec.match or variant == baseline  # kept for its lowest loss: its best may lie past it
            if by_loss and math.isfinite(tried[variant][kept[variant]]) and (
                    edge := sweep_edge(list(tried[variant]), kept[variant])):
                sweeps[variant]["edge"] = edge
                say(f"{variant}: its sweep's lowest validation loss is at {edge} ({kept[variant]}): its best may "
                    "lie past the sweep; widen it")
            if spec.sweep_seeds > 1:
                sweeps[variant]["per_seed"] = losses[variant]
                if spec.match:
                    sweeps[variant]["per_seed_measured"] = values[variant]

    def folder_of(variant: str, seed: int) -> Path:
        chosen = kept[variant]
        return (out / variant / _choice_folder(chosen) if chosen else out / variant) / f"seed-{seed}"

    chosen_cfgs = {v: plan[v][kept[v]] for v in plan}
    base_cfgs = next(iter(chosen_cfgs.values()))
    paired = {v: all(seeds_pair(a, b) for a, b in zip(base_cfgs, cfgs, strict=True))
              for v, cfgs in chosen_cfgs.items()}
    tokens = tokens_per_run(base_cfgs[0])
    by_variant: dict[str, list[dict]] = {v: [] for v in plan}
    files: dict[tuple[str, int], RunFiles] = {}  # each finished run's files, read once
    data_of = {v: plan[v][kept[v]][0].data for v in plan}
    scored: dict[tuple[Path, str], dict] = {}  # cross_eval: each (run, text) scored once over the looks

    def finished_folders() -> dict[str, dict[int, Path]]:
        return {v: {r["seed"]: folder_of(v, r["seed"]) for r in rows if "failed" not in r}
                for v, rows in by_variant.items()}

    done, history = 0, []
    for look, (n, level) in enumerate(zip(looks, levels, strict=True)):
        jobs = [(variant, seed, RunJob(chosen_cfgs[variant][seed], folder_of(variant, seed),
                                       f"{variant}{f' [{kept[variant]}]' if kept[variant] else ''} seed {seed}"))
                for seed in range(done, n) for variant in plan]  # seed by seed: a stop leaves whole seeds
        for (variant, seed, job), result in zip(jobs, run_jobs([j for *_, j in jobs], launcher, said), strict=True):
            row = {"variant": variant, "seed": seed}
            if "failed" in result:
                row["failed"] = result["failed"]
            else:
                row |= {k: result[k] for k in ("val_loss", "val_bpb", "train_time_s", "params", "flops_per_token",
                                               "reused")}
                files[variant, seed] = read_run(job.folder)
                row |= dynamics_summary(files[variant, seed]) | diagnostics_summary(files[variant, seed])
                row |= {k: v for k, v in result.items() if LENGTH_KEY.fullmatch(k)}  # train.eval_lengths
            by_variant[variant].append(row)
        for rows in by_variant.values():
            rows.sort(key=lambda r: r["seed"])
        done = n
        summary = summarize(by_variant, tokens, paired, alpha=level)
        compared = summary  # what the looks read: each variant against the baseline, or the transfer table
        if spec.cross_eval:  # each look scores only its new runs
            folders = finished_folders()
            if none := [v for v, found in folders.items() if not found]:  # every run so far failed: no matrix
                if look == len(looks) - 1:
                    raise VSLMError(f"{out}: every run of {', '.join(none)} failed, so no model of that text is "
                                    "cross-evaluated (the runs' errors are above; their folders are kept)")
                compared = {v: {"verdict": "", "ci_low": math.nan, "ci_high": math.nan} for v in none}  # unresolved
            else:
                cross = cross_evaluate(folders, data_of, console, alpha=level, scored=scored)
                compared = cross["transfer"]  # the main table's rows are each on its own text: not compared
        widest = max(((s["ci_high"] - s["ci_low"]) / 2 for s in compared.values()
                      if s["verdict"] not in ("baseline", "best") and not math.isnan(s["ci_low"])), default=math.nan)
        history.append({"seeds": n, "alpha": level, "widest_half_interval": widest})
        if resolve is None:
            break
        met = resolved(compared, resolve)
        unit = " bits per byte of the transfer table" if spec.cross_eval else ""
        say(f"look {look + 1} of {len(looks)}: {n} seeds, widest interval ±{widest:.4f}{unit} (target "
            f"±{resolve:g}), tests at alpha {level:.3g}{': resolved' if met else ''}")
        if met:
            break
    if done < looks[-1]:  # it stopped at an early look: fewer seeds, maybe, than the results already there
        check_results_kept(out, done, stopped=True)
    runs = [r for rows in by_variant.values() for r in rows]
    for variant, sweep in sweeps.items():
        summary[variant]["chosen"] = sweep["chosen"]
    dynamics = summarize_dynamics(by_variant)
    lengths = summarize_lengths(by_variant, tokens, paired, level)
    reach = summarize_reach({v: {r["seed"]: files[v, r["seed"]] for r in rows if "failed" not in r}
                             for v, rows in by_variant.items()}, tokens // base_cfgs[0].train.steps)
    report = {"experiment": name, "description": spec.description, "command": command, "seeds": done,
              "runs": runs, "summary": summary, "dynamics": dynamics, "sweeps": sweeps}
    if spec.match:
        report["match"] = spec.match
    if reach:
        report["reach"] = reach
    if lengths:
        report["lengths"] = lengths
    if resolve is not None:
        report["resolve"] = {"width": resolve, "max_seeds": looks[-1], "looks": history,
                             "resolved": resolved(compared, resolve)}
        if spec.cross_eval:
            report["resolve"]["unit"] = "bpb: the transfer table's intervals"
    failed = [r for r in runs if "failed" in r]
    if spec.cross_eval:
        report["cross_eval"] = cross
        # each variant's val_loss is its own corpus's held-out text: rows of different texts are not compared
        # (the transfer table compares, on every text, and the looks above read its intervals)
        baseline = next(iter(summary))
        for variant, s in summary.items():  # (a variant or a baseline whose every run failed keeps its verdict)
            if variant != baseline and s["seeds"] and summary[baseline]["seeds"]:
                s.update(diff_vs_baseline=math.nan, ci_low=math.nan, ci_high=math.nan, test=None, p_value=math.nan,
                         p_holm=math.nan, detectable=math.nan, verdict=OWN_TEXT)
    rows = summary_rows(summary)
    report["table"] = {"columns": list(COLUMNS), "rows": [list(row) for row in rows]}  # as shown: report.html
    if spec.cross_eval:
        shown = transfer_rows(report["cross_eval"]["transfer"])
        report["cross_eval"]["transfer_table"] = {"columns": list(TRANSFER_COLUMNS), "rows": [list(r) for r in shown]}

    def some_run_has(keys: dict[str, str]) -> bool:  # a group of landmarks
        return any(not math.isnan(d[key]["mean"]) for d in dynamics.values() for key in keys)

    if dynamics and some_run_has(DYNAMICS):
        shown = dynamics_rows(dynamics)
        report["dynamics_table"] = {"columns": ["variant", *DYNAMICS.values()], "rows": [list(r) for r in shown]}
    if dynamics:
        report["landmark_tables"] = [
            {"title": title, "columns": ["variant", *keys.values()], "rows": [list(r) for r in
                                                                             dynamics_rows(dynamics, keys, fmt)]}
            for keys, title, fmt in LANDMARKS[1:] if some_run_has(keys)]
    if reach:
        report.setdefault("landmark_tables", []).append(
            {"title": "sample efficiency (RESEARCH.md section 6): tokens to the baseline's final validation loss, "
                      "seed by seed", "columns": list(REACH_COLUMNS), "rows": [list(r) for r in reach_rows(reach)]})
    if lengths:
        shown = [("loss past the training context (train.eval_lengths), on the same long windows",
                  *lengths_table(lengths))]
        shown += [(f"length generalisation: loss at {m} x the context minus loss within it, against the "
                   "baseline's (Holm across this table's variants)", length_columns(m),
                   summary_rows(lengths["compared"][f"x{m}"]["summary"])) for m in lengths["multiples"][1:]]
        lengths["tables"] = [{"title": t, "columns": list(c), "rows": [list(r) for r in table_rows]}
                             for t, c, table_rows in shown]  # as shown: results.md, report.html
    if sweeps:  # as shown: results.md, report.html
        matched = [f"{spec.match} (target {next(iter(sweeps.values()))['target']:.4g})"] if spec.match else []
        on = seeds_words(spec.sweep_seeds) if spec.sweep_seeds == 1 else f"mean of {seeds_words(spec.sweep_seeds)}"
        report["sweep_table"] = {"columns": ["variant", f"choice ({on})", "val_loss", *matched, "kept"],
                                 "rows": [list(r) for r in sweep_rows(sweeps)]}
    # what each variant is: its overrides (a sweep's kept choice: the sweep table), after the experiment's own
    report["variants_table"] = {"columns": list(VARIANT_COLUMNS), "rows": [
        ["(every variant)", " ".join([f"base {spec.base}", *every])],
        *([v.name, " ".join(v.overrides) or "(the experiment's alone)"] for v in spec.variants if v.name in plan)]}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", dumps(report, indent=2) + "\n")
    tables = [(COLUMNS, rows), (VARIANT_COLUMNS, [tuple(r) for r in report["variants_table"]["rows"]])]
    if sweeps:
        tables.append((tuple(report["sweep_table"]["columns"]), [tuple(r) for r in report["sweep_table"]["rows"]]))
    if failed:
        tables.append((FAILED_COLUMNS, [(r["variant"], str(r["seed"]), r["failed"]) for r in failed]))
    if resolve is not None:
        tables.append((LOOK_COLUMNS, look_rows(history, resolve)))
    if "dynamics_table" in report:
        tables.append((("variant", *DYNAMICS.values()), dynamics_rows(dynamics)))
    titles = {FAILED_COLUMNS: "runs that did not finish", LOOK_COLUMNS: "looks at the data",
              VARIANT_COLUMNS: "what each variant sets"}
    for table in report.get("landmark_tables", []):
        tables.append((tuple(table["columns"]), [tuple(r) for r in table["rows"]]))
        titles[tables[-1][0]] = table["title"]

    for table in report.get("lengths", {}).get("tables", []):
        tables.append((tuple(table["columns"]), [tuple(r) for r in table["rows"]]))
        titles[tables[-1][0]] = table["title"]
    markdown = results_markdown(name, spec.description, command, tables)
    if spec.cross_eval:
        markdown += matrix_markdown(report["cross_eval"])
    write_text(out / "results.md", markdown)
    write_experiment_report(out)
    if console:
        for i, (columns, table_rows) in enumerate(tables):
            title = (f"{name}: {spec.description}" if spec.description else name) if i == 0 else \
                "sweep" if columns[1].startswith("choice") else titles.get(tuple(columns), "training dynamics")
            print_table(console, title, columns, table_rows)
    return summary


def seeds_words(n: int) -> str:
    """The seeds a sweep chooses on, in words: "seed 0", "seeds 0-2"."""
    return "seed 0" if n == 1 else f"seeds 0-{n - 1}"


def matched_choice(values: list[tuple[str, float]], target: float) -> str | None:
    """The sweep choice a `match` keeps: the choices in the order the sweep lists them (the landmark rising
    with them: learning rates ascending), the first whose value reaches the target, or the one before it
    where that is nearer in ratio; the nearest of all where none reaches it. Past a plateau, where a larger
    learning rate no longer gives a larger angular step (it diverges instead), a choice of about the same
    value is not a match. None when no value is measured (NaN, or not above 0)."""
    ordered = [(c, v) for c, v in values if math.isfinite(v) and v > 0]
    if not ordered:
        return None

    def off(item: tuple[str, float]) -> float:
        return abs(math.log(item[1] / target))

    for i, item in enumerate(ordered):
        if item[1] >= target:
            return min(ordered[max(0, i - 1) : i + 1], key=off)[0]
    return min(ordered, key=off)[0]


def match_target(spec: ExperimentSpec, baseline: str, tried: dict[str, dict[str, float]],
                 measured: dict[str, dict[str, float]]) -> float:
    """The baseline's value of spec.match at the choice it keeps (its lowest loss), which the other variants'
    sweeps match; a VSLMError where it is none (not measured, or not above 0)."""
    target = measured[baseline][kept_choices(None, baseline, tried, measured)[baseline]]
    if not math.isfinite(target) or target <= 0:
        gives = "gives" if spec.sweep_seeds == 1 else "give a mean of"
        raise VSLMError(f"match '{spec.match}': the baseline's {seeds_words(spec.sweep_seeds)} ({baseline}) "
                        f"{gives} {target}, no value to match (is the landmark measured? "
                        "logging.diagnostics_every for the diag_ ones)")
    return target


def kept_choices(match: str | None, baseline: str, tried: dict[str, dict[str, float]],
                 measured: dict[str, dict[str, float]]) -> dict[str, str]:
    """The choice each variant of `tried` keeps, from its choices' mean validation loss (a diverged run: inf)
    and, with `match`, their mean landmark (`measured`): the lowest loss, or for a swept variant after the
    baseline the choice nearest the baseline's landmark (matched_choice; the lowest loss where none finished and
    measured). With `match` and no value of the baseline's to match, the baseline's choice alone."""
    kept = {variant: min(losses, key=losses.get) for variant, losses in tried.items()}
    if not match:
        return kept
    target = measured.get(baseline, {}).get(kept.get(baseline, NO_SWEEP), math.nan)
    if not math.isfinite(target) or target <= 0:
        return {v: c for v, c in kept.items() if v == baseline}
    for variant, losses in tried.items():
        finished = [(c, v) for c, v in measured.get(variant, {}).items() if math.isfinite(losses[c])]
        if variant != baseline and NO_SWEEP not in losses and (choice := matched_choice(finished, target)):
            kept[variant] = choice
    return kept


def summarize_reach(runs: dict[str, dict[int, RunFiles]], tokens_per_step: int) -> dict[str, dict]:
    """Where every run evaluated before its end (train.eval_every): per variant, the tokens each seed's run took
    to first reach the validation loss the baseline's run of that seed ended at, and the baseline's tokens to
    it over those (above 1: fewer tokens than the baseline); mean and sample std over the seeds that reached it,
    and how many did. Empty when some run has a single evaluation."""
    curves = {v: {seed: run.series("val_loss") for seed, run in by_seed.items()} for v, by_seed in runs.items()}
    if not curves or any(len(steps) < 2 for by_seed in curves.values() for steps, _ in by_seed.values()):
        return {}
    baseline = next(iter(curves))
    target = {seed: float(losses[-1]) for seed, (_, losses) in curves[baseline].items()}

    def first_at(steps, losses, level: float) -> float:
        hit = steps[losses <= level]
        return float(hit[0]) * tokens_per_step if len(hit) else math.nan

    base_tokens = {seed: first_at(*curves[baseline][seed], level) for seed, level in target.items()}
    out = {}
    for variant, by_seed in curves.items():
        reached = {seed: first_at(steps, losses, target[seed]) for seed, (steps, losses) in by_seed.items()
                   if seed in target}
        got = [t for t in reached.values() if math.isfinite(t)]
        ratios = [base_tokens[seed] / t for seed, t in reached.items() if math.isfinite(t) and t > 0]
        out[variant] = {"tokens": mean_std(got) if got else {"mean": math.nan, "std": math.nan},
                        "ratio": mean_std(ratios) if ratios else {"mean": math.nan, "std": math.nan},
                        "reached": len(got), "seeds": len(reached)}
    return out


LENGTH_KEY = re.compile(r"val_(loss|bpb)_x\d+")  # a run's evaluations past its context (train.eval_lengths)


def summarize_lengths(runs: dict[str, list[dict]], tokens: int, paired: dict[str, bool],
                      alpha: float = SIGNIFICANCE) -> dict:
    """Where every finished run was evaluated past its context at the same multiples (train.eval_lengths):
    `multiples` (1 first), `loss` {variant: {"xm": mean_std over seeds}}, and `compared` {"xm": summarize's
    summary of each run's loss at m x the context minus its loss within it, on the same windows}: length
    generalisation, lower is better, set apart from how well a variant predicts within its context.
    Empty when no run (or not every run) has them."""
    done = [r for rs in runs.values() for r in rs if "failed" not in r]
    found = [sorted(int(k.rsplit("_x", 1)[1]) for k in r if LENGTH_KEY.fullmatch(k) and k.startswith("val_loss"))
             for r in done]
    if not done or not found[0] or any(f != found[0] for f in found):
        return {}
    multiples = found[0]
    loss = {v: {f"x{m}": mean_std([r[f"val_loss_x{m}"] for r in rs if "failed" not in r]) for m in multiples}
            for v, rs in runs.items() if any("failed" not in r for r in rs)}
    compared = {}
    for m in multiples[1:]:
        rows = {v: [r if "failed" in r else {**r, "val_loss": r[f"val_loss_x{m}"] - r["val_loss_x1"],
                                             "val_bpb": r[f"val_bpb_x{m}"] - r["val_bpb_x1"]} for r in rs]
                for v, rs in runs.items()}
        compared[f"x{m}"] = {"summary": summarize(rows, tokens, paired, alpha=alpha)}
    return {"multiples": multiples, "loss": loss, "compared": compared}


def summarize_dynamics(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant whose runs all have probes or weight diagnostics: mean and sample std over seeds of each
    landmark of LANDMARKS' groups (NaN where a seed never reached it, or did not measure it, or its files
    predate it: then the mean is NaN too, and says so)."""
    keys = [key for group, _, _ in LANDMARKS for key in group]
    out = {}
    for name, rs in runs.items():
        rs = [r for r in rs if "failed" not in r]
        if not rs or not all(any(key in r for key in keys) for r in rs):
            continue
        out[name] = {key: mean_std([r.get(key, math.nan) for r in rs]) for key in keys}
        if "icl_label" in rs[0]:
            out[name]["icl_label"] = rs[0]["icl_label"]
    return out


def cross_evaluate(folders: dict[str, dict[int, Path]], data_of: dict[str, DataConfig],
                   console: Console | None = None, alpha: float = SIGNIFICANCE,
                   scored: dict[tuple[Path, str], dict] | None = None) -> dict:
    """Every run (variant x seed, in `folders`: {variant: {seed: folder}}) scored on every variant's held-out
    documents (its data config in `data_of`), every token once: bits per byte and loss per token per cell, then mean and
    sample std over seeds per (train, eval), and which training text transfers best (vslm.lab.stats.transfer,
    its tests at `alpha`). `scored`: {(run folder, eval name): score} of earlier calls (an experiment's looks),
    read back, and this call's added."""
    names = list(folders)
    scored = {} if scored is None else scored
    cells: dict[tuple[str, str], list[dict]] = {(t, e): [] for t in names for e in names}
    for train_name, seed_folders in folders.items():
        for seed, folder in seed_folders.items():
            if all((folder, e) in scored for e in names):
                for eval_name in names:
                    cells[train_name, eval_name].append(scored[folder, eval_name])
                continue
            device = device_of(read_run_config(folder).train.device)  # where it trained: "auto" = CUDA if any
            run_cfg, model, tokenizer = load_run(folder, device=str(device))
            for eval_name in names:
                data = data_of[eval_name]
                same = run_cfg.data.tokenizer in FIXED_TOKENIZERS and data.tokenizer == run_cfg.data.tokenizer
                corpus = prepare_corpus(data, tokenizer=None if same else tokenizer)
                score = score_tokens(model, corpus.val.tokens, corpus.token_bytes, tokenizer.eos_id)
                scored[folder, eval_name] = {"train": train_name, "seed": seed, "eval": eval_name, "bpb": score.bpb,
                                             "loss": score.loss, "tokens": score.tokens, "bytes": score.bytes}
                cells[train_name, eval_name].append(scored[folder, eval_name])
            if console:
                row = ", ".join(f"{e} {cells[train_name, e][-1]['bpb']:.3f}" for e in names)
                console.print(f"{train_name} seed {seed} on each corpus, bits per byte: {row}", highlight=False)

    def stat(key: str, reduce) -> list[list[float]]:
        return [[reduce([c[key] for c in cells[t, e]]) for e in names] for t in names]

    return {"corpora": names, "sources": {n: data_of[n].source for n in names},
            "eval_tokens": {e: cells[names[0], e][0]["tokens"] for e in names},
            "bpb_mean": stat("bpb", statistics.mean), "bpb_std": stat("bpb", sample_std),
            "loss_mean": stat("loss", statistics.mean), "loss_std": stat("loss", sample_std),
            "transfer": transfer({k: [c["bpb"] for c in v] for k, v in cells.items()}, names, alpha),
            "runs": [c for t in names for e in names for c in cells[t, e]]}
