"""Runs in parallel (vslm.lab.parallel): worker processes and a local Ray instance give the runs one
process gives, bit for bit; failures are reported and do not stop the others; bad input stops before
anything trains; Ctrl-C leaves every finished run reusable. Seeds decided by the data (--resolve)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ctrl_c_reaches
from vslm.cli import main
from vslm.errors import ConfigError
from vslm.lab.experiments import run_experiment
from vslm.lab.parallel import Launcher, make_launcher
from vslm.lab.stats import spending_levels

COMMON = ["train.steps=4", "train.eval_every=0", "train.eval_windows=16", "train.checkpoint_every=2",
          "train.snapshots=false", "data.max_bytes=200000", "logging.progress=false"]


def write_experiment(tmp_path, variants=(("narrow", []), ("wide", ["model.width=48"])), seeds=2,
                     common=COMMON) -> str:
    path = tmp_path / "exp.toml"
    text = f'description = "parallel"\nbase = "tiny"\nseeds = {seeds}\noverrides = {list(common)!r}\n'
    for name, overrides in variants:
        text += f'[[variants]]\nname = "{name}"\noverrides = {list(overrides)!r}\n'
    path.write_text(text)
    return str(path)


def losses(out) -> dict:
    return {(r["variant"], r["seed"]): r["val_loss"] for r in json.loads((out / "results.json").read_text())["runs"]}


def test_worker_processes_and_ray_give_the_sequential_numbers_bit_for_bit(tmp_path):
    """At the same threads per run: a launcher otherwise picks the threads (cores / workers), and torch's CPU
    reductions split their sums by thread, which can move the last digits (docs/BENCHMARKS.md)."""
    spec = write_experiment(tmp_path, common=[*COMMON, "train.threads=1"])
    run_experiment(spec, tmp_path / "one")
    run_experiment(spec, tmp_path / "two", launcher=Launcher(jobs=2))
    expected = losses(tmp_path / "one")
    assert len(expected) == 4 and len(set(expected.values())) == 4
    assert losses(tmp_path / "two") == expected
    pytest.importorskip("ray")
    run_experiment(spec, tmp_path / "ray", launcher=make_launcher(launcher="ray"))
    assert losses(tmp_path / "ray") == expected
    # a finished run is reused wherever it trained: the Ray folders, read back by worker processes
    again = run_experiment(spec, tmp_path / "ray", launcher=Launcher(jobs=2))
    report = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert all(r["reused"] for r in report["runs"]) and losses(tmp_path / "ray") == expected
    assert again["wide"]["val_loss_mean"] == pytest.approx(sum(v for k, v in expected.items() if k[0] == "wide") / 2)


def test_a_diverged_run_is_reported_and_the_others_go_on(tmp_path):
    spec = write_experiment(tmp_path, variants=(("ok", []), ("too-hot", ["train.lr=1e4", "train.warmup=0",
                                                                         "train.grad_clip=0"])), seeds=3)
    summary = run_experiment(spec, tmp_path / "out", launcher=Launcher(jobs=2))
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    failed = [r for r in report["runs"] if "failed" in r]
    assert failed and all(r["variant"] == "too-hot" and r["failed"].startswith("diverged") for r in failed)
    assert summary["ok"]["seeds"] == 3 and summary["too-hot"]["failed"] == len(failed)
    assert "did not finish" in (tmp_path / "out" / "results.md").read_text()
    assert "Runs that did not finish" in (tmp_path / "out" / "report.html").read_text()
    if len(failed) == 3:
        assert summary["too-hot"]["verdict"] == "every run failed"


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--jobs", "two"], "--jobs must be a number"),
    (["--resolve", "0.02", "--max-seeds", "2"], "--max-seeds 2 is below"),
    (["--max-seeds", "6"], "--max-seeds goes with --resolve"),
    (["--resolve", "0"], "--resolve must be a positive, finite width"),
    (["--resolve", "inf"], "--resolve must be a positive, finite width"),
    (["--launcher", "ray", "--address", "127.0.0.1:9"], "no Ray cluster answers there"),
    (["--launcher", "ray", "--address", "nowhere"], "is not HOST:PORT"),
    (["--address", "127.0.0.1:6379"], "--address applies to --launcher ray"),
    (["--jobs", "2", "--cpus-per-run", "2"], "--cpus-per-run applies to --launcher ray"),
])
def test_bad_parallel_options_stop_before_anything_trains(tmp_path, capsys, args, message):
    spec, out = write_experiment(tmp_path), tmp_path / "out"
    for dry in ([], ["--dry-run"]):  # a dry run checks them as the run does
        assert main(["experiment", spec, "--out", str(out), *args, *dry]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not out.exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_a_variant_named_like_a_parent_folder_is_refused(tmp_path, capsys, name):
    spec, out = write_experiment(tmp_path, variants=((name, []), ("wide", ["model.width=48"]))), tmp_path / "out"
    assert main(["experiment", spec, "--out", str(out)]) == 2
    assert "variants.0.name" in capsys.readouterr().err and not out.exists() and not (tmp_path / "seed-0").exists()


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main(["experiment", write_experiment(tmp_path), "--out", str(tmp_path / "out"), "--launcher", "ray"]) == 2
    assert "pip install 'vslm[ray]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_ctrl_c_stops_the_workers_and_keeps_finished_runs(tmp_path):
    """SIGINT to the process group of `vslm experiment --jobs 2`: exit 130, the workers checkpoint and stop,
    and the same command then reuses every finished run and resumes the rest."""
    common = [w for w in COMMON if not w.startswith(("train.steps", "train.checkpoint_every"))]
    spec = write_experiment(tmp_path, seeds=3, common=[*common, "train.steps=200", "train.checkpoint_every=50"])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vslm", "experiment", spec, "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ctrl_c_reaches,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/seed-*/checkpoints/*"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    finished = {str(m.parent.relative_to(out)) for m in out.glob("*/seed-*/metrics.jsonl")
                if (lines := m.read_text().splitlines()) and json.loads(lines[-1])["step"] == 200}  # empty: none logged
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 6 and not any("failed" in r for r in runs)
    reused = {f"{r['variant']}/seed-{r['seed']}" for r in runs if r["reused"]}
    assert finished <= reused and len(reused) < 6  # stopped runs resumed, not reused


EVALUATING = """
import sys, time
from pathlib import Path
from vslm.lab.parallel import run_in_processes

def evaluate(path, threads):  # plain Python, as an evaluation after training is: no training's handler
    Path(path + ".started").touch()
    try:
        time.sleep(600)
    finally:
        Path(path + ".left").touch()  # a worker killed at the end of the grace period never gets here
    return {}

if __name__ == "__main__":
    from vslm.train.trainer import TrainingStopped
    try:
        run_in_processes(sys.argv[1:], 2, evaluate)
    except KeyboardInterrupt:
        sys.exit(130)
    except TrainingStopped:
        sys.exit(143)
"""


def ignore_ctrl_c() -> None:
    """A child's preexec_fn: SIGINT ignored, as under nohup or `cmd &` in a script."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm under nohup", 143)])
def test_a_stop_ends_a_worker_that_is_evaluating_at_once(tmp_path, how, code):
    """A worker between a training and the next (evaluating, say) stops at Ctrl-C, or when the parent
    started with SIGINT ignored is sent SIGTERM, rather than running on until the parent's grace period
    kills it, and takes no new task."""
    script = tmp_path / "evaluating.py"
    script.write_text(EVALUATING)
    items = [str(tmp_path / name) for name in ("a", "b", "c")]
    proc = subprocess.Popen([sys.executable, str(script), *items], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=ctrl_c_reaches if how == "ctrl-c" else ignore_ctrl_c)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("*.started"))) < 2:
        time.sleep(0.1)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)  # the parent only; the workers ignore SIGINT, as it does
    _, err = proc.communicate(timeout=100)  # within the 120 s grace: the old workers ran on till killed
    assert proc.returncode == code, err
    assert sorted(p.name for p in tmp_path.glob("*.left")) == ["a.left", "b.left"]
    assert not (tmp_path / "c.started").exists()


def test_sigterm_to_the_parent_alone_stops_its_workers_too(tmp_path):
    """`kill PID` (or a scheduler) signals `vslm experiment --jobs 2` only, not its workers: they checkpoint
    and stop all the same, the command exits 143, and no process of its group is left training."""
    common = [w for w in COMMON if not w.startswith(("train.steps", "train.checkpoint_every"))]
    spec = write_experiment(tmp_path, seeds=3, common=[*common, "train.steps=400", "train.checkpoint_every=50"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vslm", "experiment", spec, "--out", str(out), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/seed-*/checkpoints/*"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the parent only
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    assert "SIGTERM: every running worker wrote a checkpoint and stopped" in err
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # a worker (or the resource tracker) still in the group
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a process of the experiment's group outlived it")
    stopped = [m.parent for m in out.glob("*/seed-*/metrics.jsonl")
               if json.loads(m.read_text().splitlines()[-1])["step"] < 400]
    assert stopped and all(list((run / "checkpoints").glob("*")) for run in stopped)


def test_resolve_adds_seeds_until_the_intervals_are_narrow_enough(tmp_path):
    spec = write_experiment(tmp_path, seeds=3)
    summary = run_experiment(spec, tmp_path / "wide", resolve=10.0, max_seeds=4)  # resolved at the first look
    report = json.loads((tmp_path / "wide" / "results.json").read_text())
    assert report["seeds"] == 3 and report["resolve"]["resolved"] and len(report["resolve"]["looks"]) == 1
    assert summary["wide"]["alpha"] == pytest.approx(spending_levels([3, 4])[0])
    summary = run_experiment(spec, tmp_path / "narrow", resolve=1e-6, max_seeds=4)
    report = json.loads((tmp_path / "narrow" / "results.json").read_text())
    assert report["seeds"] == 4 and not report["resolve"]["resolved"]
    assert [look["seeds"] for look in report["resolve"]["looks"]] == [3, 4]
    assert summary["wide"]["seeds"] == 4 and summary["wide"]["alpha"] == pytest.approx(spending_levels([3, 4])[1])
    assert "--resolve 1e-06 --max-seeds 4" in report["command"]
    results = (tmp_path / "narrow" / "results.md").read_text()
    assert "Seeds added until resolved" in (tmp_path / "narrow" / "report.html").read_text()
    assert "| look | seeds | alpha spent | widest interval (±) | target (±) |" in results
    # the first 3 seeds are the ones the first experiment trained: the same numbers
    first = {k: v for k, v in losses(tmp_path / "narrow").items() if k[1] < 3}
    assert first == losses(tmp_path / "wide")
    # a wider target into it stops at 3 seeds, before the 4 summarized there: refused, the 4-seed results kept
    with pytest.raises(ConfigError, match="summarizes 4 seeds and this command resolved at 3 seeds"):
        run_experiment(spec, tmp_path / "narrow", resolve=10.0, max_seeds=4)
    assert json.loads((tmp_path / "narrow" / "results.json").read_text())["seeds"] == 4


def test_bench_parallel_times_each_launcher_and_checks_the_numbers(tmp_path, capsys):
    spec = write_experiment(tmp_path)
    assert main(["bench", "parallel", spec, "--seeds", "2", "--launchers", "1,2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == 4 and set(result["median_s"]) == {"1", "2"}
    assert result["same_losses"] == {"1": True, "2": True} and result["ratio_to_first"]["1"] == 1.0
    walls = result["wall_s"]  # one round: its ratio is the ratio of its two wall times
    assert result["ratio_to_first"]["2"] == pytest.approx(walls["2"][0] / walls["1"][0])
    assert main(["bench", "parallel", spec, "--launchers", "1,zero"]) == 2
    assert "--launchers takes worker counts" in capsys.readouterr().err
    (tmp_path / "kept" / "jobs-1").mkdir(parents=True)  # a folder of the user's: replaced without a word, before
    (tmp_path / "kept" / "jobs-1" / "mine.txt").write_text("mine")
    assert main(["bench", "parallel", spec, "--launchers", "1", "--keep", str(tmp_path / "kept")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "kept" / "jobs-1" / "mine.txt").read_text() == "mine"
