"""`vslm plan`: the cost fit, the choice, and a written config that trains as is."""

import pytest
from rich.console import Console

from vslm.cli import main
from vslm.commands.plan import Measured, Shape, choose, fit_cost, make_plan, print_plan, probe_cost, write_plan
from vslm.config import load_config
from vslm.train.trainer import Trainer


def test_cost_fit_recovers_a_line_and_the_choice_fits_the_budget():
    overhead, per_flop = 2e-6, 1e-10  # 2 us per token, 10 GFLOP/s
    points = [Measured(Shape(w), 0, f, 1 / (overhead + per_flop * f)) for w, f in ((32, 1e6), (64, 4e6), (96, 9e6))]
    fit = fit_cost(points)
    assert fit.overhead == pytest.approx(overhead) and fit.per_flop == pytest.approx(per_flop)
    single = fit_cost(points[:1])  # one point: through the origin
    assert single.overhead == 0 and single.tokens_per_s(1e6) == pytest.approx(points[0].tokens_per_s)
    sizes = {Shape(32): (1000, 1e6), Shape(64): (10_000, 4e6), Shape(96): (100_000, 9e6)}
    # 20 N tokens x seconds per token: 2e4 x 102 us = 2.04 s; 2e5 x 402 us = 80.4 s; 2e6 x 902 us = 1804 s
    assert choose(sizes, fit, 81.0) == Shape(64)
    assert choose(sizes, fit, 300.0) == Shape(64)  # 3.7x more than 64 needs, 6x less than 96 needs
    assert choose(sizes, fit, 500.0) == Shape(96)
    assert choose(sizes, fit, 0.1) == Shape(32)  # less than the smallest needs: the smallest


def test_plan_fills_the_hours_and_writes_a_config_that_trains(tmp_path):
    hours = 0.004
    plan = make_plan(hours, None, ["data.max_bytes=200000", "model.context=32", "train.batch_size=4",
                                   "train.device=cpu"], seconds=0.3, max_measure=3)
    out = write_plan(plan, tmp_path / "plan.toml")
    with open(tmp_path / "printed", "w") as f:
        print_plan(plan, out, Console(file=f, width=200))
    printed = (tmp_path / "printed").read_text()
    assert "20 tokens per parameter" in printed
    # the config's description and the printed plan give the same ratio (not the target 20 when it differs)
    ratio = f"{plan['tokens_per_param']:.0f} per parameter"
    assert f"({ratio})" in printed and ratio in plan["config"].description
    cfg = load_config(str(out))  # a valid config, loadable by path
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.context
    assert tokens == plan["tokens"] and cfg.model.width == plan["shape"].width
    step_s = cfg.train.batch_size * cfg.model.context / plan["predicted_tokens_per_s"]
    assert plan["predicted_train_s"] == pytest.approx(hours * 3600, abs=step_s)  # all of the hours
    assert 2 <= len(plan["measured"]) <= 3 and plan["shape"] in {m.shape for m in plan["measured"]}
    # the planned size was measured: its steps use its own speed, not the fit's
    assert plan["speed_measured"] and "its own measured speed" in printed
    assert plan["predicted_tokens_per_s"] == {m.shape: m for m in plan["measured"]}[plan["shape"]].tokens_per_s
    # five evaluations and checkpoints, the last at the last step (steps // 5 made a sixth, a few steps before it)
    every = cfg.train.eval_every
    assert len({*range(every, cfg.train.steps + 1, every), cfg.train.steps}) == 5 == len(
        {*range(cfg.train.checkpoint_every, cfg.train.steps + 1, cfg.train.checkpoint_every), cfg.train.steps})
    assert f"min of probes at {plan['probes']} steps" in " ".join(printed.split()) and plan["predicted_probe_s"] > 0
    short = load_config(str(out), ["train.steps=3", "logging.progress=false"])
    trainer = Trainer(short, tmp_path / "run")
    assert plan["tokens_per_param"] == pytest.approx(tokens / trainer.params)
    assert cfg.model.context == 32 and cfg.train.batch_size == 4 and cfg.name.startswith("plan-")
    assert trainer.fit()["val_loss"] > 0
    # the probe steps the plan counts are the ones the run writes
    assert probe_cost(short, trainer.corpus)[0] == len((tmp_path / "run" / "probes.jsonl").read_text().splitlines())


def test_plan_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--hours", "0.001", "--seconds", "0.2", "--max-measure", "1", "data.max_bytes=200000",
                 "model.context=16", "train.batch_size=2", "train.device=cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "plan.toml"
    assert load_config("plan.toml").model.width == 32  # one size measured: the smallest


def test_plan_never_replaces_an_earlier_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.toml").write_text("# an earlier plan\n")
    args = ["plan", "--hours", "0.001", "--seconds", "0.2", "--max-measure", "1", "data.max_bytes=200000",
            "model.context=16", "train.batch_size=2", "train.device=cpu"]
    # a named --out that exists: refused in one line before anything is measured
    assert main([*args, "--out", "plan.toml"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == ("vslm: error: --out plan.toml exists: plan writes a new file, nothing is "
                                         "overwritten (pick another --out, or leave it out for plan.toml, or "
                                         "plan-N.toml if taken)\n")
    # the default name taken: the next free one, printed, as `vslm demo` picks runs/demo-2
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "plan-2.toml"
    assert (tmp_path / "plan.toml").read_text() == "# an earlier plan\n"
    assert load_config("plan-2.toml").model.width == 32


@pytest.mark.parametrize("hours", ["nan", "inf", "0", "-1"])
def test_hours_that_are_not_a_positive_number_are_refused_before_measuring(tmp_path, capsys, hours):
    assert main(["plan", "--hours", hours, "--out", str(tmp_path / "p.toml")]) == 2
    assert capsys.readouterr().err.strip() == f"vslm: error: --hours must be a positive number of hours, got {hours}"
    assert not (tmp_path / "p.toml").exists()


def test_a_fit_that_is_not_json_is_one_line(tmp_path, capsys):
    (tmp_path / "fit.json").write_text("not json")
    assert main(["plan", "--hours", "1", "--from", str(tmp_path / "fit.json"), "--out", str(tmp_path / "p.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not the fit.json of `vslm scaling SPEC --out DIR` (not JSON" in err


@pytest.mark.parametrize(("words", "message"), [
    (["--seconds", "nan"], "--seconds must be a positive number of seconds per measured size, got nan"),
    (["--seconds", "-5"], "--seconds must be a positive number of seconds per measured size, got -5"),
    (["--max-measure", "0"], "--max-measure must be 1 or more sizes, got 0"),
    (["model.width=64"], "override 'model.width=64': the plan sets model.width itself"),
    (["train.lr=0.01"], "override 'train.lr=0.01': the plan sets train.lr itself"),
    (["train={steps=5}"], "override 'train={steps=5}': the plan sets train.steps, train.lr, train.min_lr"),
])
def test_what_the_plan_would_not_honour_is_refused_before_measuring(tmp_path, capsys, words, message):
    """Before: --seconds nan measured forever, --max-measure 0 ended in a traceback, and an override of a field
    the plan sets (the shape, the steps, the lr) was silently replaced in the config it wrote."""
    assert main(["plan", "--hours", "1", *words, "--out", str(tmp_path / "p.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "p.toml").exists()

