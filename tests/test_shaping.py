"""`vslm shape`: prompts reshaping a continuation's distribution, end to end on a tiny run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.train.trainer import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shape") / "r"
    Trainer(load_config("tiny", tiny_overrides(train__steps=30)), folder).fit()
    return folder


def shape(*args):
    return subprocess.run([sys.executable, "-m", "vslm", "shape", *map(str, args)], capture_output=True, text=True)


def test_shape_json_table_and_plot(run):
    r = shape(run, "--prompt", "Tom had a ball.", "--prompt", "The cat", "--continuation", " Tom ran.",
              "--samples", "2", "--tokens", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["labels"] == ["empty", "Tom had a ball.", "The cat"] and "".join(out["tokens"]) == " Tom ran."
    kl, pmi = np.array(out["per_token"]["kl"]), np.array(out["per_token"]["pmi"])
    assert kl.shape == (3, 3, 9) and np.allclose(np.diagonal(kl, axis1=0, axis2=1), 0, atol=1e-9)
    assert np.allclose(pmi[0], 0) and not np.allclose(pmi[1], 0)
    js = np.array(out["per_token"]["js"])
    assert np.allclose(js, js.transpose(1, 0, 2)) and (js <= np.log(2) + 1e-9).all()
    first = out["summary"][1]
    assert first["log_prob"] == pytest.approx(sum(out["per_token"]["log_prob"][1]))
    effect = js[1, 0]  # how "Tom had a ball." moves the predictions along y, from the first token on
    assert first["js_first"] == pytest.approx(effect[0])
    half = [t for t in range(2, len(effect) + 1) if effect[t - 1] <= effect[0] / 2]
    assert first["js_half_at"] == (half[0] if half else pytest.approx(float("nan"), nan_ok=True))
    t = np.arange(1, len(effect) + 1)
    assert first["js_slope"] == pytest.approx(np.polyfit(np.log(t), np.log(effect), 1)[0])
    assert out["summary"][0]["js_first"] == 0 and np.isnan(out["summary"][0]["js_slope"])  # empty vs itself
    assert (run / "shape.png").stat().st_size > 5000
    table = shape(run, "--prompt", "Tom", "--continuation", " ran.", "--samples", "1", "--tokens", "5")
    assert table.returncode == 0 and "KL from empty" in table.stdout and table.stdout.strip().endswith("shape.png")


def test_shape_errors_are_one_line(run):
    r = shape(run, "--prompt", "x" * 40, "--continuation", "y" * 10)
    assert r.returncode == 1 and "more than the model's context 32" in r.stderr and "Traceback" not in r.stderr
    r = shape(run, "--continuation", "y")
    assert r.returncode == 2 and "at least one --prompt" in r.stderr
