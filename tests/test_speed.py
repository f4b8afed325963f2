"""Throughput figures (MFU against a measured peak, steady tokens/s), memory in the metrics, the
device choices for CUDA, and the GPU check: its GPU-only paths skip cleanly on CPU."""

import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from conftest import REFERENCE, SHAKESPEARE, tiny_overrides
from vslm.commands.bench import measure_peak_flops, throughput
from vslm.commands.bench_gpu import run_gpu_check
from vslm.config import load_config
from vslm.model import GPT, training_flops_per_token
from vslm.model.accounting import model_flops_utilisation
from vslm.train.callbacks import MetricsLog, StopAfter, StopAtLoss
from vslm.train.trainer import Trainer, device_plan

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_mfu_arithmetic_on_a_known_case():
    cfg = load_config("tiny", ["model.vocab_size=10", "model.depth=1", "model.width=8", "model.heads=2",
                               "model.context=4"]).model
    # matmul weights: qkv 8x24 + proj 8x8 + fc 8x32 + proj 32x8 = 768; x6 = 4608
    # attention: 12 x heads 2 x head size 4 x keys 4 = 384; tied head 10x8: 6 x 80 = 480
    flops = training_flops_per_token(GPT(cfg))
    assert flops == 4608 + 384 + 480 == 5472
    out = model_flops_utilisation(flops, tokens_per_s=1000.0, peak_flops_per_s=5.472e7)
    assert out["model_flops_per_s"] == pytest.approx(5.472e6) and out["mfu"] == pytest.approx(0.1)


def test_peak_is_a_plausible_gemm_rate():
    peak = measure_peak_flops(torch.device("cpu"), sizes=(64, 128), seconds=0.01)
    assert 1e8 < peak < 1e14  # a CPU core does GFLOP/s, no CPU does 100 TFLOP/s in float32


def test_throughput_leaves_out_the_first_window():
    # a first window of 10 steps that took 5 s (compilation), then 0.1 s per step of 100 tokens
    lines = [{"step": 10, "tokens": 1000, "train_time_s": 5.0}, {"step": 15, "val_loss": 2.0, "loss": 1.0,
             "tokens": 1500, "train_time_s": 5.5}, {"step": 20, "tokens": 2000, "train_time_s": 6.0}]
    speed = throughput(lines)
    assert speed["steady_tokens_per_s"] == pytest.approx(1000.0)
    assert speed["tokens_per_s"] == pytest.approx(2000 / 6.0)
    assert speed["warmup_s"] == pytest.approx(4.0)  # 5 s for what the steady rate does in 1 s


def test_device_choices_for_cuda_and_cpu():
    tc = load_config("tiny").train
    gpu = device_plan(torch.device("cuda"), tc, bf16_supported=True)
    assert (gpu.amp_dtype, gpu.compile, gpu.pin_memory) == (torch.bfloat16, True, True)
    old_gpu = device_plan(torch.device("cuda"), tc, bf16_supported=False)
    assert old_gpu.amp_dtype is None and old_gpu.compile
    cpu = device_plan(torch.device("cpu"), tc, bf16_supported=False)
    assert (cpu.amp_dtype, cpu.compile, cpu.pin_memory) == (None, False, False)
    forced = device_plan(torch.device("cpu"), tc.model_copy(update={"dtype": "bfloat16", "compile": True}), False)
    assert forced.amp_dtype == torch.bfloat16 and forced.compile
    fp32 = device_plan(torch.device("cuda"), tc.model_copy(update={"dtype": "float32", "compile": False}), True)
    assert fp32.amp_dtype is None and not fp32.compile


def test_bf16_autocast_path_runs_on_cpu_and_memory_is_logged(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=4, train__dtype="bfloat16", train__eval_every=4,
                                             logging__tensorboard="false"))
    trainer = Trainer(cfg, tmp_path / "r")
    final = trainer.fit()
    assert trainer.amp_dtype == torch.bfloat16 and 3.5 < final["loss"] < 4.5 and final["val_loss"] < 4.5
    lines = metrics(tmp_path / "r")
    assert all(50 < m["peak_rss_mb"] < 100_000 for m in lines)  # MiB: a Python with torch holds ~hundreds
    assert "peak_gpu_mb" not in lines[-1]


def test_stop_after_and_stop_at_loss(tmp_path):
    words = tiny_overrides(train__steps=50, logging__log_every=100, train__eval_every=5, logging__tensorboard="false")
    trainer = Trainer(load_config("tiny", words), tmp_path / "a", callbacks=[MetricsLog(), StopAfter(0, min_steps=3)])
    trainer.fit()
    assert trainer.step == 3 and [m["step"] for m in metrics(tmp_path / "a")] == [3]  # the last step is logged
    target = StopAtLoss(10.0)  # reached at the first evaluation
    trainer = Trainer(load_config("tiny", words), tmp_path / "b", callbacks=[MetricsLog(), target])
    trainer.fit()
    assert trainer.step == 5 and target.reached["step"] == 5 and target.reached["val_loss"] < 10
    assert 0 < target.reached["train_time_s"] <= target.reached["wall_s"]


def test_gpu_check_machinery_on_cpu(tmp_path):
    small = ["model.depth=2", "model.width=32", "model.heads=2", "model.context=32", "train.batch_size=4",
             "data.max_bytes=200000", "train.eval_windows=8", "train.eval_every=2"]
    out = tmp_path / "gpu_check.json"
    recipes = {"first": [], "muon": ["train.optimizer=muon", "train.steps=40"]}
    result = run_gpu_check(0.5, 1.0, out, Console(file=open(tmp_path / "log", "w")), models={"small": []},
                           extra=small, device=torch.device("cpu"), recipes=recipes)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    part = result["model_small"]
    assert part["steps"] >= 3 and part["tokens_per_s"] > 0 and part["peak_rss_mb"] > 0, part
    assert 0 < part["mfu_vs_measured_fp32"] < 1 and result["peak_fp32_flops_per_s"] > 1e8
    # its kernel ceiling: the step's products and attention at the step's shapes (4 x 32 tokens), timed alone
    ceiling = part["ceiling"]
    assert ceiling["tokens_per_step"] == 4 * 32 and ceiling["dtype"] == "torch.float32"
    shapes = sorted((m["fan_in"], m["fan_out"], m["uses"]) for m in ceiling["matmuls"])
    head = [s for s in shapes if s[2] == 1]  # the tied head (32 -> the vocabulary), once a step
    assert shapes == sorted([(32, 96, 2), (32, 32, 2), (32, 128, 2), (128, 32, 2), *head]) and head[0][0] == 32
    assert [(a["heads"], a["head_dim"], a["keys"], a["uses"]) for a in ceiling["attention"]] == [(2, 16, 32, 2)]
    step_ms = sum(k["ms"] * k["uses"] for k in ceiling["matmuls"] + ceiling["attention"])
    assert ceiling["matmul_ms_per_step"] + ceiling["attention_ms_per_step"] == pytest.approx(step_ms, abs=2e-3)
    assert ceiling["tokens_per_s"] == pytest.approx(128 / step_ms * 1e3, rel=1e-3)
    assert ceiling["mfu_vs_measured_fp32"] > 0 and part["model_share_of_ceiling"] > 0
    shakespeare = result["shakespeare"]
    if SHAKESPEARE.is_file():  # every recipe runs, each under its own key, with its overrides
        assert shakespeare["steps"] >= 1 and "error" not in shakespeare and shakespeare["recipe"] == "first"
        muon = result["shakespeare_muon"]
        assert muon["recipe"] == "muon" and "error" not in muon and 1 <= muon["steps"] <= 40, muon
        assert muon["overrides"][:2] == recipes["muon"]
    else:  # skipped once, not once a recipe
        assert "skipped" in shakespeare and "shakespeare_muon" not in result


def test_gpu_check_repeats_a_recipe_and_takes_medians(tmp_path):
    from vslm.commands.bench_gpu import shakespeare_medians

    if SHAKESPEARE.is_file():
        small = ["model.depth=1", "model.width=32", "model.heads=2", "model.context=32", "train.batch_size=4",
                 "train.eval_windows=8", "train.eval_every=2", "train.steps=4"]
        result = run_gpu_check(0.5, 5.0, None, Console(file=open(tmp_path / "log", "w")), models={}, extra=small,
                               device=torch.device("cpu"), recipes={"r": []}, repeat=2)
        assert [k for k in result if k.startswith("shakespeare")] == ["shakespeare_1", "shakespeare_2",
                                                                      "shakespeare_medians"]
        assert result["shakespeare_medians"]["r"]["runs"] == 2 and result["shakespeare_1"]["steps"] == 4
    # a run that missed the target counts as the slowest: the median of (10, 20, missed) is 20
    runs = {"shakespeare_a_1": {"recipe": "a", "reached": {"wall_s": 20.0, "train_time_s": 15.0}},
            "shakespeare_a_2": {"recipe": "a", "reached": None},
            "shakespeare_a_3": {"recipe": "a", "reached": {"wall_s": 10.0, "train_time_s": 8.0}},
            "shakespeare_b_1": {"recipe": "b", "reached": None}}
    medians = shakespeare_medians(runs)
    assert medians["a"] == {"runs": 3, "reached": 2, "median_wall_s": 20.0, "wall_s": [10.0, 20.0],
                            "median_train_time_s": 15.0, "train_time_s": [8.0, 15.0]}
    assert medians["b"]["reached"] == 0 and medians["b"]["median_wall_s"] is None


def test_gpu_check_profiles_a_training_step_by_kind_of_op(tmp_path):
    small = ["model.depth=2", "model.width=32", "model.heads=2", "model.context=32", "train.batch_size=4",
             "data.max_bytes=200000", "train.eval_windows=8"]
    result = run_gpu_check(0.5, 1.0, tmp_path / "g.json", Console(file=open(tmp_path / "log", "w")), models={},
                           extra=small, device=torch.device("cpu"), recipes={}, profile={"small": []})
    prof = result["profile_small"]
    assert "error" not in prof, prof
    assert prof["steps"] == 10 and 0 < prof["busy_ms_per_step"] and 0 < prof["busy_share_of_wall"] <= 1.5
    kinds = prof["kinds"]
    assert sum(k["share_of_busy"] for k in kinds.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(k["ms_per_step"] for k in kinds.values()) == pytest.approx(prof["busy_ms_per_step"], rel=1e-2)
    # every matrix product of the step lands in its kind: the top list names them, and the kind holds them
    mm = sum(ms for name, ms, _ in prof["top"] if name in ("aten::mm", "aten::addmm", "aten::bmm"))
    assert mm > 0 and kinds["matrix products"]["ms_per_step"] >= mm - 1e-3
    assert kinds["optimizer"]["ms_per_step"] > 0  # AdamW's step


def test_gpu_check_ends_at_a_stop_signal_and_keeps_what_it_measured(tmp_path, monkeypatch):
    """A SIGTERM (gpu_check.sh's timeout) mid-run is not a compile failure to retry eagerly, nor a part's
    error to record before the next part: the check stops there, with the parts before it saved. The
    device run of 2026-12-04 retried a SIGTERM'd model without compile and went on past its timeout."""
    from vslm.commands import bench_gpu
    from vslm.train.run_folder import METRICS
    from vslm.train.trainer import TrainingStopped

    fits = []

    def fit(self):
        fits.append(self.run_dir.name)
        if len(fits) > 1:  # the second model gets the signal
            raise TrainingStopped("SIGTERM: stopped at step 3", 15)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / METRICS).write_text('{"step": 1}\n')  # the first one "trains"
        return {}

    monkeypatch.setattr(Trainer, "fit", fit)
    small = ["model.depth=1", "model.width=32", "model.heads=2", "model.context=32", "train.batch_size=4",
             "data.max_bytes=200000", "train.eval_windows=8", "train.compile=true"]
    monkeypatch.setattr(bench_gpu, "time_model", lambda name, o, *a: (bench_gpu._train("tiny", o, [], tmp_path / name),
                                                                        {"ok": name})[1])
    out = tmp_path / "g.json"
    with pytest.raises(TrainingStopped):
        run_gpu_check(0.5, 1.0, out, Console(file=open(tmp_path / "log", "w")), models={"a": small, "b": small},
                      device=torch.device("cpu"), recipes={"r": []})
    assert fits == ["as-chosen", "as-chosen"]  # no eager retry of "b"
    saved = json.loads(out.read_text())
    assert saved["model_a"]["ok"] == "a" and "model_b" not in saved and "shakespeare" not in saved


def test_gpu_check_needs_cuda_and_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, "-m", "vslm", "bench", "gpu"], capture_output=True, text=True)
    assert r.returncode == 1 and "needs a CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_bench_is_subcommands_and_a_bare_bench_lists_them():
    r = subprocess.run([sys.executable, "-m", "vslm", "bench"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    for name in ("train", "speedrun", "prepare", "attention", "sample", "gpu"):
        assert f"\n    {name}" in r.stderr, name
    r = subprocess.run([sys.executable, "-m", "vslm", "bench", "--speedrun"], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments: --speedrun" in r.stderr  # the old flags are gone


def test_each_compiled_run_starts_from_an_empty_dynamo_cache(tmp_path, monkeypatch):
    """Dynamo keys its compiled code on GPT.forward for the whole process: runs built one after another in one
    process (an experiment's --jobs 1, the default on CUDA; plan's ladder; one adapter per group) recompiled
    into one cache, and from its 9th entry (torch's recompile limit) trained uncompiled, with only a log line.
    Each compiled run now empties it first (compiling itself is lazy: nothing is compiled here)."""
    import torch._dynamo

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    words = tiny_overrides(train__steps=1, logging__tensorboard="false")
    Trainer(load_config("tiny", words), tmp_path / "eager")
    assert resets == []
    for i in range(2):
        trainer = Trainer(load_config("tiny", [*words, "train.compile=true"]), tmp_path / f"compiled-{i}")
        assert trainer.plan.compile and len(resets) == i + 1


@pytest.mark.skipif(not (REFERENCE.is_file() and SHAKESPEARE.is_file()), reason="shared/ reference or data absent")
def test_bench_json_names_the_throughput_fields():
    r = subprocess.run([sys.executable, "-m", "vslm", "bench", "train", "--steps", "3", "--eval-batches", "1",
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("mfu", "model_flops_per_s", "peak_flops_per_s", "peak_rss_mb"):
        assert out[key] > 0, key
    assert out["model_flops_per_s"] == pytest.approx(out["flops_per_token"] * out["vslm_tokens_per_s"], rel=1e-3)
    # the JSON gives mfu to 4 decimals: on a loaded machine (MFU of a few percent) that is more than 0.1%
    assert out["mfu"] == pytest.approx(out["model_flops_per_s"] / out["peak_flops_per_s"], rel=1e-3, abs=5e-5)


@cuda_only
def test_cuda_run_uses_bf16_compile_and_reports_gpu_memory(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=6, train__eval_every=6, logging__tensorboard="false"))
    trainer = Trainer(cfg, tmp_path / "r")
    final = trainer.fit()
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.bfloat16 and trainer.plan.compile
    assert final["peak_gpu_mb"] > 0 and final["val_loss"] < 4.5


@cuda_only
def test_gpu_check_on_cuda(tmp_path):
    small = ["model.depth=2", "model.width=64", "model.heads=2", "data.max_bytes=200000"]
    result = run_gpu_check(5, 5, tmp_path / "g.json", Console(file=open(tmp_path / "log", "w")),
                           models={"small": small})
    assert result["peak_bf16_flops_per_s"] > 1e12 and result["model_small"]["peak_gpu_mb"] > 0


# compiling takes 23-31 s on a 2-core CPU (warm and cold inductor cache): in the default run since the suite
# runs in parallel (make test), so that CI compiles the training step on CPU
def test_compiled_training_on_cpu_matches_eager(tmp_path):
    words = tiny_overrides(train__steps=3, train__eval_every=3, logging__tensorboard="false")
    eager = Trainer(load_config("tiny", words), tmp_path / "eager").fit()
    compiled = Trainer(load_config("tiny", [*words, "train.compile=true"]), tmp_path / "compiled")
    assert compiled.plan.compile
    assert compiled.fit()["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)


def test_bench_overrides_that_would_change_one_side_only_are_refused_before_anything_runs(tmp_path, capsys):
    """`bench train model.ffn_mult=2 train.steps=40 train.lr=0.01` timed a 542k-parameter model for 40 steps
    against the reference's 804k for 10 and printed a ratio; `model.depth=x` was a traceback; a typo in a
    speed-run override was said after the reference's two minutes. Refused before either file is read: stand-ins
    serve (CI has no shared/)."""
    from vslm.cli import main

    (tmp_path / "ref.py").write_text("raise SystemExit('the reference ran')\n")
    (tmp_path / "input.txt").write_text("To be, or not to be\n" * 50)
    files = ["--data", str(tmp_path / "input.txt"), "--reference", str(tmp_path / "ref.py")]
    for words, line in ((["model.ffn_mult=2"], "model.ffn_mult=2 would change vslm's only"),
                        (["train.steps=40"], "train.steps=40 would change vslm's only")):
        assert main(["bench", "train", *files, "--steps", "3", "--eval-batches", "1", *words]) == 2
        assert line in capsys.readouterr().err
    assert main(["bench", "train", *files, "--steps", "3", "--eval-batches", "1", "model.depth=x"]) == 2
    assert "model.depth" in capsys.readouterr().err
    for word in ("data.source=other.txt", "data={source='other.txt'}", "train.eval_windows=10", "model.context=128"):
        assert main(["bench", "speedrun", *files, word]) == 2
        assert f"{word} would change the task on vslm's side only" in capsys.readouterr().err
    assert main(["bench", "speedrun", *files, "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_the_gpu_summary_prints_a_model_whose_kernel_ceiling_failed(tmp_path):
    """time_model records a ceiling that could not be timed as {"error": ...}; the summary read its timings and
    raised KeyError, losing the lines of the models after it (the JSON was already written)."""
    from vslm.commands.bench_gpu import _print_summary

    part = {"params": 49.5e6, "tokens_per_s": 1e6, "mfu_vs_measured_bf16": 0.5, "mfu_vs_nominal_bf16": 0.35,
            "peak_gpu_mb": 15600.0, "warmup_and_compile_s": 20.0}
    result = {"model_50M": part | {"ceiling": {"error": "RuntimeError: no kernel"}}, "model_10M": part}
    with open(tmp_path / "log", "w") as f:
        _print_summary(result, Console(file=f, width=200))
    text = (tmp_path / "log").read_text()
    assert " 50M: 49.5M params" in text and " 10M: 49.5M params" in text and "no kernel" not in text
