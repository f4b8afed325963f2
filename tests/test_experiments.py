import json
import math
import re
import shutil
import statistics

import pytest
from scipy import stats

import vslm.lab.runner as runner
from conftest import files_in, tiny_overrides
from vslm.cli import main
from vslm.errors import ConfigError, VSLMError
from vslm.lab.experiments import (
    OWN_TEXT,
    builtin_experiments,
    load_experiment,
    plan_experiment,
    read_experiment,
    run_experiment,
)
from vslm.train.checkpoint import checkpoint_name

# 4 steps, checkpoints at 2 and 4 (so a run can be cut back to unfinished), a 2-batch validation set
COMMON = ["train.steps=4", "train.eval_every=0", "train.eval_windows=16", "train.checkpoint_every=2",
          "train.snapshots=false", "data.max_bytes=200000", "logging.progress=false"]


def write_experiment(tmp_path, wide_overrides=("model.width=48",), extra="", seeds=2) -> str:
    path = tmp_path / "exp.toml"
    path.write_text(f'description = "narrow against wide"\nbase = "tiny"\nseeds = {seeds}\n'
                    f'overrides = {COMMON!r}\n{extra}[[variants]]\nname = "narrow"\n'
                    f'[[variants]]\nname = "wide"\noverrides = {list(wide_overrides)!r}\n')
    return str(path)


def as_written(summary: dict) -> dict:
    """The summary as results.json holds it: JSON has no NaN, an undefined number is null."""
    return json.loads(json.dumps(summary).replace("NaN", "null"))


def last_metrics(folder) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


class CountingTrainer(runner.Trainer):
    calls: list[tuple[str, bool]] = []

    def __init__(self, cfg, run_dir, resume=False, corpus=None):
        CountingTrainer.calls.append((f"{run_dir.parent.name}/{run_dir.name}", resume))
        super().__init__(cfg, run_dir, resume=resume, corpus=corpus)


def test_summary_is_mean_std_and_welch_of_the_runs_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    spec, out = write_experiment(tmp_path), tmp_path / "out"
    summary = run_experiment(spec, out)
    report = json.loads((out / "results.json").read_text())
    assert report["summary"] == as_written(summary) and [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("narrow", 0), ("narrow", 1), ("wide", 0), ("wide", 1)]
    losses = {v: [last_metrics(out / v / f"seed-{s}")["val_loss"] for s in (0, 1)] for v in ("narrow", "wide")}
    bpbs = {v: [last_metrics(out / v / f"seed-{s}")["val_bpb"] for s in (0, 1)] for v in ("narrow", "wide")}
    assert losses["narrow"][0] != losses["narrow"][1]  # the seeds differ
    # what each variant is, beside its numbers (the report named the variants only)
    assert report["variants_table"]["rows"] == [["(every variant)", "base tiny " + " ".join(COMMON)],
                                                ["narrow", "(the experiment's alone)"], ["wide", "model.width=48"]]
    assert "| wide | model.width=48 |" in (out / "results.md").read_text()
    assert "What each variant sets" in (out / "report.html").read_text()
    for v in ("narrow", "wide"):
        s = summary[v]
        assert s["tokens"] == 4 * 8 * 32
        assert s["val_loss_mean"] == pytest.approx((losses[v][0] + losses[v][1]) / 2, rel=1e-12)
        assert s["val_loss_std"] == pytest.approx(abs(losses[v][0] - losses[v][1]) / math.sqrt(2), rel=1e-9)
        assert s["val_bpb_mean"] == pytest.approx(statistics.mean(bpbs[v]), rel=1e-12)
        assert s["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs[v]), rel=1e-12)
    # a model field changed: the seeds pair; 2 seeds give a paired interval but no test (vslm.lab.stats)
    diffs = [w - n for w, n in zip(losses["wide"], losses["narrow"], strict=True)]
    half = stats.t.ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
    assert summary["wide"]["test"] == "paired" and summary["wide"]["seeds"] == 2
    assert summary["wide"]["diff_vs_baseline"] == pytest.approx(statistics.mean(diffs), rel=1e-9)
    assert summary["wide"]["ci_high"] == pytest.approx(statistics.mean(diffs) + half, rel=1e-9)
    assert math.isnan(summary["wide"]["p_value"]) and math.isnan(summary["wide"]["p_holm"])
    assert math.isnan(summary["narrow"]["p_value"]) and summary["narrow"]["verdict"] == "baseline"
    assert summary["wide"]["verdict"] == "n < 3: no test"
    assert report["table"]["rows"][1][-1] == "n < 3: no test" and "| p (Holm) |" in (out / "results.md").read_text()
    assert "<th>p (Holm)</th>" in (out / "report.html").read_text()
    assert summary["wide"]["params"] > summary["narrow"]["params"] > 0
    assert summary["wide"]["flops_per_token"] > summary["narrow"]["flops_per_token"]
    assert "| narrow |" in (out / "results.md").read_text() and f"vslm experiment {spec}" in report["command"]

    # an interrupted experiment: one run never started, one cut back to its step-2 checkpoint
    shutil.rmtree(out / "wide" / "seed-1")
    (out / "narrow" / "seed-0" / "checkpoints" / checkpoint_name(4)).unlink()
    kept = (out / "narrow" / "seed-1" / "metrics.jsonl").stat().st_mtime_ns
    monkeypatch.setattr(runner, "Trainer", CountingTrainer)
    again = run_experiment(spec, out)
    assert CountingTrainer.calls == [("narrow/seed-0", True), ("wide/seed-1", False)]
    assert (out / "narrow" / "seed-1" / "metrics.jsonl").stat().st_mtime_ns == kept
    # exact resume, same seeds; params and FLOPs of reused runs recomputed to the trainer's values
    assert as_written(again) == as_written(summary)
    with pytest.raises(VSLMError, match=r"narrow/seed-0 holds a run with other settings than this experiment's "
                                        r"\(train.lr: 0.003 there, 0.002 here\)"):
        run_experiment(spec, out, extra_overrides=["train.lr=0.002"])  # never mixes runs of different settings
    # what a run records is its settings too: the tables would show the old probes under the new command
    with pytest.raises(VSLMError, match=r"holds a run with other settings than this experiment's "
                                        r"\(logging.induction_length: null there, 4 here\)"):
        run_experiment(spec, out, extra_overrides=["logging.induction_length=4"])
    shown = ["logging.tensorboard=true", "logging.samples=2", "train.threads=1", "train.keep_last=3"]
    assert as_written(run_experiment(spec, out, extra_overrides=shown)) == as_written(summary)  # how, not what


def test_unequal_token_budgets_fail_before_any_run_folder(tmp_path):
    spec = write_experiment(tmp_path, wide_overrides=("train.batch_size=16",))
    with pytest.raises(ConfigError, match=r"unequal token budgets .*: narrow 1,024, wide 2,048$"):
        run_experiment(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a word meant for every run, typed after a --sweep choice, is that choice's: said where it shows
    spec = write_experiment(tmp_path)
    with pytest.raises(ConfigError, match=r"unequal token budgets .*put other overrides before the first --sweep$"):
        run_experiment(spec, tmp_path / "out", sweep=["train.lr=3e-3 train.steps=8", "train.lr=6e-3"])


def test_a_typo_in_one_variant_fails_before_training(tmp_path):
    spec = write_experiment(tmp_path, wide_overrides=("model.widht=48",))
    typo = r"^variant 'wide': config error: unknown field 'model.widht' \(did you mean model.width\?\)$"
    with pytest.raises(ConfigError, match=typo):
        run_experiment(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("wide", "extra", "cli", "error"), [
    (("model.width=48",), 'corpora = ["stories", "tinystorie"]\n', (),
     r"^corpus 'tinystorie': unknown data source 'tinystorie' \(did you mean tinystories or stories\?\)"),
    (("data.source=wikitext-2:tset",), "", (),
     r"^variant 'wide': data source 'wikitext-2:tset': no split 'tset' \(did you mean wikitext-2:test\?\)"),
    (("data.source=emptyfolder",), "", (), r"^variant 'wide': data folder emptyfolder holds no text"),
    (("model.width=48",), 'corpora = ["stories", "stories"]\n', (),
     r"exp.toml: corpora stories would share a folder in --out"),
    (("model.width=48",), "", ("model.widht=48",),
     r"^the command line's overrides: config error: unknown field 'model.widht'"),
    ((), "", (), r"^variants 'narrow' and 'wide' train the same configs$"),
    (("model.width=48",), "", ("model.width=32",), r"^variants 'narrow' and 'wide' train the same configs: the "
     r"command line's override model.width=32 sets what they differ on$")])
def test_what_every_run_would_meet_is_refused_before_the_first_trains(tmp_path, monkeypatch, wide, extra, cli, error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptyfolder").mkdir()
    spec = write_experiment(tmp_path, wide_overrides=wide, extra=extra)  # none trains: nothing is read or written
    with pytest.raises(VSLMError, match=error):
        run_experiment(spec, tmp_path / "out", extra_overrides=cli)
    assert not (tmp_path / "out").exists()


def test_a_shared_override_may_apply_to_some_variants_only_and_a_fault_names_the_variant(tmp_path):
    path = tmp_path / "exp.toml"  # gamma matters to the power variant only: not an idle setting here
    path.write_text('base = "tiny"\nseeds = 1\noverrides = ["model.attention_gamma=0.5"]\n[[variants]]\n'
                    'name = "softmax"\n[[variants]]\nname = "power"\noverrides = ["model.attention=power"]\n')
    _, spec = load_experiment(str(path))
    plan = plan_experiment(spec, 1)
    assert plan["power"][""][0].model.attention_gamma == 0.5
    # a shared override that only one variant cannot take: that variant named, and where the fault lies
    path.write_text('base = "tiny"\nseeds = 1\noverrides = ["model.heads=3"]\n[[variants]]\nname = "narrow"\n'
                    '[[variants]]\nname = "wide"\noverrides = ["model.width=48"]\n')
    with pytest.raises(ConfigError, match=r"^variant 'narrow', with the experiment's overrides: config error: "
                                          r"model: width 32 is not divisible by heads 3$"):
        plan_experiment(load_experiment(str(path))[1], 1)


def test_a_sweep_made_the_same_by_an_override_is_refused(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('base = "tiny"\nseeds = 1\n[[variants]]\nname = "w"\n'
                    'sweep = ["model.width=32", "model.width=64"]\n')
    _, spec = load_experiment(str(path))
    assert len(plan_experiment(spec, 1)["w"]) == 2
    with pytest.raises(ConfigError, match=r"^the command line's override model.width=48 sets model.width, which the "
                                          r"sweep of variant 'w' sets: it would win over every choice$"):
        plan_experiment(spec, 1, ["model.width=48"])
    path.write_text('base = "tiny"\nseeds = 1\n[[variants]]\nname = "w"\n'
                    'sweep = ["train.lr=1e-3", "train.lr=0.001"]\n')  # the same lr, written twice
    with pytest.raises(ConfigError, match=r"^variant 'w': its sweep choices train the same configs$"):
        plan_experiment(load_experiment(str(path))[1], 1)


def test_a_fault_in_the_shared_overrides_is_not_blamed_on_a_variant(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('base = "tiny"\noverrides = ["train.stpes=3"]\n[[variants]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"^the experiment's overrides: config error: unknown field 'train.stpes'"):
        run_experiment(str(path), tmp_path / "out")
    path.write_text('base = "tny"\n[[variants]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"^the experiment's base 'tny': "):
        run_experiment(str(path), tmp_path / "out")


@pytest.mark.parametrize("change, problem", [
    ({"extra": "steps = 3\n"}, r"unknown field 'steps' \(did you mean sweep or seeds\?\)"),
    ({"seeds": 0}, "seeds: Input should be greater than or equal to 1, got 0"),
    ({"extra": 'sweep = ["train.lr=1e-3 train.lr=2e-3"]\n'}, r"sweep: the sweep choice "
     r"'train.lr=1e-3 train.lr=2e-3' sets train.lr twice: give each value its own choice .*"),
    ({"extra": 'sweep = ["data.source=x/y.txt", "data.source=x_y.txt"]\n'}, r"sweep: the sweep choices "
     r"'data.source=x/y.txt' and 'data.source=x_y.txt' would share the run folder data.source=x_y.txt .*"),
])
def test_bad_experiment_files_name_the_problem(tmp_path, change, problem):
    path = write_experiment(tmp_path, **change)
    with pytest.raises(ConfigError, match=f"exp.toml: {problem}$"):
        load_experiment(path)


def test_missing_and_duplicate_variants(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('base = "tiny"\n')
    with pytest.raises(ConfigError, match="bad.toml: variants: missing$"):
        load_experiment(str(path))
    path.write_text('base = "tiny"\n[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="bad.toml: duplicate variant names: a$"):
        load_experiment(str(path))
    name, spec = load_experiment(write_experiment(tmp_path))
    with pytest.raises(ConfigError, match="at least 1 seed, got 0"):
        plan_experiment(spec, 0)


def test_every_builtin_experiment_validates_with_equal_budgets():
    assert "smoke" in builtin_experiments()
    for name in builtin_experiments():
        if read_experiment(name)[1].get("kind") == "knowledge":
            continue  # tests/test_knowledge_experiment.py
        _, spec = load_experiment(name)
        plan = plan_experiment(spec, spec.seeds)
        assert all(cfg.train.seed == seed for choices in plan.values() for cfgs in choices.values()
                   for seed, cfg in enumerate(cfgs))


def test_cli_lists_and_runs_with_one_seed(tmp_path, capsys):
    assert main(["experiment", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"smoke", "arch-sharing", "arch-attention"} <= set(listed)
    spec = write_experiment(tmp_path)
    assert main(["experiment", spec, "train.steps=2", "--seeds", "1", "--jobs", "1", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "o" / "report.html")  # to look at
    every = json.loads((tmp_path / "o" / "results.json").read_text())["variants_table"]["rows"][0]
    assert every == ["(every variant)", " ".join(["base tiny", *COMMON, "train.steps=2"])]  # the command line's too
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 0] and report["summary"]["wide"]["tokens"] == 2 * 8 * 32
    assert report["summary"]["wide"]["val_loss_std"] is None and report["summary"]["wide"]["p_value"] is None
    assert report["summary"]["wide"]["verdict"] == "n < 3: no test"
    assert "± - |" in (tmp_path / "o" / "results.md").read_text()
    # the page: the table, every run's loss curves (one figure) and, since the runs probe, the dynamics table
    html = (tmp_path / "o" / "report.html").read_text()
    assert 'id="curves"' in html and html.count("<img") == 1
    assert report["dynamics_table"]["rows"][1][0] == "wide" and "<th>ICL score</th>" in html
    # and the unigram phase's steps and the attention statistics, each a table of its own
    titles = [t["title"] for t in report["landmark_tables"]]
    assert titles == ["the unigram phase (RESEARCH.md section 2), in steps",
                      "the phase change (RESEARCH.md section 1): the training loss's bump and the ICL score's fall, "
                      "each where it is steepest",
                      "attention weights at the last probe (RESEARCH.md section 3), every head at every depth"]
    assert report["landmark_tables"][2]["rows"][0][1] == "1.000 ± -"  # a softmax row sums to 1; one seed: no std
    assert 'id="landmarks-0"' in html and "<th>d entropy / d log n (mean)</th>" in html
    wide = report["dynamics"]["wide"]
    assert wide["attn_row_sum"]["mean"] == pytest.approx(1.0) and wide["m2_min_step"]["mean"] >= 0
    (tmp_path / "o" / "report.html").unlink()  # `vslm report` redraws an experiment's page too
    assert main(["report", str(tmp_path / "o")]) == 0 and (tmp_path / "o" / "report.html").read_text() == html
    assert main(["report", str(tmp_path / "o"), "--watch"]) == 2


def test_fewer_seeds_never_replace_the_results_of_more(tmp_path, capsys):
    spec, out = write_experiment(tmp_path), tmp_path / "o"
    assert main(["experiment", spec, "--jobs", "1", "--out", str(out)]) == 0  # (workers: test_parallel)
    before = files_in(out)
    capsys.readouterr()
    assert main(["experiment", spec, "--seeds", "1", "--out", str(out)]) == 2  # a quick look, into the same folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summarizes 2 seeds and this command trains 1" in err and "--seeds 2" in err
    assert main(["experiment", spec, "--seeds", "0", "--out", str(out)]) == 2  # what is wrong is the 0
    assert "an experiment needs at least 1 seed, got 0" in capsys.readouterr().err
    assert files_in(out) == before  # (more seeds into it reuse the finished ones: test_parallel.py's --resolve test)


def test_a_sweep_keeps_the_best_choice_on_seed_0_and_reuses_it(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(f'base = "tiny"\nseeds = 2\noverrides = {COMMON!r}\n[[variants]]\nname = "base"\n'
                    '[[variants]]\nname = "tuned"\n'
                    'sweep = ["train.lr=1e-5 train.min_lr=1e-6", "train.lr=3e-3 train.warmup=1"]\n')
    out = tmp_path / "out"
    summary = run_experiment(str(path), out)
    report = json.loads((out / "results.json").read_text())
    tried = report["sweeps"]["tuned"]["tried"]
    slow, fast = (last_metrics(out / "tuned" / folder / "seed-0")["val_loss"]
                  for folder in ("train.lr=1e-5_train.min_lr=1e-6", "train.lr=3e-3_train.warmup=1"))
    assert tried == {"train.lr=1e-5 train.min_lr=1e-6": slow, "train.lr=3e-3 train.warmup=1": fast} and fast < slow
    assert summary["tuned"]["chosen"] == "train.lr=3e-3 train.warmup=1"
    assert (out / "tuned" / "train.lr=3e-3_train.warmup=1" / "seed-1").is_dir()
    assert not (out / "tuned" / "train.lr=1e-5_train.min_lr=1e-6" / "seed-1").exists()
    kept = [last_metrics(out / "tuned" / "train.lr=3e-3_train.warmup=1" / f"seed-{s}")["val_loss"] for s in (0, 1)]
    assert summary["tuned"]["val_loss_mean"] == pytest.approx(statistics.mean(kept), rel=1e-12)
    assert "| tuned | train.lr=3e-3 train.warmup=1 |" in (out / "results.md").read_text()
    html = (out / "report.html").read_text()  # the page showed the kept choices' table only: no choice was named
    assert '<section id="sweeps">' in html
    for choice, loss in tried.items():
        assert f"<td>tuned</td><td>{choice}</td><td>{loss:.4f}</td>" in html


def test_a_sweep_kept_at_its_edge_says_to_widen_it(tmp_path, capsys):
    from vslm.lab.experiments import sweep_edge

    path, out = tmp_path / "edge.toml", tmp_path / "out"
    lrs = ["train.lr=1e-6 train.min_lr=1e-7", "train.lr=1e-5 train.min_lr=1e-6", "train.lr=3e-3 train.min_lr=3e-4"]
    path.write_text(f'base = "tiny"\nseeds = 1\noverrides = {COMMON!r}\n[[variants]]\nname = "base"\n'
                    f'[[variants]]\nname = "tuned"\nsweep = {lrs!r}\n')
    assert main(["experiment", str(path), "--jobs", "1", "--out", str(out)]) == 0
    sweep = json.loads((out / "results.json").read_text())["sweeps"]["tuned"]
    assert min(sweep["tried"], key=sweep["tried"].get) == sweep["chosen"] == lrs[2]
    assert sweep["edge"] == "the highest train.lr"  # 4 steps at 1e-6 learn nothing: 3e-3 at the top is kept
    assert ("tuned: its sweep's lowest validation loss is at the highest train.lr (train.lr=3e-3 train.min_lr=3e-4): "
            "its best may lie past the sweep; widen it") in " ".join(capsys.readouterr().out.split())  # as wrapped
    assert f"| tuned | {lrs[2]} | {sweep['tried'][lrs[2]]:.4f} | kept (the highest train.lr: widen the sweep) |" in (
        out / "results.md").read_text()
    # inside the sweep, a sweep of two, or choices that set no number: no edge
    assert sweep_edge(lrs, lrs[1]) is None and sweep_edge(lrs[1:], lrs[2]) is None
    assert sweep_edge(["model.norm=rmsnorm", "model.norm=layernorm", "model.norm=rmsnorm train.lr=1e-3"],
                      "model.norm=layernorm") is None
    assert sweep_edge(list(reversed(lrs)), lrs[0]) == "the lowest train.lr"  # in any order


def test_a_top_level_sweep_is_every_variants_that_lists_none_and_the_command_lines_replaces_all(tmp_path):
    path = tmp_path / "exp.toml"
    head = 'base = "tiny"\nsweep = ["train.lr=1e-3", "train.lr=2e-3"]\n'
    path.write_text(head + '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\noverrides = ["model.width=48"]\n'
                    'sweep = ["train.lr=1e-3 train.warmup=1", "train.lr=3e-3"]\n[[variants]]\nname = "c"\n'
                    'overrides = ["model.width=64"]\nsweep = []\n')
    spec = load_experiment(str(path))[1]
    assert [v.sweep for v in spec.variants] == [["train.lr=1e-3", "train.lr=2e-3"],
                                                ["train.lr=1e-3 train.warmup=1", "train.lr=3e-3"], []]  # c: none
    plan = plan_experiment(spec, 1)
    assert [cfgs[0].train.lr for cfgs in plan["a"].values()] == [1e-3, 2e-3] and list(plan["c"]) == [""]
    grid = ["train.lr=4e-3 train.min_lr=4e-4 train.warmup=1", "train.lr=8e-3 train.min_lr=8e-4 train.warmup=1"]
    plan = plan_experiment(load_experiment(str(path), sweep=grid)[1], 1)
    for variant, width in (("a", 32), ("b", 48), ("c", 64)):  # all swept alike, each with its own overrides
        assert list(plan[variant]) == grid
        assert [(c[0].train.lr, c[0].train.min_lr, c[0].model.width) for c in plan[variant].values()] == [
            (4e-3, 4e-4, width), (8e-3, 8e-4, width)]
    with pytest.raises(ConfigError, match=r"exp\.toml: --sweep replaces the sweep of variant 'b', which also sets "
                                          r"train\.warmup: that grid would be lost"):
        load_experiment(str(path), sweep=["train.lr=4e-3"])  # b's warm-up choice would go unsaid
    with pytest.raises(ConfigError, match=r"exp\.toml with --sweep: sweep: a sweep choice is blank: give each "
                                          r"choice its overrides$"):
        load_experiment(str(path), sweep=["train.lr=1e-3 train.warmup=1", "  "])  # it would read as no sweep
    with pytest.raises(ConfigError, match=r"with --sweep: sweep: .*the sweep lists 'train.lr=1e-3 train.warmup=1' "
                                          r"twice$"):
        load_experiment(str(path), sweep=["train.lr=1e-3 train.warmup=1"] * 2)  # one run would stand for both
    path.write_text(head + '[[variants]]\nname = "a"\nsweep = []\n')
    with pytest.raises(ConfigError, match=r"exp\.toml: the top-level sweep is no variant's: each lists its own$"):
        load_experiment(str(path))
    path.write_text(head + 'steps = 3\n[[variants]]\nname = "a"\n')  # the file's fault, not the flag's
    with pytest.raises(ConfigError, match=r"exp\.toml: unknown field 'steps'"):
        load_experiment(str(path), sweep=["train.lr=1e-3"])


def test_sweep_on_the_command_line_trains_every_variant_at_each_choice_and_says_so(tmp_path, capsys):
    spec, out = write_experiment(tmp_path, seeds=1), tmp_path / "out"
    choices = ["train.lr=1e-5 train.min_lr=1e-6", "train.lr=3e-3 train.warmup=1"]
    # a choice's overrides as separate words up to the next flag, or as one quoted word
    words = ["experiment", spec, "--out", str(out), "--jobs", "1", "--sweep", *choices[0].split(), "--sweep",
             choices[1]]
    assert main([*words, "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["corpora"][""]["variants"]
    assert [(r["variant"], r["choice"]) for r in rows] == [(v, c) for v in ("narrow", "wide") for c in choices]
    assert not out.exists()
    assert main(words) == 0
    report = json.loads((out / "results.json").read_text())
    for variant in ("narrow", "wide"):
        slow, fast = (last_metrics(out / variant / folder / "seed-0")["val_loss"]
                      for folder in ("train.lr=1e-5_train.min_lr=1e-6", "train.lr=3e-3_train.warmup=1"))
        assert report["sweeps"][variant] == {"tried": {choices[0]: slow, choices[1]: fast}, "chosen": choices[1]}
        assert report["summary"][variant]["val_loss_mean"] == fast
    assert report["command"].endswith(f"--seeds 1 --sweep '{choices[0]}' --sweep '{choices[1]}' --out {out}")
    assert main([*words[:2], "train.warmup=2", *words[2:]]) == 2  # it would win over the second choice
    err = capsys.readouterr().err
    assert err.strip() == ("vslm: error: the command line's override train.warmup=2 sets train.warmup, which the "
                           "sweep of variant 'narrow' sets: it would win over every choice")
    assert main(["experiment", "knowledge", "--sweep", "train.lr=1e-3", "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "--sweep-seeds, --variants and --launcher apply to" in err and len(err.strip().splitlines()) == 1
    # a choice reads up to the next flag: the experiment's name, or an override for every variant, taken in is said
    assert main(["experiment", "--sweep", "train.lr=1e-3", str(spec)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--sweep took {str(spec)!r} into its choice (it reads up to the "
                                                    "next flag); give the experiment first, `vslm experiment NAME "
                                                    "--sweep ...`")
    assert main([*words[:4], "--sweep", "train.lr=1e-3", "--sweep", "train.lr=3e-3", "train.warmup=2", "--dry-run",
                 "--json"]) == 0
    assert capsys.readouterr().err.strip() == ("note: the last --sweep choice alone sets train.warmup: the overrides "
                                               "after a --sweep belong to its choice; overrides for every variant go "
                                               "before the flags")
    assert main([*words, "--dry-run", "--json"]) == 0 and not capsys.readouterr().err  # lr and min_lr, lr and warmup


def test_variants_trains_the_baseline_and_those_named_and_the_full_experiment_reuses_them(tmp_path, monkeypatch,
                                                                                            capsys):
    path, out = tmp_path / "exp.toml", tmp_path / "out"
    path.write_text(f'base = "tiny"\nseeds = 1\noverrides = {COMMON!r}\n[[variants]]\nname = "narrow"\n'
                    '[[variants]]\nname = "wide"\noverrides = ["model.width=48"]\n'
                    'sweep = ["train.lr=1e-3 train.warmup=1", "train.lr=3e-3 train.warmup=1"]\n'
                    '[[variants]]\nname = "wider"\noverrides = ["model.width=64"]\n')
    words = ["experiment", str(path), "--out", str(out), "--jobs", "1"]  # in this process, where Trainer counts
    assert main([*words, "--variants", "wider", "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["corpora"][""]["variants"]
    assert [r["variant"] for r in rows] == ["narrow", "wider"]
    # wide's own sweep sets train.warmup, which --sweep would drop: refused only while wide takes part
    assert main([*words, "--sweep", "train.lr=2e-3", "--sweep", "train.lr=4e-3", "--dry-run"]) == 2
    assert "which also sets train.warmup" in capsys.readouterr().err
    assert main([*words, "--variants", "wider", "--sweep", "train.lr=2e-3", "--sweep", "train.lr=4e-3",
                 "--dry-run"]) == 0
    capsys.readouterr()
    CountingTrainer.calls = []
    monkeypatch.setattr(runner, "Trainer", CountingTrainer)
    assert main([*words, "--variants", " wider, "]) == 0  # spaces and a trailing comma read as written
    assert sorted(CountingTrainer.calls) == [("narrow/seed-0", False), ("wider/seed-0", False)]
    report = json.loads((out / "results.json").read_text())
    assert list(report["summary"]) == ["narrow", "wider"] and "--variants wider" in report["command"]
    CountingTrainer.calls = []
    assert main(words) == 0  # the full experiment: only wide's runs are new
    assert sorted(CountingTrainer.calls) == [("train.lr=1e-3_train.warmup=1/seed-0", False),  # wide's choices
                                             ("train.lr=3e-3_train.warmup=1/seed-0", False)]
    assert list(json.loads((out / "results.json").read_text())["summary"]) == ["narrow", "wide", "wider"]
    capsys.readouterr()
    held = (out / "results.json").read_bytes()
    for dry in ([], ["--dry-run"]):  # a narrower look would replace the full results: refused, both ways
        assert main([*words, "--variants", "wider", *dry]) == 2
        assert capsys.readouterr().err.strip() == (
            f"vslm: error: {out / 'results.json'} holds the results of wide, which this command leaves out: its "
            "results would replace those; train them too (without --variants: their finished runs are reused) or "
            "pass another --out")
    assert (out / "results.json").read_bytes() == held
    assert main([*words, "--variants", "wdier"]) == 2
    assert capsys.readouterr().err.strip() == (f"vslm: error: {path}: --variants names 'wdier', which is none of its "
                                               "variants (did you mean wider or wide?)")
    assert main([*words, "--variants", " , "]) == 2
    assert "--variants needs one or more variant names" in capsys.readouterr().err


def test_sweep_seeds_choose_by_the_mean_over_seeds_and_the_comparison_reuses_them(tmp_path, monkeypatch, capsys):
    spec, out = write_experiment(tmp_path, seeds=3), tmp_path / "out"
    choices = ["train.lr=3e-2 train.warmup=1", "train.lr=6e-2 train.warmup=1"]  # narrow: 6e-2 best on seed 0 only
    words = ["experiment", spec, "--out", str(out), *[w for c in choices for w in ("--sweep", c)], "--sweep-seeds", "2",
             "--jobs", "1"]  # here: CountingTrainer counts the runs
    assert main([*words, "--dry-run", "--json"]) == 0
    rows = {(r["variant"], r["choice"]): r for r in json.loads(capsys.readouterr().out)["corpora"][""]["variants"]}
    assert [rows["wide", c]["runs_first"] for c in (*choices, "the kept choice")] == [2, 2, 1]
    assert main([*words, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("2 (sweep: seeds 0-1)") == 4
    CountingTrainer.calls = []
    monkeypatch.setattr(runner, "Trainer", CountingTrainer)
    assert main(words) == 0
    folders = {c: c.replace(" ", "_") for c in choices}
    report = json.loads((out / "results.json").read_text())
    for variant in ("narrow", "wide"):
        per_seed = {c: [last_metrics(out / variant / folders[c] / f"seed-{s}")["val_loss"] for s in (0, 1)]
                    for c in choices}
        sweep = report["sweeps"][variant]
        assert sweep["per_seed"] == per_seed and sweep["tried"] == {c: statistics.fmean(v) for c, v in per_seed.items()}
        chosen = min(choices, key=lambda c: statistics.fmean(per_seed[c]))
        assert sweep["chosen"] == chosen
        if variant == "narrow":  # the mean's choice, not seed 0's (3.1955 against 3.2155; seed 0: 3.2097, 3.1981)
            assert chosen == choices[0] and per_seed[choices[1]][0] < per_seed[choices[0]][0] - 0.005
        other = next(c for c in choices if c != chosen)
        assert not (out / variant / folders[other] / "seed-2").exists()
        kept = [last_metrics(out / variant / folders[chosen] / f"seed-{s}")["val_loss"] for s in (0, 1, 2)]
        assert report["summary"][variant]["val_loss_mean"] == pytest.approx(statistics.mean(kept), rel=1e-12)
    assert len(CountingTrainer.calls) == 2 * (2 * 2 + 1)  # each run trained once: seeds 0-1 reused, not retrained
    capsys.readouterr()
    assert main([*words, "--dry-run", "--json"]) == 0  # the sweeps done: the dry run keeps what the run kept
    rows = {(r["variant"], r["choice"]): r for r in json.loads(capsys.readouterr().out)["corpora"][""]["variants"]}
    for variant in ("narrow", "wide"):
        row = rows[variant, "the kept choice"]
        assert (row["kept"], row["finished"], row["runs_most"]) == (report["sweeps"][variant]["chosen"], 1, 1)
    wider = [*words, "--sweep", "train.lr=1e-2 train.warmup=1"]  # a choice not tried: the kept one is not known
    assert main([*wider, "--dry-run", "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["corpora"][""]["variants"] if r.get("after_sweep")]
    assert [(r["kept"], r["finished"]) for r in rows] == [(None, 0), (None, 0)]  # at most: the new one kept
    assert main([*wider, "--dry-run"]) == 0
    # seeds 0-1 of the new choice and seed 2 of it if kept, in both variants: 6 runs of 4 x 8 x 32 tokens
    assert "Left to train at most: 6,144 tokens" in capsys.readouterr().out
    assert report["command"].endswith(f"--sweep-seeds 2 --out {out}")  # (--jobs: where, not what, it trains)
    assert "| choice (mean of seeds 0-1) |" in (out / "results.md").read_text()
    for extra, problem in (([], "exp.toml: sweep_seeds 2 is more than the 1 seed of the first look, and a sweep "
                                "chooses on seeds the comparison reuses: pass --seeds 2 or more, or --sweep-seeds 1"),
                           (["--sweep-seeds", "0"], "sweep_seeds: Input should be greater than or equal to 1")):
        capsys.readouterr()
        assert main([*words, "--seeds", "1", *extra, "--out", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1
    assert main(["experiment", spec, "--sweep-seeds", "2", "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip() == (f"vslm: error: {spec} with --sweep-seeds: sweep_seeds = 2, and no "
                                               "variant has a sweep to choose on them")
    assert not (tmp_path / "other").exists()
    path = tmp_path / "in-file.toml"  # the same, written in the experiment's file
    path.write_text(f'base = "tiny"\nseeds = 3\nsweep_seeds = 2\noverrides = {COMMON!r}\nsweep = {choices!r}\n'
                    '[[variants]]\nname = "narrow"\n')
    from vslm.lab.experiments import dry_run
    rows = dry_run(str(path), tmp_path / "other")["corpora"][""]["variants"]
    assert [(r["choice"], r["runs_first"], r["runs_most"]) for r in rows] == [
        (choices[0], 2, 2), (choices[1], 2, 2), ("the kept choice", 1, 1)]


def test_corpora_repeat_the_experiment_per_corpus(tmp_path):
    text = tmp_path / "other.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 2000)
    spec = write_experiment(tmp_path, extra=f'corpora = ["stories", "{text}"]\n', seeds=1)
    summaries = run_experiment(spec, tmp_path / "out")
    assert list(summaries) == ["stories", str(text)]
    for corpus, summary in summaries.items():
        folder = tmp_path / "out" / ("stories" if corpus == "stories" else "other")
        assert summary["wide"]["val_loss_mean"] == last_metrics(folder / "wide" / "seed-0")["val_loss"]
        assert f'source = "{corpus}"' in (folder / "wide" / "seed-0" / "config.toml").read_text()
    joined = (tmp_path / "out" / "results.md").read_text()
    assert joined.count("## Experiment exp on ") == 2
    # one page for the whole experiment: a section per corpus, in the spec's order, each with its own tables and
    # curves (ids apart); `vslm report` on the top folder draws it again, the same
    page = (tmp_path / "out" / "report.html").read_text()
    assert [m.group(1) for m in re.finditer(r'<h2>([^<]*)</h2>', page)] == ["stories", str(text)]
    assert page.count("<h3>Variants</h3>") == 2 and page.count("<h3>Loss curves</h3>") == 2
    assert 'id="c0-variants"' in page and 'id="c1-variants"' in page
    for summary in summaries.values():
        assert f"{summary['wide']['val_loss_mean']:.4f}" in page
    (tmp_path / "out" / "report.html").unlink()
    assert main(["report", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").read_text() == page


def quality_experiment(tmp_path, seeds: int):
    """A cross-evaluated experiment of two texts (the stories and a file written here): (the file, the spec)."""
    text = tmp_path / "other.txt"
    text.write_text("<|endoftext|>".join(f"Entry {i}: the river flows past the old mill at dawn." * 3
                                         for i in range(60)))
    spec = tmp_path / "quality.toml"
    spec.write_text(f'base = "tiny"\nseeds = {seeds}\ncross_eval = true\n'
                    f'overrides = {[*COMMON, "data.tokenizer=byte"]!r}\n'
                    f'[[variants]]\nname = "stories"\n[[variants]]\nname = "other"\n'
                    f'overrides = ["data.source={text}"]\n')
    return text, spec


def test_cross_evaluation_matrix_of_bits_per_byte(tmp_path):
    """Two corpora, two seeds: every run scored on both corpora's held-out documents; each cell checked
    against a direct computation, the matrix against the cells, and the report's heat map drawn."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from vslm.config import DataConfig
    from vslm.data.shards import prepare_corpus
    from vslm.train.run_folder import load_run

    text, spec = quality_experiment(tmp_path, seeds=2)
    out = tmp_path / "out"
    run_experiment(str(spec), out)
    matrix = json.loads((out / "results.json").read_text())["cross_eval"]
    assert matrix["corpora"] == ["stories", "other"] and len(matrix["runs"]) == 2 * 2 * 2
    sources = {"stories": DataConfig(source="stories", tokenizer="byte", max_bytes=200000),
               "other": DataConfig(source=str(text), tokenizer="byte", max_bytes=200000)}
    for cell in matrix["runs"][:: 3]:
        _, model, tok = load_run(out / cell["train"] / f"seed-{cell['seed']}")
        val = np.asarray(prepare_corpus(sources[cell["eval"]]).val.tokens, dtype=np.int64)
        stream = torch.from_numpy(np.concatenate([[tok.eos_id], val]))
        nats, n_bytes = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(stream) - 1, 32):  # consecutive windows of the context, by hand
                x, y = stream[s : s + 32], stream[s + 1 : s + 33]
                nll = F.cross_entropy(model(x[None, : len(y)])[0], y, reduction="none")
                nats += nll[y != tok.eos_id].sum().item()
                n_bytes += int((y != tok.eos_id).sum())
        assert cell["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    for i, train in enumerate(matrix["corpora"]):
        for j, evaluated in enumerate(matrix["corpora"]):
            bpbs = [c["bpb"] for c in matrix["runs"] if (c["train"], c["eval"]) == (train, evaluated)]
            assert matrix["bpb_mean"][i][j] == pytest.approx(statistics.mean(bpbs), rel=1e-12)
            assert matrix["bpb_std"][i][j] == pytest.approx(statistics.stdev(bpbs), rel=1e-12)
    home = {e: statistics.mean(c["bpb"] for c in matrix["runs"] if c["train"] == c["eval"] == e) for e in sources}
    for train, evaluated in (("stories", "other"), ("other", "stories")):  # with two corpora: one other each
        excess = [c["bpb"] - home[evaluated] for c in matrix["runs"] if (c["train"], c["eval"]) == (train, evaluated)]
        assert matrix["transfer"][train]["scores"] == pytest.approx(excess, rel=1e-12)
    assert sorted(t["verdict"] for t in matrix["transfer"].values()) == ["best", "n < 3: no test"]
    # the main table's val_loss of each row is on its own corpus: no difference, no test across rows (a Welch
    # test of "other" against "stories" compared two texts' losses)
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["other"]["verdict"] == OWN_TEXT and summary["other"]["diff_vs_baseline"] is None
    assert "not compared: its own corpus's held-out text" in (out / "results.md").read_text()
    markdown = (out / "results.md").read_text()
    assert "| trained on ↓, evaluated on → | stories | other |" in markdown
    assert "## Which training text transfers" in markdown
    html = (out / "report.html").read_text()
    assert "Trained on x evaluated on" in html and html.count("data:image/png;base64,") == 2  # the curves, the map
    assert "Which training text transfers" in html
    # a seed whose run failed leaves no folder: each cell keeps its run's own seed, not its index among those left
    from vslm.lab.experiments import cross_evaluate
    part = cross_evaluate({"stories": {1: out / "stories" / "seed-1"}, "other": {0: out / "other" / "seed-0",
                                                                             1: out / "other" / "seed-1"}},
                          sources)
    whole = {(c["train"], c["seed"], c["eval"]): c["bpb"] for c in matrix["runs"]}
    assert sorted((c["train"], c["seed"]) for c in part["runs"] if c["eval"] == "other") == [
        ("other", 0), ("other", 1), ("stories", 1)]
    assert all(c["bpb"] == pytest.approx(whole[c["train"], c["seed"], c["eval"]], rel=1e-6) for c in part["runs"])


def test_a_cross_evaluated_experiment_resolves_by_its_transfer_table_scoring_each_run_once(tmp_path, monkeypatch):
    """The main table of a cross-evaluated experiment compares nothing (each row on its own text): --resolve's
    looks read the transfer table's intervals, each look scoring only the runs it added."""
    from vslm.lab import experiments
    from vslm.lab.stats import transfer

    text, spec = quality_experiment(tmp_path, seeds=3)
    calls = []
    real = experiments.score_tokens
    monkeypatch.setattr(experiments, "score_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_experiment(str(spec), tmp_path / "out", resolve=1e-6, max_seeds=6)  # never resolved: every look taken
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    looks, matrix = report["resolve"]["looks"], report["cross_eval"]
    assert [look["seeds"] for look in looks] == [3, 6] and report["resolve"]["unit"].startswith("bpb")
    assert len(calls) == len(matrix["runs"]) == 6 * 2 * 2  # each run on each text once, over both looks
    for look in looks:  # the transfer table of the runs each look had
        bpb = {(t, e): [c["bpb"] for c in matrix["runs"] if (c["train"], c["eval"]) == (t, e) and
                        c["seed"] < look["seeds"]] for t in matrix["corpora"] for e in matrix["corpora"]}
        worse = next(r for r in transfer(bpb, matrix["corpora"]).values() if r["verdict"] != "best")
        assert look["widest_half_interval"] == pytest.approx((worse["ci_high"] - worse["ci_low"]) / 2, rel=1e-12)
    worse = next(r for r in matrix["transfer"].values() if r["verdict"] != "best")
    assert looks[-1]["widest_half_interval"] == pytest.approx((worse["ci_high"] - worse["ci_low"]) / 2, rel=1e-12)
    # a text whose every run failed (diverged) has no model to cross-evaluate: one line, the runs kept
    spec.write_text(spec.read_text().replace(f'overrides = ["data.source={text}"]',
                                             f'overrides = ["data.source={text}", "train.lr=1e6", "train.min_lr=1e5"]')
                    .replace("seeds = 3", "seeds = 1"))
    with pytest.raises(VSLMError, match="every run of other failed, so no model of that text is cross-evaluated"):
        run_experiment(str(spec), tmp_path / "failed")
    assert (tmp_path / "failed" / "other" / "seed-0" / "config.toml").is_file()


def test_a_run_of_another_tokenizer_is_refused_when_the_corpus_is_given(tmp_path):
    from vslm.config import load_config
    from vslm.data.shards import prepare_corpus
    from vslm.data.tokenizer import ByteTokenizer

    cfg = load_config("tiny", tiny_overrides(train__steps=2))
    first = runner.train_or_reuse(cfg, tmp_path / "r", prepare_corpus(cfg.data))
    assert runner.train_or_reuse(cfg, tmp_path / "r", prepare_corpus(cfg.data))["reused"]
    assert runner.train_or_reuse(cfg, tmp_path / "r")["val_loss"] == first["val_loss"]
    # the config names the tokenizer's kind only: the same config with its text encoded otherwise
    with pytest.raises(VSLMError, match="holds a run of another tokenizer"):
        runner.train_or_reuse(cfg, tmp_path / "r", prepare_corpus(cfg.data, tokenizer=ByteTokenizer()))


def test_a_knowledge_experiment_refuses_what_applies_to_variants(capsys):
    for flags in (["--resolve", "0.02"], ["--launcher", "ray"], ["--variants", "a"]):
        assert main(["experiment", "knowledge-retrieval", "--out", "unused", *flags]) == 2
        err = capsys.readouterr().err
        assert "apply to comparisons of variants" in err and len(err.strip().splitlines()) == 1
    assert main(["experiment", "knowledge-retrieval", "train.seed=3", "--out", "unused"]) == 2  # seed k's world too
    err = capsys.readouterr().err
    assert "the command line: train.seed is the experiment's to set" in err and len(err.strip().splitlines()) == 1


def test_dry_run_lists_the_runs_and_what_the_folder_holds_and_writes_nothing(tmp_path, capsys):
    from vslm.lab.experiments import dry_run
    from vslm.model import GPT, parameter_count, training_flops_per_token

    spec, out = write_experiment(tmp_path, extra='[[variants]]\nname = "wider"\noverrides = ["model.width=64"]\n'
                                 'sweep = ["train.lr=1e-3", "train.lr=3e-3"]\n'), tmp_path / "out"
    plan = dry_run(spec, out, 3)
    assert not out.exists()  # nothing written
    rows = {(r["variant"], r["choice"]): r for r in plan["corpora"][""]["variants"]}
    assert list(rows) == [("wider", "train.lr=1e-3"), ("wider", "train.lr=3e-3"), ("wider", "the kept choice"),
                          ("narrow", ""), ("wide", "")]
    kept = rows[("wider", "the kept choice")]  # the sweep's seeds 1 and 2, of whichever choice it keeps
    assert (kept["runs_first"], kept["runs_most"], kept["after_sweep"]) == (2, 2, True)
    cfg = plan_experiment(load_experiment(spec)[1], 1)["wide"][""][0]
    model = GPT(cfg.model.model_copy(update={"vocab_size": runner.vocab_size_of(cfg)}))
    wide = rows[("wide", "")]
    assert (wide["params"], wide["flops_per_token"], wide["tokens"]) == (
        parameter_count(model), training_flops_per_token(model), 4 * 8 * 32)
    assert (wide["runs_first"], wide["runs_most"], wide["finished"], wide["paired"]) == (3, 3, 0, True)
    assert rows[("wider", "train.lr=1e-3")]["runs_most"] == 1  # a sweep trains seed 0 of each choice first
    # two seeds trained; one run then given other settings, one cut back to unfinished
    run_experiment(write_experiment(tmp_path), out)
    (out / "wide" / "seed-1" / "config.toml").write_text(
        (out / "wide" / "seed-1" / "config.toml").read_text().replace("width = 48", "width = 40"))
    (out / "narrow" / "seed-1" / "checkpoints" / checkpoint_name(4)).unlink()
    held = files_in(out)
    plan = dry_run(write_experiment(tmp_path), out, 3, resolve=0.01, max_seeds=6)
    assert files_in(out) == held and plan["looks"] == [3, 6]
    narrow, wide = plan["corpora"][""]["variants"]
    assert (narrow["runs_first"], narrow["runs_most"], narrow["finished"], narrow["stopped"]) == (3, 6, 1, 1)
    assert (wide["finished"], wide["other_settings"]) == (1, 1)
    assert wide["other_settings_folders"] == [str(out / "wide" / "seed-1")]
    assert main(["experiment", write_experiment(tmp_path), "--seeds", "3", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "6 runs at the first look, 6 at most; 2 finished in the folder and reused" in printed
    assert f"Left to train at most: {4 * 4 * 8 * 32:,} tokens" in printed  # 6 runs, 2 of them finished
    assert f"1 run folders hold runs of other settings, which the experiment refuses: {out / 'wide' / 'seed-1'}" \
        in printed.replace("\n", "")
    assert files_in(out) == held


def test_dry_run_refuses_what_the_experiment_refuses(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["experiment", write_experiment(tmp_path), "--json", "--out", str(out)]) == 2  # not a run's
    assert "--json applies to --dry-run" in capsys.readouterr().err
    assert main(["experiment", "knowledge", "--dry-run", "--out", str(out), "--launcher", "ray"]) == 2  # as the run
    assert "--launcher apply to comparisons of variants" in capsys.readouterr().err
    assert main(["experiment", "knowledge", "--dry-run", "--out", str(out), "--resolve", "0.02"]) == 2
    assert "--resolve, --max-seeds, --sweep, --sweep-seeds, --variants and --launcher apply to comparisons of " \
        "variants" in capsys.readouterr().err
    assert main(["experiment", "knowledge", "--dry-run", "--out", str(out), "train.seed=3"]) == 2
    assert "train.seed is the experiment's to set" in capsys.readouterr().err
    assert main(["experiment", write_experiment(tmp_path), "model.width=48", "--dry-run", "--out", str(out)]) == 2
    assert "variants 'narrow' and 'wide' train the same configs" in capsys.readouterr().err
    assert main(["experiment", write_experiment(tmp_path), "data.source=nowhere.txt", "--dry-run"]) != 0
    assert "nowhere.txt" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_of_runs_is_never_written_into_a_training_run(tmp_path, capsys):
    """An experiment, a knowledge experiment, a scaling grid or a capacity sweep given a run folder as --out:
    refused in one line (dry run or not), the run's files as they were; its report.html would be replaced."""
    run = tmp_path / "run"
    assert main(["train", "tiny", *tiny_overrides(train__steps=2), "--out", str(run)]) == 0
    before = files_in(run)
    capsys.readouterr()
    for argv in (["experiment", write_experiment(tmp_path)], ["experiment", write_experiment(tmp_path), "--dry-run"],
                 ["experiment", "knowledge-retrieval", "--seeds", "1"], ["scaling", "scaling-tiny"],
                 ["scaling", "scaling-tiny", "--dry-run"], ["facts", "capacity", "--sizes", "1x16", "--seeds", "0"]):
        assert main([*argv, "--out", str(run)]) == 1, argv
        err = capsys.readouterr().err
        assert f"--out {run} holds a training run (its config.toml, metrics.jsonl or checkpoints/)" in err, err
        assert err.count("\n") == 1, (argv, err)
    assert files_in(run) == before


def test_what_a_researchers_own_file_gets_wrong_is_one_line_and_the_dry_run_says_it_too(tmp_path, capsys):
    """An experiment sets train.seed itself: an override of it would make every seed one run (a paired test
    then calls the identical runs significant) or be lost. Then: a file that is not UTF-8, an --out that is a
    file, a misspelled kind, a bad --sweep value, --list with more, and a relative base that is not beside
    the file (it was taken from the working directory)."""
    def refused(*argv):
        code = main(["experiment", *map(str, argv)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    out = tmp_path / "out"
    seed_words = "train.seed is the experiment's to set (seed s trains with train.seed = s)"
    for dry in (["--dry-run"], []):
        assert refused(write_experiment(tmp_path), "train.seed=7", "--out", out, *dry).startswith(
            f"vslm: error: the command line: {seed_words}")
    # a whole train table sets the seed too (its default, the same for every seed): refused the same way
    assert f"the command line: {seed_words}" in refused(write_experiment(tmp_path), "train={steps=4}", "--dry-run")
    assert f"variant 'wide': {seed_words}" in refused(write_experiment(tmp_path, ["train.seed=5"]), "--out", out)
    assert f"variant 'narrow': {seed_words}" in refused(write_experiment(tmp_path), "--sweep", "train.seed=1",
                                                       "--sweep", "train.seed=2", "--out", out, "--dry-run")
    shared = tmp_path / "shared.toml"
    shared.write_text((tmp_path / "exp.toml").read_text().replace("overrides = [", 'overrides = ["train.seed=3", ', 1))
    assert f"the experiment's overrides: {seed_words}" in refused(shared, "--out", out)
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('description = "café"\n'.encode("latin-1") + (tmp_path / "exp.toml").read_bytes())
    assert f"experiment {latin}: cannot read it ('utf-8' codec can't decode" in refused(latin, "--dry-run")
    afile = tmp_path / "afile"
    afile.write_text("notes\n")
    for dry in (["--dry-run"], []):
        assert f"--out {afile} is a file, not a folder" in refused(write_experiment(tmp_path), "--out", afile, *dry)
        assert f"--out {afile / 'x'}: {afile} is a file, not a folder" in refused(
            write_experiment(tmp_path), "--out", afile / "x", *dry)
    kind = tmp_path / "kind.toml"
    kind.write_text('kind = "knowlege"\n' + (tmp_path / "exp.toml").read_text())
    for dry in (["--dry-run"], []):
        assert "unknown kind 'knowlege': leave it out for a comparison of variants, or give 'knowledge'" in \
            refused(kind, "--out", out, *dry)
    assert "sweep choice 'train.lr=abc' (every variant's): config error: train.lr: Input should be a valid number" \
        in refused(write_experiment(tmp_path), "--sweep", "train.lr=abc", "--sweep", "train.lr=1e-3", "--dry-run",
                   "--out", out)
    own = write_experiment(tmp_path, extra='[[variants]]\nname = "swept"\nsweep = ["train.lr=abc"]\n')
    assert "variant 'swept' (train.lr=abc): config error: train.lr" in refused(own, "--dry-run", "--out", out)
    for argv, given in (([write_experiment(tmp_path), "--out", out, "--dry-run"], "experiment, --out, --dry-run"),
                        (["--seeds", "0"], "--seeds"), (["--jobs", "4"], "--jobs")):
        assert f"--list lists the built-in names and takes nothing else; got {given}" in refused(*argv, "--list")
    assert main(["scaling", "--list", "--out", str(out)]) == 2
    assert "takes nothing else; got --out" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    for base in ("mine.toml", "mine"):  # in the working directory, not beside the file: never read
        (tmp_path / base).write_text('base = "tiny"\n')
        (tmp_path / "sub" / "exp.toml").write_text((tmp_path / "exp.toml").read_text().replace('"tiny"', f'"{base}"'))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            assert f"the experiment's base '{base}': no config '{base}': not a file beside " \
                f"{tmp_path / 'sub' / 'exp.toml'} ({tmp_path / 'sub' / base}), nor a built-in config" in \
                refused(tmp_path / "sub" / "exp.toml", "--dry-run", "--out", out)
        (tmp_path / "sub" / base).write_text('base = "tiny"\n')  # beside it: taken
        assert main(["experiment", str(tmp_path / "sub" / "exp.toml"), "--dry-run", "--out", str(out)]) == 0
    assert not out.exists() and afile.read_text() == "notes\n"


def test_the_readmes_experiment_file_is_one_that_runs(tmp_path):
    """The annotated example in the README's 'Experiments' is a valid experiment, with every key it lists."""
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    block = re.search(r"Your own experiment is a TOML file.*?```toml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "mine.toml"
    path.write_text(block)
    raw = read_experiment(str(path))[1]
    assert {"description", "base", "seeds", "overrides", "sweep", "sweep_seeds", "corpora", "cross_eval"} <= set(raw)
    name, spec = load_experiment(str(path))
    plan = plan_experiment(spec, spec.seeds)
    assert list(plan) == ["narrow", "wide"] and len(plan["wide"]) == 2 and len(plan["narrow"][""]) == 3


def test_weight_diagnostics_are_summarised_per_variant(tmp_path):
    from vslm.report.runs import diagnostics_summary, read_run

    spec, out = write_experiment(tmp_path, ("train.optimizer=tangent",)), tmp_path / "out"
    run_experiment(spec, out, extra_overrides=["logging.diagnostics_every=2", "logging.probe_every=0"])
    report = json.loads((out / "results.json").read_text())
    assert "dynamics_table" not in report  # no probes: no training-dynamics table of n/a
    (table,) = report["landmark_tables"]
    assert table["title"].startswith("weight diagnostics") and [r[0] for r in table["rows"]] == ["narrow", "wide"]
    rows = [json.loads(x) for x in (out / "wide" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    ratios = [v for r in rows for k, v in r.items() if k.endswith("/update_ratio")]
    cosines = [v for r in rows for k, v in r.items() if k.endswith("/cos_w_grad")]
    got = diagnostics_summary(read_run(out / "wide" / "seed-0"))
    assert len(ratios) == 2 * 8 and got["diag_update_ratio"] == pytest.approx(statistics.mean(ratios))
    assert got["diag_cos_w_grad"] == pytest.approx(statistics.mean(cosines))
    assert got["diag_row_norm_drift"] < 1e-5  # tangent descent retracts every row to its norm
    narrow = [r for r in report["runs"] if r["variant"] == "narrow"]
    assert all(r["diag_row_norm_drift"] > 1e-4 for r in narrow)  # AdamW moves the norms
    assert report["dynamics"]["wide"]["diag_update_ratio"]["mean"] == pytest.approx(
        statistics.mean(r["diag_update_ratio"] for r in report["runs"] if r["variant"] == "wide"))


def test_match_keeps_the_choice_nearest_the_baselines_landmark(tmp_path):
    from vslm.report.runs import diagnostics_summary, read_run

    spec, out = tmp_path / "match.toml", tmp_path / "out"
    common = [*COMMON, "logging.diagnostics_every=1", "logging.probe_every=0", "train.min_lr=0"]
    spec.write_text(f'base = "tiny"\nseeds = 1\noverrides = {common!r}\n'
                    'match = "diag_update_ratio"\n'
                    '[[variants]]\nname = "adamw"\n'
                    '[[variants]]\nname = "tangent"\noverrides = ["train.optimizer=tangent"]\n'
                    'sweep = ["train.lr=1e-4", "train.lr=1e-3", "train.lr=1e-2", "train.lr=1e-1"]\n')
    run_experiment(str(spec), out)
    report = json.loads((out / "results.json").read_text())
    target = diagnostics_summary(read_run(out / "adamw" / "seed-0"))["diag_update_ratio"]
    sweep = report["sweeps"]["tangent"]
    assert report["match"] == "diag_update_ratio" and sweep["target"] == pytest.approx(target)
    measured = {c: diagnostics_summary(read_run(out / "tangent" / c / "seed-0"))["diag_update_ratio"]
                for c in sweep["tried"]}
    assert sweep["measured"] == pytest.approx(measured)
    rising = list(measured.items())  # the sweep's order: learning rates ascending
    first = next(i for i, (_, v) in enumerate(rising) if v >= target)
    matched = min(rising[max(0, first - 1) : first + 1], key=lambda cv: abs(math.log(cv[1] / target)))[0]
    best_loss = min(sweep["tried"], key=sweep["tried"].get)
    assert sweep["chosen"] == matched and matched != best_loss  # matched, not the lowest loss
    assert f"| diag_update_ratio (target {target:.4g}) | kept |" in (out / "results.md").read_text()
    from vslm.lab.experiments import dry_run  # with a second seed: it would train the matched choice's
    rows = [r for r in dry_run(str(spec), out, 2)["corpora"][""]["variants"] if r.get("after_sweep")]
    assert [(r["variant"], r["kept"], r["finished"]) for r in rows] == [("tangent", matched, 0)]


@pytest.mark.parametrize("extra, message", [
    ('match = "update_ratio"\n', "match 'update_ratio' is not a landmark a sweep can match in ratio (did you "
                                 "mean diag_update_ratio or attn_entropy_ratio?) (one of diag_update_ratio, "
                                 "attn_row_sum, attn_entropy_ratio)"),
    ('match = "icl_score"\n', "match 'icl_score' is not a landmark a sweep can match in ratio"),
    ('match = "diag_update_ratio"\n', "match 'diag_update_ratio' chooses among a sweep's choices"),
])
def test_match_refusals(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_experiment(write_experiment(tmp_path, extra=extra), tmp_path / "out")


@pytest.mark.parametrize("sweep, message", [
    ('["train.lr=1e-2", "train.lr=1e-3"]', "variant 'b''s sweep lists train.lr as 0.01, 0.001; a match keeps the "
                                           "first choice to reach the baseline's value, so list it rising"),
    ('["train.lr=1e-3 train.min_lr=1e-3", "train.lr=1e-2 train.min_lr=1e-4"]', "lists train.min_lr as 0.001, 0.0001"),
    ('["model.norm=rmsnorm", "model.norm=layernorm"]', "variant 'b''s sweep varies no number in every choice"),
    ('["model.norm=rmsnorm train.warmup=2", "model.norm=layernorm train.warmup=2"]', "varies no number"),
])
def test_match_refuses_a_sweep_it_cannot_read_in_order(tmp_path, sweep, message):
    # matched_choice keeps the first choice whose landmark reaches the baseline's: the order is the sweep's
    path = tmp_path / "m.toml"
    head = 'base = "tiny"\nmatch = "diag_update_ratio"\n[[variants]]\nname = "a"\n[[variants]]\nname = "b"\n'
    path.write_text(head + f'sweep = {sweep}\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(str(path))
    path.write_text(head + 'sweep = ["train.lr=1e-3 train.warmup=2", "train.lr=3e-3 train.warmup=2"]\n')
    load_experiment(str(path))  # a field every choice sets alike is no order to check


def test_match_with_a_swept_baseline_and_a_landmark_no_run_measures(tmp_path):
    from vslm.lab.experiments import matched_choice
    from vslm.report.runs import diagnostics_summary, read_run

    common = [*COMMON, "logging.diagnostics_every=1", "logging.probe_every=0", "train.min_lr=0"]
    spec, out = tmp_path / "match.toml", tmp_path / "out"
    spec.write_text(f'base = "tiny"\nseeds = 1\noverrides = {common!r}\nmatch = "diag_update_ratio"\n'
                    '[[variants]]\nname = "adamw"\nsweep = ["train.lr=1e-3", "train.lr=1e-2"]\n'
                    '[[variants]]\nname = "muon"\noverrides = ["train.optimizer=muon"]\n'
                    'sweep = ["train.lr=1e-4", "train.lr=1e-3", "train.lr=1e-2"]\n')
    run_experiment(str(spec), out)
    report = json.loads((out / "results.json").read_text())
    adamw, muon = report["sweeps"]["adamw"], report["sweeps"]["muon"]
    assert adamw["chosen"] == min(adamw["tried"], key=adamw["tried"].get)  # the baseline: its lowest loss
    target = diagnostics_summary(read_run(out / "adamw" / adamw["chosen"] / "seed-0"))["diag_update_ratio"]
    assert muon["target"] == pytest.approx(target)
    assert muon["chosen"] == matched_choice(list(muon["measured"].items()), target)
    # a landmark the runs do not measure is refused before anything trains
    with pytest.raises(ConfigError, match="match 'diag_update_ratio': variant 'adamw \\(train.lr=1e-3\\)' does not "
                                          "measure it \\(set logging.diagnostics_every\\)"):
        run_experiment(str(spec), tmp_path / "none", extra_overrides=["logging.diagnostics_every=0"])
    assert not (tmp_path / "none").exists()


def test_reach_gives_the_tokens_each_run_takes_to_the_baselines_final_loss(tmp_path):
    spec, out = write_experiment(tmp_path, ("model.width=48", "train.lr=1e-2")), tmp_path / "out"
    run_experiment(spec, out, extra_overrides=["train.eval_every=1", "train.eval_windows=16"])
    report = json.loads((out / "results.json").read_text())

    def val_curve(variant, seed):
        rows = [json.loads(x) for x in (out / variant / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]

    per_step = 8 * 32
    for variant in ("narrow", "wide"):
        tokens, ratios = [], []
        for seed in (0, 1):
            target = val_curve("narrow", seed)[-1][1]
            hit = [step for step, loss in val_curve(variant, seed) if loss <= target]
            base = [step for step, loss in val_curve("narrow", seed) if loss <= target][0]
            if hit:
                tokens.append(hit[0] * per_step)
                ratios.append(base / hit[0])
        got = report["reach"][variant]
        assert got["reached"] == len(tokens) and got["seeds"] == 2
        if tokens:
            assert got["tokens"]["mean"] == pytest.approx(statistics.mean(tokens))
            assert got["ratio"]["mean"] == pytest.approx(statistics.mean(ratios))
    narrow = report["reach"]["narrow"]  # the baseline reaches its own final loss, at the same step as itself
    assert narrow["reached"] == 2 and narrow["ratio"]["mean"] == pytest.approx(1.0)
    assert "| variant | tokens to the baseline's final val_loss |" in (out / "results.md").read_text()
    assert 'Sample efficiency' in (out / "report.html").read_text()
    # runs evaluated only at their end give no such table
    run_experiment(spec, tmp_path / "plain")
    assert "reach" not in json.loads((tmp_path / "plain" / "results.json").read_text())


def test_matched_choice_is_the_first_crossing_not_a_choice_past_a_plateau():
    from vslm.lab.experiments import matched_choice

    # AdamP on tiny Shakespeare (optimizers-angular, seed 0): the angular step stops rising at lr 8e-3
    sweep = [("1e-3", 0.0094), ("2e-3", 0.0134), ("4e-3", 0.0178), ("8e-3", 0.02247), ("1.6e-2", 0.02312),
             ("3.2e-2", 0.02289), ("6.4e-2", 0.02008), ("1.28e-1", 0.02262)]
    assert matched_choice(sweep, 0.0229) == "1.6e-2"  # the crossing, not 3.2e-2 (nearest, past the plateau)
    assert matched_choice(sweep, 0.0170) == "4e-3"  # the one before the crossing is nearer
    assert matched_choice(sweep, 0.05) == "1.6e-2"  # never reached: the nearest
    assert matched_choice([("a", math.nan), ("b", 0.0)], 0.01) is None  # nothing measured


def test_a_sweeps_later_seeds_not_yet_chosen_count_the_most_any_choice_could_train():
    from vslm.lab.experiments import _costliest

    rows = [{"finished": 2, "flops_per_token": 10, "params": 5, "tokens": 100, "in_use": 0,
             "other_settings": 1, "other_settings_folders": ["a/seed-3"]},
            {"finished": 0, "flops_per_token": 20, "params": 4, "tokens": 50, "in_use": 1,
             "other_settings": 0, "other_settings_folders": []},
            {"finished": 1, "flops_per_token": 5, "params": 9, "tokens": 400, "in_use": 0,
             "other_settings": 1, "other_settings_folders": ["c/seed-4"]}]
    worst = _costliest(rows)
    assert (worst["finished"], worst["flops_per_token"], worst["params"], worst["tokens"]) == (0, 20, 9, 400)
    assert (worst["in_use"], worst["other_settings"], worst["kept"]) == (1, 1, None)
    assert worst["other_settings_folders"] == ["a/seed-3", "c/seed-4"]  # every choice's conflict named
