"""`vslm plan`: the cost fit, the choice, and a written config that trains as is."""

import pytest

from vslm.cli import main
from vslm.config import load_config
from vslm.plan import TOKENS_PER_PARAM, Measured, Shape, choose, fit_cost
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
    assert choose(sizes, fit, 2000.0) == Shape(96)
    assert choose(sizes, fit, 1.0) == Shape(32)  # nothing fits: the smallest


def test_plan_writes_a_config_that_trains(tmp_path, capsys):
    out = tmp_path / "plan.toml"
    code = main(["plan", "--hours", "0.002", "--seconds", "0.3", "--max-measure", "3", "--out", str(out),
                 "data.max_bytes=200000", "model.context=32", "train.batch_size=4", "train.device=cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "20 tokens per parameter" in printed and printed.strip().splitlines()[-1] == str(out)
    cfg = load_config(str(out))  # a valid config, loadable by path
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.context
    trainer = Trainer(load_config(str(out), ["train.steps=3", "logging.progress=false"]), tmp_path / "run")
    assert tokens == pytest.approx(TOKENS_PER_PARAM * trainer.params, rel=0.05, abs=128)
    assert cfg.model.context == 32 and cfg.train.batch_size == 4 and cfg.name.startswith("plan-")
    assert trainer.fit()["val_loss"] > 0
