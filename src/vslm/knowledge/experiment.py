"""`vslm experiment knowledge-retrieval | knowledge-preloaded | knowledge-distill` (RESEARCH.md 5 (a)-(c)), and
`knowledge` (the three), `knowledge-adapters`, `knowledge-steps` (a reader that writes its steps), `knowledge-depth`
(readers of 3, 6 and 12 blocks at about the same parameters).

A knowledge experiment is a TOML file with `kind = "knowledge"`:

    description = "one line"
    kind = "knowledge"
    base = "tiny"                          # the config every trained arm starts from
    seeds = 2                              # seed k: world seed k and train.seed k
    overrides = ["data.tokenizer=byte"]    # common to every trained arm
    tokens = "words"                       # optional: every arm encodes with the reader's word tokenizer
    per_group = 30                         # questions per pool, split and hop count (vslm facts eval)
    [world]                                # WorldConfig fields (vslm facts generate), but the seed
    people = 40
    [[arms]]
    name = "closed-1x"
    data = "train"                         # train | preloaded | fixed (files of the world), reader, or a corpus
    reader = {max_hops = 3}                # data = "reader": the reader recipe's settings (ReaderSettings)
    adapters = 100                         # optional: the LoRA arm, steps per group of novel people
    [[arms]]
    name = "student"
    teacher = "closed-1x"                  # a distilled arm: trained from two arms by vslm facts distill
    naive = "naive"
    method = "combined"                    # combined | gradient-ascent | npo
    steps = 100
    relearn_steps = 50                     # optional, any arm: the relearning test (fine-tune on 10% of W)
    [[criteria]]                           # RESEARCH.md's success criteria, as comparisons of metrics
    claim = "the reader beats the 4x closed-book model on 2-hop questions"
    left = "reader:retrieved.seen.hops2"
    op = ">"                               # >, <, >=, <=, or "~" (|left - right| <= tolerance)
    right = "closed-4x:closed_book.seen.hops2"   # or a number, or "chance:SETTING.POOL"

An arm with `data = "reader"` is trained by the reader recipe (vslm.knowledge.reader: fresh small
worlds every step, the answer-only loss, a curriculum; W itself only asked), with `base = "reader"`
its model and schedule. With `tokens = "words"` the other arms encode their text with the same word
tokenizer, so that every arm sees a name as the same one or two tokens and the teacher, the naive
model and the student of a distillation share a vocabulary.

`include = ["knowledge-retrieval", ...]` makes an experiment of others: their arms (one arm of a name,
identical wherever it appears) and criteria, one table of criteria judged together (Holm across all
of them); the included experiments must agree on base, tokens, overrides, per_group, group_size and
world. With `--jobs N` the arms of every seed run in N worker processes (one arm of one seed each; a
distilled arm once its teacher and naive model are done; the default: one after another).

For each seed, out/seed-k/ holds the world (world/) and one folder per arm (a run folder with its
facts-eval.json; relearn.json with the relearning test). Finished parts are reused, so an
interrupted experiment completes when the same command runs again. A metric is a path into an arm's
facts-eval.json (`closed_book.seen`, `open_book.novel`, `retrieved.seen.hops2`, `counterfactual`,
`memorisation_ratio`, `adapters.novel`, `adapters.oracle.hops1`, `probe.seen` = best probe accuracy minus its majority
baseline, `relearn.rest` = the accuracy gained on the other 90% by relearning). Every criterion is
judged on the per-seed differences left - right (seed k's arms share seed k's world): their mean and
95% interval over seeds, and the one-sided p of a paired t-test over seeds, raw and Holm-adjusted
across the experiment's criteria. "met" where the data show the claim (Holm p < 0.05; for "~", the
interval inside ±0.05), "not met" where they show it fails (the interval wholly on the wrong side),
"not shown" between; "held in k of n seeds" beside it; with fewer than 3 seeds, "n < 3: no test".
The seed, not the question, is the unit: questions of one seed share its world and model. Results:
out/results.json, results.md and report.html (tables, accuracy by hops, training curves).
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console

from vslm.config import RunConfig, load_config, one_line_error
from vslm.errors import ConfigError, VSLMError, refuse_file_in_the_way, repeated
from vslm.files import read_json_object, write_text
from vslm.knowledge.folder import load_world_folder, world_key, write_world_folder
from vslm.knowledge.world import WorldConfig
from vslm.lab.experiments import check_results_kept, refuse_seed_overrides, run_state
from vslm.lab.runner import train_or_reuse
from vslm.lab.stats import (
    MIN_SEEDS,
    NO_TEST,
    SIGNIFICANCE,
    detectable_effect,
    holm,
    mean_std,
    paired_difference,
    sample_std,
)
from vslm.lab.tables import results_markdown
from vslm.plain import dumps, listed, plain
from vslm.report.runs import FACTS as EVAL  # each arm's evaluation, as `vslm facts eval` writes it
from vslm.train.run_folder import device_of, refuse_a_run_as_collection

WORLD_FILES = {"train": "train.txt", "preloaded": "preloaded.txt", "fixed": "fixed.txt"}
READER = "reader"  # an arm's data: trained by the reader recipe (vslm.knowledge.reader)
RELEARN = "relearn.json"
# the summary table: (label, metric path)
COLUMNS = (("closed-book seen", "closed_book.seen"), ("closed-book seen (trained questions)", "closed_book.seen_train"),
           ("closed-book novel", "closed_book.novel"), ("open-book seen", "open_book.seen"),
           ("open-book novel", "open_book.novel"), ("retrieved seen", "retrieved.seen"),
           ("retrieved novel", "retrieved.novel"), ("counterfactual", "counterfactual"),
           ("memorisation ratio", "memorisation_ratio"), ("probe gain seen", "probe.seen"),
           ("adapters novel (routed)", "adapters.novel"), ("relearning gain, other 90%", "relearn.rest"))
HOPS_SETTINGS = (("closed_book", "seen"), ("open_book", "novel"), ("retrieved", "seen"), ("retrieved", "novel"),
                 ("counterfactual", "seen"))
TOLERANCE = 0.05  # "~": equal within five points of accuracy


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    name: str = Field(pattern=r"^[\w.-]*\w[\w.-]*$")
    data: str = "train"
    reader: dict = {}
    overrides: list[str] = []
    adapters: int = Field(0, ge=0)
    teacher: str | None = None
    naive: str | None = None
    method: Literal["combined", "gradient-ascent", "npo"] = "combined"
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    relearn_steps: int = Field(0, ge=0)
    evaluate: bool = True

    @property
    def distilled(self) -> bool:
        return self.teacher is not None

    @model_validator(mode="after")
    def _reader_settings(self) -> Arm:
        if self.reader and self.data != READER:
            raise ValueError(f"arm '{self.name}': reader settings are for data = \"reader\"")
        if self.data == READER and self.distilled:
            raise ValueError(f"arm '{self.name}': a distilled arm is trained from its teacher, not by the reader")
        if self.data == READER:
            reader_settings(self)  # unknown fields and wrong types fail here
        return self


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    claim: str
    left: str
    op: Literal[">", "<", ">=", "<=", "~"]
    right: str | float


class KnowledgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "16" is not 16: as in a run config
    kind: Literal["knowledge"]
    description: str = ""
    base: str = "tiny"
    seeds: int = Field(2, ge=1)
    overrides: list[str] = []
    tokens: Literal["config", "words"] = "config"
    per_group: int = Field(30, ge=1)
    group_size: int = Field(10, ge=1)
    world: dict = {}
    arms: list[Arm] = Field(min_length=1)
    criteria: list[Criterion] = []

    @model_validator(mode="after")
    def _consistent(self) -> KnowledgeSpec:
        names = [a.name for a in self.arms]
        if duplicates := repeated(names):
            raise ValueError(f"duplicate arm names: {', '.join(duplicates)}")
        by_name = {a.name: a for a in self.arms}
        for arm in self.arms:
            if arm.distilled:
                for role, other in (("teacher", arm.teacher), ("naive", arm.naive)):
                    if other not in names[: names.index(arm.name)]:
                        raise ValueError(f"arm '{arm.name}': {role} '{other}' must be an arm listed before it")
                readers = [by_name[o].data == READER for o in (arm.teacher, arm.naive)]
                if any(by_name[o].data == READER and reader_settings(by_name[o]).steps
                       for o in (arm.teacher, arm.naive)):
                    raise ValueError(f"arm '{arm.name}': a reader with steps as teacher or naive model; distillation's "
                                     "terms compare answers given at once")
                if self.tokens != "words" and any(readers):
                    raise ValueError(f"arm '{arm.name}': a reader arm's word tokens and a config tokenizer in one "
                                     "distillation; set tokens = \"words\"")
        for c in self.criteria:
            for side in (c.left, c.right):
                if isinstance(side, str) and side.split(":")[0] not in [*names, "chance"]:
                    raise ValueError(f"criterion '{c.claim}': '{side}' names no arm (ARM:METRIC)")
        if "seed" in self.world:
            raise ValueError("world.seed is set per experiment seed; leave it out")
        return self


def reader_settings(arm: Arm):
    """The arm's ReaderSettings, checked: known fields, of their types, names "all" or "seen"."""
    from dataclasses import fields

    from pydantic import TypeAdapter

    from vslm.knowledge.reader import ReaderSettings

    known = {f.name for f in fields(ReaderSettings)}
    if unknown := sorted(set(arm.reader) - known):
        raise ValueError(f"arm '{arm.name}': unknown reader settings {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    try:
        settings = TypeAdapter(ReaderSettings).validate_python(arm.reader)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise ValueError(f"arm '{arm.name}': reader setting {where}: {error['msg']}") from None
    if settings.names not in ("all", "seen"):
        raise ValueError(f"arm '{arm.name}': reader names must be 'all' or 'seen', not {settings.names!r}")
    if settings.restate and not settings.steps:
        raise ValueError(f"arm '{arm.name}': reader restate needs steps = true (it restates the question after each)")
    return settings


SHARED = ("base", "tokens", "overrides", "per_group", "group_size", "world")  # what included experiments agree on


def merge_included(raw: dict, label: str, seen: tuple[str, ...] = ()) -> dict:
    """An experiment of others (`include`): its own description and seeds, their shared settings, the
    union of their arms (one of a name) and their criteria in order. A relative path is looked up
    beside the including file, as `base` is."""
    from vslm.lab.experiments import read_experiment

    names = raw.get("include")
    if not names:
        return raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{label}: include must be a list of experiment names")
    if label in seen:
        raise ConfigError(f"{label}: includes itself (through {' -> '.join(seen)})")
    here = Path(label).parent if Path(label).is_file() else None
    names = [str(here / n) if here and not Path(n).is_absolute() and (here / n).is_file() else n for n in names]
    own = sorted(k for k in (*SHARED, "arms", "criteria") if k in raw)
    if own:
        raise ConfigError(f"{label}: {', '.join(own)} come from the included experiments; leave them out")
    merged = {k: v for k, v in raw.items() if k != "include"} | {"arms": [], "criteria": []}
    first = None
    for name in names:
        part_name, part, part_label = read_experiment(name)
        part = merge_included(part, part_label, (*seen, label))
        if part.get("kind") != "knowledge":
            raise ConfigError(f"{label}: included '{name}' is not a knowledge experiment")
        shared = {k: part.get(k, KnowledgeSpec.model_fields[k].default) for k in SHARED}
        if first is None:
            first = (part_name, shared)
            merged |= shared
        elif shared != first[1]:
            differs = ", ".join(k for k in SHARED if shared[k] != first[1][k])
            raise ConfigError(f"{label}: '{name}' and '{first[0]}' differ in {differs}")
        arms = {a["name"]: a for a in merged["arms"]}
        for arm in part.get("arms", []):
            if arm.get("name") in arms:
                if arms[arm["name"]] != arm:
                    raise ConfigError(f"{label}: arm '{arm['name']}' differs between the included experiments")
            else:
                merged["arms"].append(arm)
        merged["criteria"] += [c for c in part.get("criteria", []) if c not in merged["criteria"]]
    return merged


def parse_spec(raw: dict, label: str) -> KnowledgeSpec:
    raw = merge_included(raw, label)
    try:
        spec = KnowledgeSpec.model_validate(raw)
        WorldConfig(**spec.world)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix=label)) from None
    return spec


# ------------------------------------------------------------------------------------- metrics


def _node(result: dict, path: str) -> dict:
    """The accuracy dict at a path: "setting.pool" or "setting.pool.hopsN" (from by_hops; the adapters' own:
    "adapters.novel.hopsN", "adapters.oracle.hopsN")."""
    parts = path.split(".")
    hops = parts.pop()[4:] if parts[-1].startswith("hops") else None
    node = result.get("by_hops", {}) if hops else result
    if hops and parts[0] == "adapters":
        node, parts = result.get("adapters", {}).get("by_hops", {}), parts[1:]
    for part in parts:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if hops is not None and isinstance(node, dict):
        node = node.get(hops, {})
    return node if isinstance(node, dict) else {}


def metric(result: dict, path: str) -> float:
    """A number out of an arm's results (facts-eval.json, plus `relearning`), by path (module docstring)."""
    if path == "memorisation_ratio":
        return _num(result.get("counterfactual", {}).get("memorisation_ratio"))
    if path.startswith("probe."):
        p = result.get("probe", {}).get(path.split(".")[1])
        return _num(p["best"] - p["baseline"]) if p else math.nan
    if path == "relearn.rest":
        r = result.get("relearning")
        return _num(r["after"]["rest"]["accuracy"] - r["before"]["rest"]["accuracy"]) if r else math.nan
    return _num(_node(result, path).get("accuracy"))


def chance(result: dict, path: str) -> float:
    return _num(_node(result, path).get("chance"))


def _num(x) -> float:
    return float(x) if isinstance(x, int | float) else math.nan


def side_value(side: str | float, results: dict[str, dict]) -> float:
    if not isinstance(side, str):
        return float(side)
    arm, path = side.split(":", 1)
    if arm == "chance":
        return next((v for r in results.values() if not math.isnan(v := chance(r, path))), math.nan)
    return metric(results[arm], path)


def holds(left: float, op: str, right: float) -> bool | None:
    if math.isnan(left) or math.isnan(right):
        return None
    return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right,
            "~": abs(left - right) <= TOLERANCE}[op]


def counts(side: str | float, per_seed: list[dict[str, dict]]) -> tuple[int, int] | None:
    """(right answers, questions) over all seeds for an accuracy side (ARM:SETTING.POOL[.hopsN]), else None."""
    if not isinstance(side, str) or side.startswith("chance:"):
        return None
    arm, path = side.split(":", 1)
    nodes = [_node(r[arm], path) for r in per_seed]
    if not all("n" in node and isinstance(node.get("accuracy"), int | float) for node in nodes):
        return None
    return round(sum(node["accuracy"] * node["n"] for node in nodes)), sum(node["n"] for node in nodes)


def p_value(op: str, differences: Sequence[float]) -> float:
    """One-sided p of a criterion against "no difference", from its per-seed differences left - right
    (seed k's arms share seed k's world, so the differences pair): a one-sample t-test of their mean
    against 0 over the seeds, the seed being the unit (the questions within a seed are not independent
    trials: they share the seed's world and trained model). NaN for "~", with fewer than MIN_SEEDS
    seeds that have both sides, or with no spread between seeds."""
    from scipy import stats

    ds = [d for d in differences if not math.isnan(d)]
    if op == "~" or len(ds) < MIN_SEEDS or statistics.stdev(ds) == 0:
        return math.nan
    alternative = "greater" if op in (">", ">=") else "less"
    return float(stats.ttest_1samp(ds, 0.0, alternative=alternative).pvalue)


def detectable(op: str, differences: Sequence[float]) -> float:
    """The smallest true mean difference left - right that p_value's one-sided test finds 4 times in 5 at
    this many seeds, at the unadjusted level SIGNIFICANCE (before Holm), from the spread of the per-seed
    differences: what a "not shown" could have shown. The one-sided test at alpha has the power of the
    two-sided one at 2 alpha but for its other tail, nothing at these effects. NaN for "~" (an equivalence
    test has no such effect) and where p_value is NaN."""
    ds = [d for d in differences if not math.isnan(d)]
    if op == "~" or len(ds) < MIN_SEEDS or statistics.stdev(ds) == 0:
        return math.nan
    return detectable_effect(len(ds), alpha=2 * SIGNIFICANCE) * sample_std(ds)


def judge(criteria: Sequence[Criterion], per_seed: list[dict[str, dict]]) -> list[dict]:
    """Each criterion on the means over seeds ("met" in the means), in how many seeds it held on its own,
    the mean per-seed difference left - right with its 95% t-interval over seeds, the one-sided p of the
    paired t-test over seeds (p_value), raw and with Holm's correction across the criteria, and the
    verdict (criterion_verdict)."""
    out = []
    for c in criteria:
        lefts = [side_value(c.left, r) for r in per_seed]
        rights = [side_value(c.right, r) for r in per_seed]
        left, right = mean_std(lefts)["mean"], mean_std(rights)["mean"]
        seeds = [holds(x, c.op, y) for x, y in zip(lefts, rights, strict=True)]
        left_n = counts(c.left, per_seed)
        differences = [x - y for x, y in zip(lefts, rights, strict=True)]
        both = [(y, x) for x, y in zip(lefts, rights, strict=True) if not (math.isnan(x) or math.isnan(y))]
        interval = paired_difference([y for y, _ in both], [x for _, x in both])
        out.append({"claim": c.claim, "left": c.left, "op": c.op, "right": c.right, "left_value": left,
                    "right_value": right, "met": holds(left, c.op, right),
                    "seeds_held": sum(1 for s in seeds if s), "seeds": len(seeds), "seeds_tested": len(both),
                    "questions": left_n[1] if left_n else None, "test": "paired t over seeds",
                    "diff": interval["diff"], "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
                    "p_value": p_value(c.op, differences), "detectable": detectable(c.op, differences)})
    for c, adjusted in zip(out, holm([c["p_value"] for c in out]), strict=True):
        c["p_holm"] = adjusted
        c["verdict"] = criterion_verdict(c)
    return out


def criterion_verdict(c: dict) -> str:
    """"met" where the data show the claim: an inequality's Holm-adjusted one-sided p below 0.05, or for
    "~" the 95% interval of the difference inside ±TOLERANCE (an equivalence test, outside Holm's
    family); "not met" where they show it fails: the interval wholly on the wrong side (for "~", wholly
    outside ±TOLERANCE); "not shown" between the two; "n < 3: no test" under MIN_SEEDS seeds with both
    sides; "not measured" where a side is missing."""
    if c["met"] is None:
        return "not measured"
    if c["seeds_tested"] < MIN_SEEDS:
        return NO_TEST
    low, high, op = c["ci_low"], c["ci_high"], c["op"]
    if op == "~":
        if -TOLERANCE <= low and high <= TOLERANCE:
            return "met"
        return "not met" if low > TOLERANCE or high < -TOLERANCE else "not shown"
    wrong_side = high < 0 if op in (">", ">=") else low > 0
    if math.isnan(c["p_holm"]):  # no spread between the seeds: the interval is the one difference
        return "met" if holds(c["diff"], op, 0.0) else "not met"
    return "met" if c["p_holm"] < SIGNIFICANCE else "not met" if wrong_side else "not shown"


# ------------------------------------------------------------------------------------------- runs


def arm_config(spec: KnowledgeSpec, arm: Arm, world: Path, seed: int, extra: Sequence[str]) -> RunConfig:
    source = str(world / WORLD_FILES[arm.data]) if arm.data in WORLD_FILES else arm.data
    data = [] if arm.data == READER else [f"data.source={source}"]  # the reader writes its own examples
    words = [*spec.overrides, *arm.overrides, *data, f"train.seed={seed}", *extra, "logging.progress=false"]
    try:
        return load_config(spec.base, words, shared=True)
    except ConfigError as e:
        raise ConfigError(f"arm '{arm.name}': {e}") from None


def make_world(spec: KnowledgeSpec, seed: int, folder: Path) -> Path:
    cfg = WorldConfig(**spec.world, seed=seed)
    saved = folder / "world.json"
    if saved.is_file():
        try:  # compared as settings, so that one written before a setting with a default existed still counts
            same = WorldConfig.model_validate(json.loads(saved.read_text(encoding="utf-8"))["settings"]) == cfg
        except (ValueError, KeyError, TypeError):  # not JSON, no settings, or settings this vslm does not read
            same = False
        if not same:
            raise VSLMError(f"{folder} holds a world of other settings than this experiment's; move it away")
        return folder
    write_world_folder(cfg, folder)
    return folder


def run_arm(spec: KnowledgeSpec, arm: Arm, world: Path, seed_dir: Path, seed: int, extra: Sequence[str],
            device: str, say) -> dict:
    """Train (or distil) one arm, evaluate it and run its relearning test; each part reused if done."""
    from vslm.knowledge.distill import distill
    from vslm.knowledge.evaluate import eval_settings, evaluate_run
    from vslm.knowledge.scoring import scoring_of

    folder = seed_dir / arm.name
    if arm.distilled:  # done with these settings: read back; begun or done with others: refused, naming them
        distill(seed_dir / arm.teacher, seed_dir / arm.naive, world, folder, arm.method, arm.steps,
                arm.batch_size, arm.lr, seed=seed, device=device)
        train = {}
    elif arm.data == READER:
        from vslm.knowledge.reader import train_reader

        done = train_reader(world, folder, arm_config(spec, arm, world, seed, extra), reader_settings(arm), reuse=True)
        train = {"val_loss": done["last"].get("val_loss"), "params": done["params"]}
    else:  # the text encoded here, so that a folder trained with another tokenizer is refused
        from vslm.data.shards import prepare_corpus
        from vslm.knowledge.reader import RECORDS, reader_tokenizer

        cfg = arm_config(spec, arm, world, seed, extra)
        corpus = prepare_corpus(cfg.data, tokenizer=reader_tokenizer() if spec.tokens == "words" else None)
        train = train_or_reuse(cfg, folder, corpus, RECORDS)
    result: dict = {}
    if arm.evaluate:
        asked = {"per_group": spec.per_group, "seed": seed, "adapter_steps": arm.adapters,
                 "group_size": spec.group_size}
        saved = json.loads((folder / EVAL).read_text(encoding="utf-8")) if (folder / EVAL).is_file() else {}
        if saved.get("settings") != eval_settings(world_key(world), **asked) or \
                saved.get("scoring") != scoring_of(folder):  # none yet, another world's or scoring's, say
            evaluate_run(folder, world, device=device, **asked)  # writes facts-eval.json
        result = json.loads((folder / EVAL).read_text(encoding="utf-8"))
    if arm.relearn_steps:
        result["relearning"] = relearning(folder, world, arm.relearn_steps, seed, device)
    result["train"] = {k: train[k] for k in ("val_loss", "params", "flops_per_token") if k in train}
    say(f"{arm.name} seed {seed}: " + ", ".join(
        f"{label} {metric(result, path):.3f}" for label, path in COLUMNS[:8]
        if not math.isnan(metric(result, path))))
    return result


def relearning(folder: Path, world: Path, steps: int, seed: int, device: str) -> dict:
    from vslm.knowledge.distill import relearn

    path = folder / RELEARN
    if path.is_file():  # made with these settings: reused; with others: refused (the arm's own numbers would mix)
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("steps") == steps and saved.get("seed", seed) == seed:
            return saved
        raise VSLMError(f"{path} was made with relearn_steps={saved.get('steps')}, seed {saved.get('seed', seed)}; "
                        f"this experiment asks relearn_steps={steps}, seed {seed}: move it and {folder / 'relearn'} "
                        "away to relearn, or --out another folder")
    out = plain(relearn(folder, load_world_folder(world), folder / "relearn", steps=steps, seed=seed, device=device))
    write_text(path, dumps({**out, "seed": seed}, indent=1) + "\n")
    return {**out, "seed": seed}


def run_seed(spec: KnowledgeSpec, seed: int, out: Path, extra: Sequence[str], device: str, say) -> dict[str, dict]:
    """Seed `seed`'s world and every arm on it (each part reused where done): {arm: results}."""
    seed_dir = out / f"seed-{seed}"
    world = make_world(spec, seed, seed_dir / "world")
    return {arm.name: run_arm(spec, arm, world, seed_dir, seed, extra, device, say) for arm in spec.arms}


def waves(arms: Sequence[Arm]) -> list[list[Arm]]:
    """The arms in the order their inputs allow: first those trained on their own, then each distilled arm
    in the wave after its teacher's and naive model's; within a wave, as listed."""
    level: dict[str, int] = {}
    for arm in arms:  # a teacher or naive model is always listed before (KnowledgeSpec checks)
        level[arm.name] = 1 + max(level[arm.teacher], level[arm.naive]) if arm.distilled else 0
    return [[a for a in arms if level[a.name] == n] for n in range(max(level.values(), default=-1) + 1)]


@dataclass(frozen=True)
class ArmJob:
    spec: KnowledgeSpec
    arm: str
    seed: int
    out: Path
    extra: tuple[str, ...]
    device: str


def _arm_task(job: ArmJob, threads: int) -> dict:
    """run_arm in a worker process (vslm.lab.parallel.run_in_processes): {"result": the arm's results}; a
    stop or an error in what was asked raises, a bug comes back as {"failed": reason}."""
    import torch

    from vslm.train.trainer import TrainingStopped

    torch.set_num_threads(threads)  # evaluation's; a config's train.threads still rules its training
    seed_dir = job.out / f"seed-{job.seed}"
    arm = next(a for a in job.spec.arms if a.name == job.arm)
    try:
        return {"result": run_arm(job.spec, arm, seed_dir / "world", seed_dir, job.seed, job.extra, job.device,
                                  lambda text: print(text, flush=True))}
    except (TrainingStopped, VSLMError):
        raise
    except Exception as e:  # a bug: say where; the parent reports it once the wave is done
        traceback.print_exc(file=sys.stderr)
        return {"failed": f"{type(e).__name__}: {e}"}


def run_seeds(spec: KnowledgeSpec, seeds: int, out: Path, extra: Sequence[str], device: str, say,
              jobs: int = 1) -> list[dict[str, dict]]:
    """Every seed's world and every arm on it: one after another here, or in `jobs` worker processes
    (vslm.lab.parallel: one arm of one seed a worker at a time, the cores split between them, so that the
    workers keep busy whatever the number of seeds; Ctrl-C stops them all, and an error in what was asked
    stops the rest). The worlds are made here first; a distilled arm starts once its teacher and naive
    model are done on every seed (waves). [{arm: results}] by seed."""
    order = waves(spec.arms)
    jobs = min(jobs, seeds * max(map(len, order)))  # the widest wave: no worker that never gets an arm
    if jobs <= 1:
        return [run_seed(spec, seed, out, extra, device, say) for seed in range(seeds)]
    from vslm.lab.parallel import run_in_processes, threads_per_worker

    for seed in range(seeds):
        make_world(spec, seed, out / f"seed-{seed}" / "world")
    say(f"arms x seeds on {jobs} worker processes, {threads_per_worker(jobs)} thread(s) each for evaluation "
        "(a config's train.threads for training)")
    per_seed, failed = in_waves(spec, seeds, lambda items: run_in_processes(
        [ArmJob(spec, name, seed, out, tuple(extra), device) for seed, name in items], jobs, _arm_task))
    if failed:  # what finished is reused when the command runs again
        raise VSLMError("; ".join(f"{name} seed {seed}: {why}" for (seed, name), why in sorted(failed.items())))
    return [{arm.name: results[arm.name] for arm in spec.arms} for results in per_seed]


def in_waves(spec: KnowledgeSpec, seeds: int, run_wave) -> tuple[list[dict[str, dict]], dict[tuple[int, str], str]]:
    """run_wave([(seed, arm name), ...]) -> [{"result": ...} or {"failed": why}, ...] for each wave of
    waves(spec.arms) over every seed: ([{arm: result}] by seed, {(seed, arm): why} of what failed). A
    distilled arm whose teacher or naive model failed on a seed is not asked on that seed; the other seeds
    go on."""
    per_seed: list[dict[str, dict]] = [{} for _ in range(seeds)]
    failed: dict[tuple[int, str], str] = {}
    for wave in waves(spec.arms):
        items = []
        for seed in range(seeds):
            for arm in wave:
                lacking = [o for o in (arm.teacher, arm.naive) if (seed, o) in failed] if arm.distilled else []
                if lacking:
                    failed[seed, arm.name] = f"not distilled: {' and '.join(dict.fromkeys(lacking))} failed"
                else:
                    items.append((seed, arm.name))
        for (seed, name), r in zip(items, run_wave(items) if items else [], strict=True):
            if "failed" in r:
                failed[seed, name] = r["failed"]
            else:
                per_seed[seed][name] = r["result"]
    return per_seed, failed


def run_knowledge_experiment(name: str, spec: KnowledgeSpec, out: Path, seeds: int | None = None,
                             extra_overrides: Sequence[str] = (), console: Console | None = None,
                             source: str | None = None, jobs: int = 1) -> dict:
    """Every arm x seed (in `jobs` worker processes), then out/results.json, results.md and
    report.html; returns the results."""
    seeds, out = spec.seeds if seeds is None else seeds, Path(out)
    extra_overrides = listed(extra_overrides, "overrides")
    configs = check_knowledge(spec, seeds, out, extra_overrides)
    command = shlex.join(["vslm", "experiment", source or name, *extra_overrides, "--seeds", str(seeds),
                          "--out", str(out)])
    device = str(device_of(next(iter(configs.values())).train.device))  # where the arms train, evaluate, distil

    def say(text: str) -> None:
        if console:
            console.print(text, highlight=False, markup=False)

    per_seed = run_seeds(spec, seeds, out, extra_overrides, device, say, jobs)
    results = summarize(name, spec, command, per_seed)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", dumps(results, indent=1, digits=6) + "\n")
    write_text(out / "results.md", markdown(results))
    (out / "report.html").write_text(render_report(results, out), encoding="utf-8")
    if console:
        console.print(markdown(results), highlight=False, markup=False)
        console.print(f"results: {out / 'results.md'}", highlight=False, markup=False)  # the report: printed last
    return results


def check_knowledge(spec: KnowledgeSpec, seeds: int, out: Path, extra: Sequence[str]) -> dict[str, RunConfig]:
    """What a knowledge experiment and its dry run check before anything trains: the seeds, the overrides, the
    folder and the results it holds, every trained arm's config (returned, by arm) and reading curve."""
    from vslm.knowledge.reader import check_curve

    if seeds < 1:
        raise ConfigError(f"an experiment needs at least 1 seed, got {seeds}")
    refuse_seed_overrides([("the command line", extra), ("the experiment's overrides", spec.overrides),
                           *((f"arm '{arm.name}'", arm.overrides) for arm in spec.arms)])
    refuse_file_in_the_way(out)
    refuse_a_run_as_collection(out, "a knowledge experiment")
    check_results_kept(out, seeds)
    configs = {arm.name: arm_config(spec, arm, out / "seed-0" / "world", 0, extra)  # all validated before
               for arm in spec.arms if not arm.distilled}                       # anything trains
    for arm in spec.arms:
        if arm.data == READER:
            check_curve(reader_settings(arm), configs[arm.name])
    return configs


def plan_knowledge(name: str, spec: KnowledgeSpec, out: Path, seeds: int | None = None,
                   extra: Sequence[str] = ()) -> dict:
    """What `vslm experiment KNOWLEDGE --dry-run` shows, checked as the experiment checks, nothing trained or
    written: per arm, what it trains on, its model's parameters and training FLOPs per token, its steps x rows
    and tokens per seed, the adapters and relearning it adds, and the seeds `out` holds trained and evaluated
    with these settings (reused); the tokens and FLOPs left to train. A distilled arm's student is a copy of
    its teacher; a step takes at most four groups of rows (open-book, counterfactual, closed-book, general
    text), and its FLOPs left count the teacher's and the naive model's forward passes beside the student's."""
    from vslm.knowledge.reader import reader_tokenizer
    from vslm.lab.runner import build_for_accounting
    from vslm.model import parameter_count, training_flops_per_token

    seeds, out, extra = spec.seeds if seeds is None else seeds, Path(out), listed(extra, "overrides")
    configs = check_knowledge(spec, seeds, out, extra)
    novel = WorldConfig(**spec.world, seed=0).novel_people
    by_name = {arm.name: arm for arm in spec.arms}
    counted: dict[str, tuple[int | None, int | None]] = {}  # trained arm -> (parameters, FLOPs per token)
    for arm_name, cfg in configs.items():
        if spec.tokens == "words" or by_name[arm_name].data == READER:  # the reader's word vocabulary, fixed
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
                update={"vocab_size": cfg.model.vocab_size or reader_tokenizer().vocab_size})})
        if cfg.model.vocab_size is None and cfg.data.tokenizer in ("char", "bpe"):
            counted[arm_name] = (None, None)  # its vocabulary is the world's text's, made only when it trains
        else:
            model = build_for_accounting(cfg)
            counted[arm_name] = (parameter_count(model), training_flops_per_token(model))
    rows, left_tokens, left_flops = [], 0, 0.0
    for arm in spec.arms:
        cfg = configs[arm.teacher if arm.distilled else arm.name]  # a student starts as a copy of its teacher
        params, flops = counted[arm.teacher if arm.distilled else arm.name]
        per_token = flops
        if arm.distilled:
            steps, rows_per_step = arm.steps, 4 * arm.batch_size
            naive = counted[arm.naive][1]
            per_token = None if flops is None or naive is None else flops + flops / 3 + naive / 3
        else:
            steps, rows_per_step = cfg.train.steps, cfg.train.batch_size * cfg.train.grad_accum
        tokens = steps * rows_per_step * cfg.model.context
        if arm.distilled:
            trains = f"{arm.method} distillation: a copy of {arm.teacher}, naive model {arm.naive}"
        elif arm.data == READER:
            recipe = reader_settings(arm)
            trains = ("the reader recipe: a fresh small world per example"
                      + (", steps before the answer" if recipe.steps else "")
                      + (", each hop's question restated" if recipe.restate else ""))
        else:
            trains = f"the world's {WORLD_FILES[arm.data]}" if arm.data in WORLD_FILES else arm.data
        groups = -(-novel // spec.group_size)
        also = ([f"{groups} LoRA adapter{'s' * (groups > 1)} x {arm.adapters} steps"] if arm.adapters else []) + \
            ([f"relearning {arm.relearn_steps} steps"] if arm.relearn_steps else [])
        states = [_arm_state(spec, arm, out, s, extra) for s in range(seeds)]
        trained = [s for s, state in enumerate(states) if state != "new"]
        if left := seeds - len(trained):
            left_tokens += tokens * left
            left_flops += (math.nan if per_token is None else per_token) * tokens * left
        rows.append({"arm": arm.name, "trains": trains, "params": params, "flops_per_token": flops, "steps": steps,
                     "rows_per_step": rows_per_step, "context": cfg.model.context, "tokens": tokens, "also": also,
                     "evaluate": arm.evaluate, "seeds_trained": trained,
                     "seeds_done": [s for s, state in enumerate(states) if state == "done"]})
    return {"experiment": name, "kind": "knowledge", "folder": str(out), "seeds": seeds, "arms": rows,
            "tokens_left": left_tokens, "flops_left": left_flops}


def _arm_state(spec: KnowledgeSpec, arm: Arm, out: Path, seed: int, extra: Sequence[str]) -> str:
    """Seed `seed`'s arm in `out`, as the run would find it: "new" (it trains), "trained" (distilled, read or
    trained to its last step: reused, and evaluated or relearned again, with these settings) or "done" (its
    evaluation and relearning test too, with these settings: all reused)."""
    from vslm.knowledge.distill import RESULT as DISTILLED
    from vslm.knowledge.evaluate import eval_settings
    from vslm.knowledge.reader import RESULT as READ
    from vslm.knowledge.scoring import scoring_of

    folder, world = out / f"seed-{seed}" / arm.name, out / f"seed-{seed}" / "world"
    if arm.distilled or arm.data == READER:
        trained = (folder / (DISTILLED if arm.distilled else READ)).is_file()
    else:
        trained = run_state(arm_config(spec, arm, world, seed, extra), folder) == "finished"
    if not trained:
        return "new"
    asked = eval_settings(world_key(world), per_group=spec.per_group, seed=seed, adapter_steps=arm.adapters,
                          group_size=spec.group_size)
    saved = read_json_object(folder / EVAL)
    evaluated = not arm.evaluate or (saved.get("settings"), saved.get("scoring")) == (asked, scoring_of(folder))
    relearn = read_json_object(folder / RELEARN) if arm.relearn_steps else {}
    relearned = not arm.relearn_steps or (relearn.get("steps"), relearn.get("seed", seed)) == (arm.relearn_steps, seed)
    return "done" if evaluated and relearned else "trained"


def summarize(name: str, spec: KnowledgeSpec, command: str, per_seed: list[dict[str, dict]]) -> dict:
    arms = [a.name for a in spec.arms]
    summary = {arm: {path: mean_std([metric(r[arm], path) for r in per_seed]) for _, path in COLUMNS}
               for arm in arms}
    hops = sorted({int(h) for r in per_seed for arm in arms
                   for pools in r[arm].get("by_hops", {}).values() for by in pools.values() for h in by})
    by_hops = {arm: {f"{s}.{p}": {h: mean_std([metric(r[arm], f"{s}.{p}.hops{h}") for r in per_seed])
                                  for h in hops} for s, p in HOPS_SETTINGS} for arm in arms}
    chances = {path: mean_std([side_value(f"chance:{path}", r) for r in per_seed])["mean"] for _, path in COLUMNS[:8]}
    params = {arm: per_seed[0][arm].get("train", {}).get("params") for arm in arms}
    return {"experiment": name, "description": spec.description, "command": command, "seeds": len(per_seed),
            "world": spec.world, "arms": {a.name: a.model_dump(exclude_defaults=True) for a in spec.arms},
            "params": params, "chance": chances, "summary": summary, "by_hops": by_hops,
            "criteria": judge(spec.criteria, per_seed), "runs": per_seed}


def _pm(stat: dict) -> str:
    if math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.3f}" + ("" if math.isnan(stat["std"]) else f" ± {stat['std']:.3f}")


def _verdict(c: dict) -> str:
    def num(key: str) -> float:
        x = c.get(key)
        return math.nan if x is None else x

    p, adjusted = num("p_value"), num("p_holm")
    significance = "" if math.isnan(p) else f", p = {p:.2g}, Holm {adjusted:.2g}"
    return f"{c['verdict']} (held in {c['seeds_held']} of {c['seeds']} seeds{significance})"


def _interval(c: dict) -> str:
    low, high = (math.nan if c.get(k) is None else c[k] for k in ("ci_low", "ci_high"))
    if c.get("diff") is None or math.isnan(c["diff"]):
        return "-"
    return f"{c['diff']:+.3f}" + ("" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]")


def _detectable(c: dict) -> str:  # results read back from JSON have null, older ones no key
    x = c.get("detectable")
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def tables(results: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The summary, by-hops and criteria tables as (columns, rows) of plain text."""
    summary, arms = results["summary"], list(results["summary"])
    shown = [(label, path) for label, path in COLUMNS
             if any(not math.isnan(summary[a][path]["mean"]) for a in arms)]
    head = ["arm", "params", *[label for label, _ in shown]]
    rows = [[a, f"{results['params'][a]:,}" if results["params"].get(a) else "(distilled)",
             *[_pm(summary[a][path]) for _, path in shown]] for a in arms]
    rows.append(["chance", "", *[f"{results['chance'][p]:.3f}" if not math.isnan(results["chance"].get(p, math.nan))
                                 else "" for _, p in shown]])
    hops = sorted({h for a in arms for by in results["by_hops"][a].values() for h in by})
    hop_rows = [[a, setting.replace("_", "-").replace(".", " "), *[_pm(by[h]) for h in hops]]
                for a in arms for setting, by in results["by_hops"][a].items()
                if any(not math.isnan(by[h]["mean"]) for h in hops)]
    crit = [[c["claim"], f"{c['left']} {c['op']} {c['right']}",
             f"{c['left_value']:.3f} {c['op']} {c['right_value']:.3f}"
             if not (math.isnan(c["left_value"]) or math.isnan(c["right_value"])) else "-", _interval(c),
             _detectable(c), _verdict(c)]
            for c in results["criteria"]]
    out = [(head, rows), (["arm", "setting", *[f"{h} hop{'s' if h > 1 else ''}" for h in hops]], hop_rows)]
    if crit:
        out.append((["success criterion (RESEARCH.md 5)", "measured as", "means over seeds",
                     "left - right [95% CI over seeds]", "Δ at 80% power", "verdict"], crit))
    return out


def markdown(results: dict) -> str:
    seeds = f"{results['seeds']} seed{'s' if results['seeds'] > 1 else ''}"
    intro = (f"{results['description']}\n\nAccuracy (mean ± sample std over {seeds}) of picking the right answer "
             "among the question's choices; chance beside it. Then accuracy by hops, and the success criteria.")
    return results_markdown(results["experiment"], intro, results["command"], tables(results))


def render_report(results: dict, out: Path) -> str:
    from vslm.report import figures
    from vslm.report.html import figure, page, pre, section, table
    from vslm.report.runs import read_run

    names = ["Accuracy", "Accuracy by hops", "Success criteria"]
    sections = [section(f"t{i}", names[i], table(cols, [[escape(c) for c in row] for row in rows]))
                for i, (cols, rows) in enumerate(tables(results))]
    sections.insert(1, section("hops-figure", "Accuracy by hops (figure)",
                               figure(hops_figure(results), "accuracy by number of hops",
                                      "Accuracy by number of reasoning hops, mean over seeds, per arm and "
                                      "setting; the dotted line is the closed-book seen chance level.")))
    trained = [a for a, spec in results["arms"].items() if "teacher" not in spec
               and (out / "seed-0" / a / "metrics.jsonl").is_file()]
    if trained:
        runs = [read_run(out / "seed-0" / a) for a in trained]
        x, y = figures.comparison_axes(runs)
        sections.append(section("training", "Training curves (seed 0)",
                                figure(figures.compare_loss(runs, trained, x, y), "training loss of each arm",
                                       figures.loss_caption(x, y) + " of each trained arm, seed 0 (the preloaded "
                                       "arms' loss covers the answers only).")))
    sections.append(section("command", "Command", pre(results["command"])))
    return page(f"Experiment {results['experiment']}", results["description"], sections)


def hops_figure(results: dict):
    from matplotlib.figure import Figure  # no pyplot, no backend chosen: a notebook's own stays as it is

    from vslm.report.figures import literal  # an arm's name as typed ('_x' would hide its legend entry)

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, len(HOPS_SETTINGS), sharey=True)
    for ax, (s, p) in zip(axes, HOPS_SETTINGS, strict=True):
        key = f"{s}.{p}"
        for n, (arm, by) in enumerate(results["by_hops"].items()):
            hops = sorted(by[key], key=int)
            ys = [by[key][h]["mean"] for h in hops]
            if not all(math.isnan(y) for y in ys):
                ax.plot([int(h) for h in hops], ys, "o-", color=f"C{n % 10}", label=literal(arm))
        ax.axhline(results["chance"].get("closed_book.seen", math.nan), color="grey", linestyle=":")
        ax.set_title(f"{s.replace('_', '-')} {p}", fontsize="medium")
        ax.set_xticks(sorted({int(h) for by in results["by_hops"].values() for h in by[key]}))
        ax.set_xlabel("hops")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1)
    axes[-1].legend(fontsize="small")
    return fig
