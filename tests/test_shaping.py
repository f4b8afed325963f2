"""`vslm shape`: prompts reshaping a continuation's distribution, end to end on a tiny run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_in_process, tiny_overrides
from vslm.config import load_config
from vslm.train.trainer import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shape") / "r"
    Trainer(load_config("tiny", tiny_overrides(train__steps=30)), folder).fit()
    return folder


@pytest.fixture
def shape(capfd):
    """`vslm shape ARGS`, in this process (one test below runs it as a real command too)."""
    return lambda *args: cli_in_process(capfd, "shape", *args)


def test_shape_json_table_and_plot(run, shape):
    r = shape(run, "--prompt", "Tom had a ball.", "--prompt", "The cat", "--continuation", " Tom ran.",
              "--samples", "2", "--tokens", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # strict JSON
    assert out["labels"] == ["(empty)", "Tom had a ball.", "The cat"] and "".join(out["tokens"]) == " Tom ran."
    assert [r["prompt"] for r in out["summary"]] == ["", "Tom had a ball.", "The cat"] and "note" not in out
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
    assert first["js_half_at"] == (half[0] if half else None)  # strict JSON: an undefined number is null
    t = np.arange(1, len(effect) + 1)
    assert first["js_slope"] == pytest.approx(np.polyfit(np.log(t), np.log(effect), 1)[0])
    assert out["summary"][0]["js_first"] == 0 and out["summary"][0]["js_slope"] is None  # empty vs itself
    assert out["summary"][0]["js_half_at"] is None  # no effect to halve
    assert (run / "shape.png").stat().st_size > 5000
    table = shape(run, "--prompt", "Tom", "--continuation", " ran.", "--samples", "1", "--tokens", "5")
    assert table.returncode == 0 and "KL from empty" in table.stdout and table.stdout.strip().endswith("shape.png")


def test_brackets_in_prompts_are_text_not_rich_markup(tmp_path, shape):
    """'[/x]' in a prompt or continuation used to stop the command (rich read it as a closing tag)."""
    folder = tmp_path / "bytes"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, data__tokenizer="byte")), folder).fit()
    table = shape(folder, "--prompt", "Tom [/b]", "--continuation", " [/x] [bold]ran", "--samples", "1",
                  "--tokens", "5")
    assert table.returncode == 0, table.stderr
    assert "reshape ' [/x] [bold]ran'" in table.stdout and "sample under 'Tom [/b]'" in table.stdout
    course = shape(folder, "--prompt", "[red]", "--continuation", " [/x]", "--over-training")
    assert course.returncode == 0, course.stderr
    assert "reshape ' [/x]' over training" in course.stdout and "'[red]'" in course.stdout


def test_shape_errors_are_one_line(run, shape):
    r = subprocess.run([sys.executable, "-m", "vslm", "shape", str(run), "--prompt", "x" * 40, "--continuation",
                        "y" * 10], capture_output=True, text=True)  # the real command, once
    assert r.returncode == 1 and "more than the model's context 32" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = shape(run, "--continuation", "y")
    assert r.returncode == 2 and "at least one --prompt" in r.stderr


def test_shape_without_an_end_of_text_token(tmp_path, shape):
    """A character run of one text (a play, as tiny Shakespeare is) has no end-of-text token: y1 stands for
    the empty prompt, a 1-token continuation is refused in one line, and the table says what it scores; a
    prompt of the whole context and a 1-token continuation fit (the model never reads the token it predicts)."""
    play = tmp_path / "play.txt"  # one document, written here: no shared data needed
    play.write_text("ROMEO:\nGive me an empty box, a bat, a tax.\n\nJULIET:\nI may, if you say so.\n\n" * 400)
    folder = tmp_path / "plays"
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, data__source=str(play))), folder).fit()
    r = shape(folder, "--prompt", "ROMEO:", "--continuation", "x")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "is 1 token" in r.stderr and "Traceback" not in r.stderr
    r = shape(folder, "--prompt", "ROMEO:", "--prompt", "empty", "--continuation", " me", "--samples", "1",
              "--tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "no end-of-text token" in r.stdout and "JS at 1st scored" in r.stdout.replace("\n", " ")
    assert "(empty)" in r.stdout and "'empty'" in r.stdout  # the empty prompt and a prompt that says "empty"
    r = shape(folder, "--prompt", "x" * 31, "--continuation", "ab", "--samples", "1", "--tokens", "2")
    assert r.returncode == 0, r.stderr  # 31 + 1 tokens read, the context
    r = shape(folder, "--prompt", "x" * 32, "--continuation", "ab")
    assert r.returncode == 1 and "put 33 tokens before the last one it predicts" in r.stderr


def test_shape_over_training_measures_every_snapshot_as_shape_does_at_it(run, tmp_path, shape):
    import torch

    from vslm.probes import shape_metrics
    from vslm.train.run_folder import load_run_at

    r = shape(run, "--prompt", "Tom had a ball.", "--prompt", "The cat", "--continuation", " Tom ran.",
              "--over-training", "--json", "--plot", tmp_path / "course.png")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["steps"] == [0, 1, 2, 4, 8, 16, 30]  # the snapshots (the last step's too)
    assert len(out["rows"]) == 7 * 2 and np.array(out["js"]).shape == (7, 2, 9)
    assert (tmp_path / "course.png").stat().st_size > 5000
    final = json.loads(shape(run, "--prompt", "Tom had a ball.", "--prompt", "The cat", "--continuation",
                             " Tom ran.", "--samples", "1", "--tokens", "2", "--json").stdout)
    last = [row for row in out["rows"] if row["step"] == 30]
    shift = final["summary"][1]["log_prob"] - final["summary"][0]["log_prob"]
    assert last[0]["log_prob_shift"] == pytest.approx(shift)
    assert last[1]["js_from_empty"] == pytest.approx(final["summary"][2]["js_from_empty"])
    # step 8 from its snapshot file, measured directly
    _, model, tokenizer, _ = load_run_at(run, run / "snapshots" / "step_00000008.safetensors")
    with torch.no_grad():
        m = shape_metrics(model, [tokenizer.encode("The cat")], tokenizer.encode(" Tom ran."),
                          empty_id=tokenizer.eos_id)
    at8 = next(row for row in out["rows"] if row["step"] == 8 and row["prompt"] == "The cat")
    assert at8["log_prob_shift"] == pytest.approx(float(m["log_prob_shift_total"][1, 0]))
    assert at8["js_from_empty"] == pytest.approx(float(m["js"][1, 0].mean()))
    assert np.allclose(out["js"][out["steps"].index(8)][1], m["js"][1, 0])
    at0 = next(row for row in out["rows"] if row["step"] == 0 and row["prompt"] == "The cat")
    assert at0["js_from_empty"] != pytest.approx(at8["js_from_empty"])  # each step its own weights
    table = shape(run, "--prompt", "Tom", "--continuation", " ran.", "--over-training")
    assert table.returncode == 0 and "over training" in table.stdout
    assert table.stdout.strip().endswith("shape-course.png")


def test_shape_over_training_takes_the_last_checkpoint_and_refuses_in_one_line(run, tmp_path, shape):
    import shutil

    # a run whose last step has a checkpoint but no snapshot (stopped and resumed past it, say)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "snapshots" / "step_00000030.safetensors").unlink()
    from vslm.train.checkpoint import load_checkpoint, save_checkpoint

    weights, _ = load_checkpoint(copy / "snapshots" / "step_00000016.safetensors")  # a snapshot gone NaN, as a
    weights["embed.weight"][0, 0] = float("nan")  # diverged run's can: its row is NaN, the others are measured
    save_checkpoint(copy / "snapshots" / "step_00000016.safetensors", weights)
    save_checkpoint(copy / "snapshots" / "step_00000031.safetensors", weights)  # the newest too
    r = shape(copy, "--prompt", "The cat", "--continuation", " Tom ran.", "--over-training", "--json")
    assert r.returncode == 0, r.stderr
    nan = [row["js_from_empty"] is None for row in json.loads(r.stdout)["rows"]]
    assert nan[-3:] == [True, False, True]  # steps 16, 30 and 31
    (copy / "snapshots" / "step_00000031.safetensors").unlink()
    r = shape(copy, "--prompt", "The cat", "--prompt", "The cat", "--continuation", " Tom ran.", "--over-training",
              "--json", "--plot", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr  # a repeated prompt too
    out = json.loads(r.stdout)
    assert out["steps"][-1] == 30 and (copy / "checkpoints" / "step_00000030.safetensors").is_file()
    nan = [row["js_from_empty"] is None for row in out["rows"] if row["step"] in (16, 30)]
    assert nan == [True, True, False, False]  # two prompts a step
    final = json.loads(shape(run, "--prompt", "The cat", "--continuation", " Tom ran.", "--samples", "1",
                             "--tokens", "2", "--json").stdout)
    assert out["rows"][-1]["js_from_empty"] == pytest.approx(final["summary"][1]["js_from_empty"])
    folder = tmp_path / "plain"
    Trainer(load_config("tiny", tiny_overrides(train__steps=3, train__snapshots="false")), folder).fit()
    for where, args, code, message in (
            (folder, [], 1, "needs snapshots of"),
            (tmp_path / "nope", [], 1, "not a run folder"),
            (run, ["--continuation", ""], 1, "--continuation is empty"),
            (run, ["--prompt", "x" * 40], 1, "more than the model's context")):
        args = ["--prompt", "Tom", "--continuation", " ran.", *args]
        r = shape(where, *args, "--over-training")
        assert r.returncode == code and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
