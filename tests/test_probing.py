"""Probes during training: cadence, storage, and `vslm probe` over snapshots equal to the live values."""

import json
import math

import pytest

from conftest import tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.train.probing import PROBES, probe_due
from vslm.train.trainer import Trainer


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cadence_is_log_spaced_then_every_k():
    assert [s for s in range(21) if probe_due(s, 8, 20)] == [0, 1, 2, 4, 8, 16, 20]


def test_probes_in_training_equal_probes_over_snapshots(tmp_path, capsys):
    cfg = load_config("tiny", tiny_overrides(train__steps=20, logging__probe_every=8))
    Trainer(cfg, tmp_path / "r").fit()
    live = lines(tmp_path / "r" / PROBES)
    assert [p["step"] for p in live] == [0, 1, 2, 4, 8, 16, 20]
    first = live[0]
    assert len(first["position_loss"]) == cfg.model.context - 1 and first["icl_label"] == "short-context"
    vocab = json.loads((tmp_path / "r" / "tokenizer.json").read_text())
    log_v = math.log(len(vocab["chars"]) + 1)
    assert first["distribution"]["log_vocab"] == pytest.approx(log_v, abs=1e-6)
    assert max(abs(x - log_v) for x in first["position_loss"]) < 0.25  # flat at about ln V at init
    assert live[-1]["position_loss"][5] < first["position_loss"][5] - 0.5
    assert len(first["attention"]) == cfg.model.depth and len(first["induction"]["prefix_matching"]) == 2
    for key in ("repeat_reliability", "repeat_reliability_3"):  # of the training text: one value per run
        repeats = {p["induction"][key] for p in live}
        assert len(repeats) == 1 and 0 < repeats.pop() < 1
    assert 0 < first["induction"]["repeat_frequency_3"] < first["induction"]["repeat_frequency"] <= 1

    assert main(["probe", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert lines(tmp_path / "r" / "probes-snapshots.jsonl") == live
    assert out.endswith("probes-snapshots.jsonl")
