"""Knowledge experiments (`kind = "knowledge"`): metrics by path, criteria, spec validation, a tiny run."""

import json
import math
import statistics

import pytest
from scipy import stats

from vslm.cli import main
from vslm.commands.experiment import run_experiment
from vslm.errors import ConfigError, VSLMError
from vslm.knowledge.experiment import (
    Criterion,
    arm_config,
    chance,
    in_waves,
    judge,
    make_world,
    metric,
    p_value,
    parse_spec,
    side_value,
    tables,
    waves,
)
from vslm.lab.experiments import builtin_experiments, read_experiment
from vslm.lab.stats import holm

RESULT = {  # the shape of facts-eval.json (hop keys are strings there), plus relearning
    "closed_book": {"seen": {"accuracy": 0.25, "n": 40, "chance": 0.125}},
    "open_book": {"novel": {"accuracy": 0.5, "n": 20, "chance": 0.2}},
    "counterfactual": {"accuracy": 0.4, "n": 10, "chance": 0.125, "memorisation_ratio": 0.3},
    "by_hops": {"retrieved": {"seen": {"1": {"accuracy": 0.9, "n": 10, "chance": 0.125},
                                       "2": {"accuracy": 0.6, "n": 10, "chance": 0.25}}}},
    "probe": {"attribute": "birth_city", "seen": {"best": 0.3, "baseline": 0.1, "by_depth": [0.3]}},
    "relearning": {"before": {"rest": {"accuracy": 0.2}}, "after": {"rest": {"accuracy": 0.35}}},
    "adapters": {"novel": {"accuracy": 0.45, "n": 20, "chance": 0.2},
                 "by_hops": {"oracle": {"1": {"accuracy": 0.7, "n": 10, "chance": 0.15}}}},
}


def test_metric_paths_read_the_right_numbers():
    assert metric(RESULT, "closed_book.seen") == 0.25
    assert metric(RESULT, "open_book.novel") == 0.5
    assert metric(RESULT, "retrieved.seen.hops2") == 0.6
    assert metric(RESULT, "counterfactual") == 0.4
    assert metric(RESULT, "memorisation_ratio") == 0.3
    assert metric(RESULT, "probe.seen") == pytest.approx(0.2)
    assert metric(RESULT, "relearn.rest") == pytest.approx(0.15)
    assert metric(RESULT, "adapters.novel") == 0.45
    assert metric(RESULT, "adapters.oracle.hops1") == 0.7 and chance(RESULT, "adapters.oracle.hops1") == 0.15
    assert math.isnan(metric(RESULT, "adapters.novel.hops1"))  # the adapters' own by_hops, not the result's
    assert math.isnan(metric(RESULT, "closed_book.novel")) and math.isnan(metric(RESULT, "retrieved.seen.hops3"))
    assert side_value("chance:retrieved.seen.hops2", {"a": RESULT}) == 0.25
    assert side_value("a:closed_book.seen", {"a": RESULT}) == 0.25 and side_value(0.7, {}) == 0.7


def test_criteria_are_judged_on_means_and_per_seed():
    worse = {**RESULT, "closed_book": {"seen": {"accuracy": 0.05, "n": 40, "chance": 0.125}}}
    criteria = [Criterion(claim="above chance", left="m:closed_book.seen", op=">", right="chance:closed_book.seen"),
                Criterion(claim="near 0.3", left="m:closed_book.seen", op="~", right=0.3),
                Criterion(claim="missing", left="m:closed_book.novel", op=">", right=0.1)]
    above, near, missing = judge(criteria, [{"m": RESULT}, {"m": worse}])
    assert above["left_value"] == pytest.approx(0.15) and above["right_value"] == 0.125
    assert above["met"] is True and above["seeds_held"] == 1 and above["seeds"] == 2
    assert near["met"] is False  # |0.15 - 0.3| > 0.05
    assert missing["met"] is None and missing["seeds_held"] == 0


def test_p_values_of_the_criteria_respect_the_seeds():
    # a one-sided one-sample t-test of the per-seed differences (the seed is the unit, not the question)
    diffs = [0.10, 0.05, 0.20, 0.12]
    assert p_value(">", diffs) == pytest.approx(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)
    assert p_value("<=", diffs) == pytest.approx(stats.ttest_1samp(diffs, 0.0, alternative="less").pvalue)
    assert math.isnan(p_value("~", diffs)) and math.isnan(p_value(">", [0.1, 0.2]))  # n < 3: no test
    assert math.isnan(p_value(">", [0.1, 0.1, 0.1])) and p_value(">", [0.1, math.nan, 0.3, 0.2]) < 0.05

    def seed(accuracy: float) -> dict:
        return {"m": {"closed_book": {"seen": {"accuracy": accuracy, "n": 40, "chance": 0.125}}},
                "n": {"closed_book": {"seen": {"accuracy": 0.2, "n": 40, "chance": 0.125}}}}

    criteria = [Criterion(claim="c", left="m:closed_book.seen", op=">", right=0.1),
                Criterion(claim="d", left="m:closed_book.seen", op=">", right="n:closed_book.seen")]
    # two seeds, however many questions: no test
    two = judge(criteria, [seed(0.5), seed(0.6)])
    assert all(math.isnan(c["p_value"]) for c in two) and two[0]["questions"] == 80
    assert tables({"summary": {}, "params": {}, "chance": {}, "by_hops": {},
                   "criteria": two})[-1][1][0][-1] == "n < 3: no test (held in 2 of 2 seeds)"
    four = judge(criteria, [seed(a) for a in (0.25, 0.3, 0.2, 0.35)])
    raw = [stats.ttest_1samp([a - r for a in (0.25, 0.3, 0.2, 0.35)], 0.0, alternative="greater").pvalue
           for r in (0.1, 0.2)]
    assert [c["p_value"] for c in four] == pytest.approx(raw)
    assert [c["p_holm"] for c in four] == pytest.approx(holm(raw))


def test_a_criterion_is_met_not_met_or_not_shown_by_its_interval_over_seeds():
    """met: Holm p < 0.05 (for "~": the 95% interval of the difference inside ±0.05); not met: the interval
    wholly on the wrong side; not shown: between. The interval is the paired t-interval over seeds."""
    def seeds(*accuracies: float) -> list[dict]:
        return [{"m": {"closed_book": {"seen": {"accuracy": a, "n": 40, "chance": 0.2}}}} for a in accuracies]

    def one(op: str, right: float, *accuracies: float) -> dict:
        return judge([Criterion(claim="c", left="m:closed_book.seen", op=op, right=right)], seeds(*accuracies))[0]

    clear = one(">", 0.5, 0.80, 0.85, 0.90)
    diffs = [0.30, 0.35, 0.40]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert clear["diff"] == pytest.approx(0.35)
    assert (clear["ci_low"], clear["ci_high"]) == pytest.approx((0.35 - half, 0.35 + half))
    assert clear["verdict"] == "met"
    assert one(">", 0.5, 0.40, 0.42, 0.38)["verdict"] == "not met"      # wholly below
    assert one(">", 0.5, 0.52, 0.40, 0.65)["verdict"] == "not shown"    # the mean above, the interval across
    assert one(">=", 0.5, 0.45, 0.49, 0.60)["verdict"] == "not shown"   # the mean below, the interval across
    assert one("<", 0.5, 0.20, 0.25, 0.30)["verdict"] == "met"
    # what a "not shown" could have shown: the true mean difference the one-sided t-test at 0.05 finds with
    # 80% power at 3 seeds, from the spread of the differences (scipy's noncentral t, solved here apart)
    from scipy import optimize

    spread = statistics.stdev([0.02, -0.10, 0.15])
    crit = stats.t.ppf(0.95, 2)
    mde = optimize.brentq(lambda d: stats.nct.sf(crit, 2, d / spread * math.sqrt(3)) - 0.8, 1e-6, 10)
    assert one(">", 0.5, 0.52, 0.40, 0.65)["detectable"] == pytest.approx(mde, rel=1e-3)
    assert math.isnan(one("~", 0.2, 0.20, 0.21, 0.19)["detectable"])
    assert one("~", 0.2, 0.20, 0.21, 0.19)["verdict"] == "met"          # interval inside ±0.05
    assert one("~", 0.2, 0.50, 0.52, 0.48)["verdict"] == "not met"      # wholly outside
    assert one("~", 0.2, 0.10, 0.30, 0.20)["verdict"] == "not shown"
    assert one(">", 0.5, 0.6, 0.6, 0.6)["verdict"] == "met"             # no spread: the one difference decides
    row = tables({"summary": {}, "params": {}, "chance": {}, "by_hops": {}, "criteria": [clear]})[-1][1][0]
    assert row[3] == f"+0.350 [{0.35 - half:+.3f}, {0.35 + half:+.3f}]" and row[4] == f"{clear['detectable']:.3f}"
    assert row[5].startswith("met (held in 3 of 3")


def spec_dict(**changes) -> dict:
    raw = {"kind": "knowledge", "base": "tiny", "world": {"people": 8, "novel_people": 4},
           "arms": [{"name": "teacher"}, {"name": "naive", "data": "stories"},
                    {"name": "student", "teacher": "teacher", "naive": "naive"}],
           "criteria": [{"claim": "c", "left": "student:closed_book.seen", "op": "<", "right": 0.5}]}
    return {**raw, **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"arms": [{"name": "s", "teacher": "t", "naive": "n"}]}, "teacher 't' must be an arm listed before it"),
    ({"criteria": [{"claim": "c", "left": "ghost:closed_book.seen", "op": ">", "right": 0}]}, "names no arm"),
    ({"world": {"seed": 3}}, "world.seed is set per experiment seed"),
    ({"world": {"people": 2}}, "people"),
    ({"arms": [{"name": "a", "method": "forget-all"}]}, "method"),
    ({"arms": [{"name": "a"}, {"name": "b", "data": "stories"}, {"name": "a", "data": "stories"}]},
     "x.toml: duplicate arm names: a$"),
    ({"tokens": "words", "arms": [{"name": "t"}, {"name": "n", "data": "reader", "reader": {"steps": True}},
                                  {"name": "s", "teacher": "t", "naive": "n"}]},
     "arm 's': a reader with steps as teacher or naive model"),
    ({"tokens": "words", "arms": [{"name": "t", "data": "reader", "reader": {"steps": "true"}}, {"name": "n"},
                                  {"name": "s", "teacher": "t", "naive": "n"}]},
     "arm 's': a reader with steps as teacher or naive model"),
    ({"arms": [{"name": "a", "data": "reader", "reader": {"restate": True}}], "criteria": []},
     "arm 'a': reader restate needs steps = true"),
    ({"arms": [{"name": "a", "data": "reader", "reader": {"steps": "maybe"}}], "criteria": []},
     "arm 'a': reader setting steps: Input should be a valid boolean"),
])
def test_bad_specs_fail_with_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_spec(spec_dict(**changes), "x.toml")
    assert "\n" not in str(e.value)


def test_builtin_knowledge_experiments_validate(tmp_path):
    names = sorted(n for n in builtin_experiments() if n.startswith("knowledge"))
    assert names == ["knowledge", "knowledge-adapters", "knowledge-depth", "knowledge-distill", "knowledge-preloaded",
                     "knowledge-retrieval", "knowledge-steps"]
    specs = {name: parse_spec(*read_experiment(name)[1:]) for name in names}
    # the adapters alone: knowledge-retrieval's world, questions and closed-1x arm, written out again
    alone, retrieval = specs["knowledge-adapters"], specs["knowledge-retrieval"]
    assert (alone.world, alone.per_group, alone.group_size) == (retrieval.world, retrieval.per_group,
                                                                retrieval.group_size)
    assert alone.arms == [arm for arm in retrieval.arms if arm.name == "closed-1x"]
    for name, spec in specs.items():
        assert spec.criteria and spec.base == "reader" and spec.tokens == "words" and spec.seeds >= 3, name
        for arm in spec.arms:
            if not arm.distilled:
                cfg = arm_config(spec, arm, tmp_path, 1, [])
                assert cfg.train.seed == 1 and cfg.model.width in ((128, 96, 64) if name == "knowledge-depth" else
                                                                   (128, 256))
    # `knowledge` is the three together: each arm once, every criterion, one world
    whole = specs["knowledge"]
    assert [a.name for a in whole.arms] == ["reader", "closed-1x", "closed-4x", "fixed", "student", "gradient-ascent",
                                            "npo"]
    assert whole.criteria == [c for n in ("knowledge-retrieval", "knowledge-preloaded", "knowledge-distill")
                              for c in specs[n].criteria]
    assert whole.world == specs["knowledge-distill"].world
    # the steps reader beside knowledge-preloaded's reader: its world, and that reader as it is
    steps, preloaded = specs["knowledge-steps"], specs["knowledge-preloaded"]
    assert steps.world == preloaded.world and steps.arms[0] == preloaded.arms[0].model_copy(update={"relearn_steps": 0})
    assert [a.reader for a in steps.arms[1:]] == [{"max_hops": 2, "steps": True},
                                                  {"max_hops": 2, "steps": True, "restate": True}]
    # the deeper readers beside that reader: its world, and the blocks traded for width
    depth = specs["knowledge-depth"]
    assert depth.world == preloaded.world and depth.arms[0] == steps.arms[0]
    assert [(c.model.depth, c.model.width, c.model.heads) for c in
            (arm_config(depth, arm, tmp_path, 0, []) for arm in depth.arms)] == [(3, 128, 4), (6, 96, 4), (12, 64, 4)]


def test_distilled_arms_wait_for_their_teacher_and_naive_model():
    spec = parse_spec(spec_dict(arms=[
        {"name": "t"}, {"name": "n", "data": "stories"}, {"name": "s", "teacher": "t", "naive": "n"},
        {"name": "other", "data": "stories"}, {"name": "s2", "teacher": "s", "naive": "n"},
        {"name": "s3", "teacher": "t", "naive": "other"}], criteria=[]), "x.toml")
    assert [[a.name for a in wave] for wave in waves(spec.arms)] == [["t", "n", "other"], ["s", "s3"], ["s2"]]
    assert waves(spec.arms[:2]) == [spec.arms[:2]] and waves([]) == []
    # a bug in one arm of one seed: its distilled arms wait on that seed only, the other seed goes on
    asked = []

    def run_wave(items):
        asked.append(items)
        return [{"failed": "boom"} if (seed, name) == (1, "other") else {"result": f"{name}{seed}"}
                for seed, name in items]

    per_seed, failed = in_waves(spec, 2, run_wave)
    assert asked == [[(0, "t"), (0, "n"), (0, "other"), (1, "t"), (1, "n"), (1, "other")],
                     [(0, "s"), (0, "s3"), (1, "s")], [(0, "s2"), (1, "s2")]]
    assert failed == {(1, "other"): "boom", (1, "s3"): "not distilled: other failed"}
    assert per_seed == [{n: f"{n}0" for n in ("t", "n", "other", "s", "s3", "s2")},
                        {n: f"{n}1" for n in ("t", "n", "s", "s2")}]


@pytest.mark.parametrize(("raw", "message"), [
    ({"include": ["knowledge-retrieval"], "arms": [{"name": "x"}]}, "arms come from the included experiments"),
    ({"include": ["knowledge-retrieval", "smoke"]}, "'smoke' is not a knowledge experiment"),
    ({"include": ["knowledge-retrieval", "ghost"]}, "ghost"),
    ({"include": "knowledge-retrieval"}, "include must be a list"),
])
def test_bad_includes_fail_with_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_spec({"kind": "knowledge", **raw}, "x.toml")
    assert "\n" not in str(e.value)


def test_included_experiments_must_agree(tmp_path):
    _, raw, _ = read_experiment("knowledge-preloaded")
    other = tmp_path / "other.toml"  # the shared settings of knowledge-preloaded, but a world of 12 people
    other.write_text('kind = "knowledge"\nbase = "reader"\ntokens = "words"\nper_group = 100\ngroup_size = 8\n'
                     '[world]\npeople = 12\n[[arms]]\nname = "reader"\ndata = "reader"\n')
    with pytest.raises(ConfigError, match="differ in world"):
        parse_spec({"kind": "knowledge", "include": ["knowledge-preloaded", str(other)]}, "x.toml")
    other.write_text(other.read_text().replace("people = 12", "\n".join(f"{k} = {v}" for k, v in raw["world"].items()))
                     .replace('data = "reader"', 'data = "reader"\nreader = { max_hops = 1 }'))
    with pytest.raises(ConfigError, match="arm 'reader' differs"):
        parse_spec({"kind": "knowledge", "include": ["knowledge-preloaded", str(other)]}, "x.toml")
    with pytest.raises(ConfigError, match="unknown reader settings hops"):
        parse_spec(spec_dict(arms=[{"name": "r", "data": "reader", "reader": {"hops": 2}}], criteria=[]), "x.toml")
    with pytest.raises(ConfigError, match='reader settings are for data = "reader"'):
        parse_spec(spec_dict(arms=[{"name": "r", "reader": {"max_hops": 2}}], criteria=[]), "x.toml")


TINY = """
description = "tiny knowledge experiment"
kind = "knowledge"
base = "tiny"
seeds = 1
per_group = 3
group_size = 4
overrides = ["model.context=384", "data.tokenizer=byte", "data.val_fraction=0.05", "train.steps=3",
             "train.eval_every=0", "train.checkpoint_every=0", "logging.probe_every=0", "logging.tensorboard=false",
             "data.max_bytes=200000"]
[world]
people = 8
novel_people = 4
hops = 2
questions_per_hop = 3
preloaded = 40
[[arms]]
name = "closed"
adapters = 2
[[arms]]
name = "reader"
data = "preloaded"
overrides = ["data.answer_only=true"]
[[arms]]
name = "naive"
data = "stories"
relearn_steps = 2
[[arms]]
name = "student"
teacher = "closed"
naive = "naive"
steps = 2
batch_size = 2
relearn_steps = 2
[[criteria]]
claim = "reader reads"
left = "reader:retrieved.seen"
op = ">="
right = "closed:closed_book.seen"
"""


def test_a_tiny_knowledge_experiment_runs_reuses_and_reports(tmp_path, capsys):
    spec = tmp_path / "tiny-knowledge.toml"
    spec.write_text(TINY)
    out = tmp_path / "out"
    results = run_experiment(str(spec), out)
    seed = out / "seed-0"
    assert (seed / "world" / "world.json").is_file()
    for arm in ("closed", "reader", "naive", "student"):
        assert (seed / arm / "facts-eval.json").is_file(), arm
    assert (seed / "student" / "distill.json").is_file() and (seed / "student" / "relearn.json").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["criteria"][0]["claim"] == "reader reads" and saved["seeds"] == 1
    for arm, row in results["summary"].items():
        for path, stat in row.items():
            if not math.isnan(stat["mean"]) and path not in ("probe.seen", "relearn.rest"):
                assert 0.0 <= stat["mean"] <= 1.0, (arm, path)
    evaluated = json.loads((seed / "reader" / "facts-eval.json").read_text())
    assert results["summary"]["reader"]["retrieved.seen"]["mean"] == evaluated["retrieved"]["seen"]["accuracy"]
    assert not math.isnan(results["summary"]["closed"]["adapters.novel"]["mean"])
    assert not math.isnan(results["summary"]["student"]["relearn.rest"]["mean"])
    c = results["criteria"][0]
    assert c["met"] == (c["left_value"] >= c["right_value"])
    assert "<img" in (out / "report.html").read_text() and "| arm |" in (out / "results.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in seed.rglob("*.safetensors")}
    again = run_experiment(str(spec), out)  # everything reused: nothing trained, the same numbers
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("*.safetensors")} == stamps
    assert again["summary"] == results["summary"]

    def trained() -> dict:
        return {p: p.stat().st_mtime_ns for p in seed.glob("*/checkpoints/*.safetensors")}

    before = trained()
    spec.write_text(TINY.replace("per_group = 3", "per_group = 1"))  # fewer questions: evaluated again, not trained
    fewer = run_experiment(str(spec), out)
    assert trained() == before
    for arm in ("closed", "reader", "naive", "student"):
        assert json.loads((seed / arm / "facts-eval.json").read_text())["settings"]["per_group"] == 1, arm
    evaluated = json.loads((seed / "reader" / "facts-eval.json").read_text())
    assert fewer["summary"]["reader"]["retrieved.seen"]["mean"] == evaluated["retrieved"]["seen"]["accuracy"]
    assert evaluated["retrieved"]["seen"]["n"] <= 2  # one question per hop count (2 hops)

    # a distillation or a relearning test of other settings: refused, naming them (both were reused as they were)
    base = TINY.replace("per_group = 3", "per_group = 1")
    student = base.split('name = "student"')[1]
    for changed, words in ((student.replace("steps = 2", "steps = 6", 1), "steps 2 then, 6 now"),
                           (student.replace("relearn_steps = 2", "relearn_steps = 5"),
                            "relearn.json was made with relearn_steps=2, seed 0; this experiment asks "
                            "relearn_steps=5")):
        spec.write_text(base.split('name = "student"')[0] + 'name = "student"' + changed)
        with pytest.raises(VSLMError, match=words):
            run_experiment(str(spec), out)
    assert json.loads((seed / "student" / "distill.json").read_text())["steps"] == 2

    capsys.readouterr()
    assert main(["experiment", str(spec), "--out", str(tmp_path / "bad"), "--seeds", "0"]) != 0
    assert "at least 1 seed" in capsys.readouterr().err


READER_TINY = """
description = "tiny knowledge experiment on the reader recipe"
kind = "knowledge"
base = "reader"
tokens = "words"
seeds = 2
per_group = 3
group_size = 4
overrides = ["train.steps=4", "model.depth=1", "model.width=32", "train.eval_windows=4", "logging.log_every=2"]
[world]
people = 8
novel_people = 4
hops = 2
questions_per_hop = 3
preloaded = 40
preloaded_hops = 2
[[arms]]
name = "reader"
data = "reader"
reader = { max_hops = 1, curve_every = 2, curve_questions = 2 }
relearn_steps = 2
[[arms]]
name = "closed"
adapters = 2
[[arms]]
name = "fixed"
data = "fixed"
overrides = ["data.answer_only=true"]
[[arms]]
name = "student"
teacher = "fixed"
naive = "reader"
steps = 2
batch_size = 2
[[criteria]]
claim = "reader reads"
left = "reader:open_book.novel"
op = ">="
right = "fixed:open_book.novel"
"""


def test_a_reader_based_experiment_runs_its_seeds_in_workers_and_reuses_them(tmp_path, capsys):
    from vslm.knowledge.reader import reader_tokenizer
    from vslm.train.run_folder import load_run

    spec = tmp_path / "reader-knowledge.toml"
    spec.write_text(READER_TINY)
    out = tmp_path / "out"
    # the dry run: each arm's model and budget, checked as the run checks, nothing written
    assert main(["experiment", str(spec), "--out", str(out), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not out.exists() and plan["kind"] == "knowledge" and plan["seeds"] == 2
    arms = {r["arm"]: r for r in plan["arms"]}
    assert list(arms) == ["reader", "closed", "fixed", "student"] and all(not r["seeds_trained"] for r in arms.values())
    assert arms["student"]["params"] == arms["fixed"]["params"]  # a copy of its teacher
    assert (arms["student"]["steps"], arms["student"]["rows_per_step"]) == (2, 4 * 2)  # four groups at most
    assert arms["closed"]["also"] == ["1 LoRA adapter x 2 steps"] and arms["reader"]["also"] == ["relearning 2 steps"]
    assert plan["tokens_left"] == 2 * sum(r["tokens"] for r in arms.values())
    assert main(["experiment", str(spec), "--out", str(out), "--jobs", "2"]) == 0
    assert "arms x seeds on 2 worker processes" in capsys.readouterr().out
    # what the dry run counted is what trained: parameters, FLOPs and tokens of every trained arm
    for name in ("reader", "closed", "fixed"):
        summary = json.loads((out / "seed-0" / name / "summary.json").read_text())
        last = [json.loads(line) for line in (out / "seed-0" / name / "metrics.jsonl").read_text().splitlines()][-1]
        assert (summary["params"], summary["flops_per_token"], last["tokens"]) == (
            arms[name]["params"], arms[name]["flops_per_token"], arms[name]["tokens"]), name
    assert main(["experiment", str(spec), "--out", str(out), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert all(r["seeds_done"] == [0, 1] for r in plan["arms"]) and plan["tokens_left"] == 0
    spec.write_text(READER_TINY.replace("per_group = 3", "per_group = 2"))  # trained, to be evaluated again
    assert main(["experiment", str(spec), "--out", str(out), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert all(r["seeds_trained"] == [0, 1] and r["seeds_done"] == [] for r in plan["arms"]), plan
    spec.write_text(READER_TINY)
    words = reader_tokenizer().to_dict()
    for seed in (0, 1):
        reader = json.loads((out / f"seed-{seed}" / "reader" / "reader.json").read_text())
        assert reader["settings"]["max_hops"] == 1 and reader["steps"] == 4
        for arm in ("reader", "closed", "fixed", "student"):  # one vocabulary: the word tokens, in every arm
            assert json.loads((out / f"seed-{seed}" / arm / "facts-eval.json").read_text())["open_book"], arm
            assert load_run(out / f"seed-{seed}" / arm)[2].to_dict() == words, arm
    first = json.loads((out / "results.json").read_text())
    assert first["seeds"] == 2 and first["criteria"][0]["seeds"] == 2

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert main(["experiment", str(spec), "--out", str(out), "--jobs", "1"]) == 0  # one process: all reused
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
    assert json.loads((out / "results.json").read_text())["summary"] == first["summary"]
    out.rename(tmp_path / "moved")  # the experiment's folder moved, its worlds with it: reused there
    assert main(["experiment", str(spec), "--out", str(tmp_path / "moved"), "--jobs", "1"]) == 0
    assert {out / p.relative_to(tmp_path / "moved"): p.stat().st_mtime_ns
            for p in (tmp_path / "moved").rglob("*.safetensors")} == stamps
    (tmp_path / "moved").rename(out)
    # a quick look with fewer seeds does not replace the 2-seed results
    capsys.readouterr()
    results = (out / "results.json").read_bytes()
    assert main(["experiment", str(spec), "--out", str(out), "--seeds", "1"]) == 2
    assert "summarizes 2 seeds and this command trains 1" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == results

    # the same reader folder asked with other reader settings is refused, not mixed
    spec.write_text(READER_TINY.replace("max_hops = 1,", "max_hops = 2,"))
    assert main(["experiment", str(spec), "--out", str(out), "--jobs", "1"]) != 0
    assert "holds a reader of other settings" in capsys.readouterr().err
    # a reading curve whose points fall between logged steps: refused before anything trains
    spec.write_text(READER_TINY.replace(', "logging.log_every=2"', ""))
    assert main(["experiment", str(spec), "--out", str(tmp_path / "curve"), "--jobs", "1"]) == 2
    assert "--curve-every 2: the reading curve is measured at logged steps" in capsys.readouterr().err
    assert not (tmp_path / "curve").exists()


def test_a_world_folder_is_reused_only_with_the_experiments_settings(tmp_path):
    """A world written before test_questions_per_hop existed (no such key) is the same world; one of
    other settings, or a world.json this vslm cannot read, is refused and left as it was."""
    world = {"people": 8, "novel_people": 4, "hops": 2, "questions_per_hop": 3}
    spec = parse_spec({"kind": "knowledge", "world": world, "arms": [{"name": "reader", "data": "reader"}]}, "test")
    folder = make_world(spec, 1, tmp_path / "w")
    written = json.loads((folder / "world.json").read_text())
    assert "test_questions_per_hop" not in written["settings"]
    assert make_world(spec, 1, folder) == folder
    with pytest.raises(VSLMError, match="holds a world of other settings than this experiment's"):
        make_world(spec, 2, folder)
    (folder / "world.json").write_text("{not json")
    with pytest.raises(VSLMError, match="holds a world of other settings"):
        make_world(spec, 1, folder)
    assert (folder / "world.json").read_text() == "{not json"
