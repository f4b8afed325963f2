"""What can go wrong in a run, and what the lab does then: a non-finite state is never checkpointed,
a bad newest checkpoint is passed over with a warning, a full disk or a file-size limit is one line,
SIGTERM checkpoints and stops, and a kill at any point of a checkpoint write still resumes exactly."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import files_in, tiny_overrides
from vslm.config import load_config
from vslm.files import atomic_write, default_mode, write_text
from vslm.train.callbacks import Callback
from vslm.train.checkpoint import list_checkpoints, load_checkpoint, nonfinite, save_checkpoint
from vslm.train.trainer import Trainer, TrainingDiverged, default_callbacks


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def same_lines(a, b):
    drop = ("tokens_per_s", "train_time_s", "peak_rss_mb")
    return [{k: v for k, v in r.items() if k not in drop} for r in a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in b]


def run_cli(*args, pre: str = ""):
    code = f"import sys\n{pre}\nfrom vslm.cli import main\nsys.exit(main({[str(a) for a in args]!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


class InfiniteGradient(Callback):
    """At step `at`, after the loss was read and before the update: a gradient of inf (as lr=inf or an
    overflow would make), so the update leaves non-finite weights and optimizer state behind."""

    def __init__(self, at: int):
        self.at = at

    def on_before_update(self, trainer):
        if trainer.step + 1 == self.at:
            next(p for p in trainer.model.parameters() if p.grad is not None).grad.fill_(float("inf"))


def test_a_non_finite_state_is_never_checkpointed_nor_named_good(tmp_path, cli):
    cfg = load_config("tiny", tiny_overrides(train__steps=20, train__checkpoint_every=4, train__keep_last=5,
                                             logging__probe_every=0))
    trainer = Trainer(cfg, tmp_path / "r", callbacks=default_callbacks(cfg) + [InfiniteGradient(8)])
    with pytest.raises(TrainingDiverged, match=r"tensors are not finite .* at step 8.*step_00000004"):
        trainer.fit()
    found = list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [s for s, _ in found] == [4]
    assert metrics(tmp_path / "r")[-1]["step"] == 8  # the loss of step 8 was finite: it was read before the update
    r = cli("sample", tmp_path / "r", "--num", "1", "--tokens", "5")
    assert r.returncode == 0, r.stderr


def test_a_corrupt_or_non_finite_newest_checkpoint_is_passed_over_with_a_warning(tmp_path, cli):
    words = tiny_overrides(train__steps=12, train__checkpoint_every=4, train__keep_last=5, logging__probe_every=0)
    Trainer(load_config("tiny", words), tmp_path / "straight").fit()
    run = tmp_path / "r"
    shutil.copytree(tmp_path / "straight", run)
    ckpts = run / "checkpoints"
    (ckpts / "step_00000012.safetensors").write_bytes(b"cut short by a crash")
    weights, state = load_checkpoint(ckpts / "step_00000008.safetensors")
    weights = {k: v.clone() for k, v in weights.items()}
    next(iter(weights.values())).fill_(float("nan"))
    assert nonfinite(weights, state)
    save_checkpoint(ckpts / "step_00000008.safetensors", weights, state)
    r = cli("sample", run, "--num", "1", "--tokens", "5")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and "step_00000012" in warnings[0] and "non-finite" in warnings[1]
    r = cli("train", "--resume", "--out", run)  # continues from step 4, exactly
    assert r.returncode == 0, r.stderr
    assert "step_00000012" in r.stderr and same_lines(metrics(run), metrics(tmp_path / "straight"))
    assert [s for s, _ in list_checkpoints(ckpts)] == [4, 8, 12]
    # --checkpoint picks; without --resume it is refused in one line
    r = cli("train", "--resume", "--out", run, "--checkpoint", ckpts / "step_00000004.safetensors",
                "train.steps=13")
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in metrics(run)] == [*range(1, 14)]
    assert "moved the newer checkpoints aside" in r.stderr  # 8 and 12 of the steps trained again: kept aside
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "step_00000004.safetensors", "step_00000008.safetensors", "step_00000008.safetensors.corrupt",
        "step_00000008.safetensors.superseded", "step_00000012.safetensors", "step_00000012.safetensors.corrupt",
        "step_00000012.safetensors.superseded", "step_00000013.safetensors"]
    r = cli("train", "tiny", "--out", tmp_path / "x", "--checkpoint", ckpts / "step_00000004.safetensors")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "--resume" in r.stderr


def test_a_corrupt_checkpoint_is_moved_aside_and_never_pushes_a_good_one_out(tmp_path, cli):
    words = tiny_overrides(train__steps=12, train__checkpoint_every=5, train__keep_last=2, logging__probe_every=0)
    run = tmp_path / "r"
    Trainer(load_config("tiny", words), run).fit()
    ckpts = run / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [10, 12]
    with open(ckpts / "step_00000012.safetensors", "r+b") as f:
        f.truncate(1000)
    r = cli("train", "--resume", "--out", run, "train.steps=13")  # from step 10
    assert r.returncode == 0, r.stderr
    assert "step_00000012.safetensors" in r.stderr and "moved it aside to step_00000012.safetensors.corrupt" in r.stderr
    assert [s for s, _ in list_checkpoints(ckpts)] == [10, 13]  # the good 10 is kept, not the corrupt 12
    assert (ckpts / "step_00000012.safetensors.corrupt").stat().st_size == 1000  # nothing lost


def test_a_checkpoint_of_another_shape_or_a_snapshot_is_one_line(tmp_path, capsys):
    from vslm.cli import main

    for name, width in (("wide", 64), ("demo", 32)):
        Trainer(load_config("tiny", tiny_overrides(train__steps=2, model__width=width, logging__probe_every=0)),
                tmp_path / name).fit()
    wide, other = tmp_path / "wide", tmp_path / "demo" / "checkpoints" / "step_00000002.safetensors"

    def err_of(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1, err
        return err

    before = files_in(wide)
    err = err_of("train", "--resume", "--out", wide, "--checkpoint", other, "train.steps=4")
    assert str(other) in err and "is not one of" in err  # another run's: refused before its shapes are read
    inside = wide / "checkpoints" / "step_00000003.safetensors"  # the same file among the run's own
    shutil.copy(other, inside)
    err = err_of("train", "--resume", "--out", wide, "--checkpoint", inside, "train.steps=4")
    assert str(inside) in err and re.search(r"embed.weight is \[\d+, 32\] there, \[\d+, 64\] in the model", err)
    inside.unlink()
    # another run's weights under this run's tokenizer (same shapes, other ids: silently garbled text): refused
    assert f"checkpoint {other} is not in {wide}: that run's tokenizer" in err_of("sample", wide, "--checkpoint", other,
                                                                                 "--tokens", "5")
    shutil.copy(other, inside)  # among the run's own files, of another shape: named
    assert "does not fit the model" in err_of("sample", wide, "--checkpoint", inside, "--tokens", "5")
    inside.unlink()
    # the run's checkpoints/ linked to other storage: its own files still, named by either path
    store = tmp_path / "store"
    (wide / "checkpoints").rename(store)
    (wide / "checkpoints").symlink_to(store)
    own = sorted(store.iterdir())[-1]
    for named in (wide / "checkpoints" / own.name, own):
        assert main(["sample", str(wide), "--checkpoint", str(named), "--tokens", "3"]) == 0, named
    (wide / "checkpoints").unlink()
    store.rename(wide / "checkpoints")
    snapshot = wide / "snapshots" / "step_00000001.safetensors"
    assert "weights only" in err_of("train", "--resume", "--out", wide, "--checkpoint", snapshot, "train.steps=4")
    # a file that is not there: a usage error (exit 2), named with the folder that holds the run's checkpoints
    capsys.readouterr()
    missing = wide / "checkpoints" / "step_00000500.safetensors"
    assert main(["train", "--resume", "--out", str(wide), "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: checkpoint {missing}: no such file" in err
    assert str(wide / "checkpoints") in err
    assert files_in(wide) == before


def test_a_file_size_limit_is_one_line_and_the_run_resumes_once_there_is_room(tmp_path):
    # a constant rate: the run first trained to 10 steps has the schedule of the one trained to 20
    words = tiny_overrides(train__steps=20, train__checkpoint_every=10, train__eval_every=10,
                           train__schedule="constant", logging__probe_every=0)
    Trainer(load_config("tiny", words), tmp_path / "straight").fit()
    run = tmp_path / "r"
    Trainer(load_config("tiny", [*words, "train.steps=10"]), run).fit()
    size = (run / "checkpoints" / "step_00000010.safetensors").stat().st_size
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2}))"
    r = run_cli("train", "--resume", "--out", run, "train.steps=20", pre=limit)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "File too large" in r.stderr and str(run / "checkpoints") in r.stderr and "MB needed" in r.stderr
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [10]  # nothing lost
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written file left
    r = run_cli("train", "--resume", "--out", run, "train.steps=20")
    assert r.returncode == 0, r.stderr
    assert same_lines(metrics(run), metrics(tmp_path / "straight"))


STOPPER = """
import os, signal, sys
from vslm.cli import main
from vslm.train import callbacks

class SignalAt(callbacks.Callback):
    def on_step_end(self, trainer, metrics):
        if trainer.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

original = callbacks.MetricsLog.on_train_start
def on_train_start(self, trainer):
    original(self, trainer)
    trainer.callbacks.append(SignalAt())
callbacks.MetricsLog.on_train_start = on_train_start
sys.exit(main(sys.argv[1:]))
"""


def test_a_file_written_half_way_leaves_the_old_one_whole(tmp_path):
    """What a rerun reads back to skip finished work (a result, a metrics log cut back on resume) is written
    whole or not at all: a stop in the middle leaves the old file, no temporary file, and the usual mode."""
    path = tmp_path / "eval.json"
    write_text(path, '{"done": 1}\n')

    def stopped(f):
        f.write(b'{"do')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, stopped)
    assert path.read_text() == '{"done": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert path.stat().st_mode & 0o777 == default_mode()


def test_sigterm_checkpoints_and_stops_and_the_resume_is_exact(tmp_path):
    words = tiny_overrides(train__steps=20, train__checkpoint_every=0, train__eval_every=5, model__dropout=0.1,
                           logging__probe_every=0)
    Trainer(load_config("tiny", words), tmp_path / "straight").fit()
    script = tmp_path / "stop.py"
    script.write_text(STOPPER)
    r = subprocess.run([sys.executable, str(script), "train", "tiny", *words, "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert r.stderr.count("\n") == 1 and "--resume" in r.stderr
    assert r.stderr.startswith("vslm: SIGTERM: stopped at step 8")  # asked for, not an error
    assert [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")] == [8]  # the next step checkpointed
    r = run_cli("train", "--resume", "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert same_lines(metrics(tmp_path / "r"), metrics(tmp_path / "straight"))


def test_the_clock_adds_checkpoints_between_scheduled_ones(tmp_path):
    words = tiny_overrides(train__steps=6, train__checkpoint_every=0, train__keep_last=10,
                           train__checkpoint_minutes=1e-9, logging__probe_every=0)
    Trainer(load_config("tiny", words), tmp_path / "r").fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")] == [1, 2, 3, 4, 5, 6]
    Trainer(load_config("tiny", [*words, "train.checkpoint_minutes=0"]), tmp_path / "off").fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "off" / "checkpoints")] == [6]


KILL_INSIDE_WRITE = """
import os, signal, sys
from vslm.config import load_config
from vslm.train.trainer import Trainer

point = sys.argv[2]
real_replace, real_fsync = os.replace, os.fsync

def hit(path):  # the step-16 checkpoint's write (its temporary file or its name), not the snapshot's before it
    return "step_00000016" in path and "/checkpoints/" in path

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst):
    if hit(str(dst)) and point == "before_rename":
        kill()
    real_replace(src, dst)
    if hit(str(dst)) and point == "after_rename":  # renamed, the folder not yet fsynced
        kill()

def fsync(fd):
    if point == "before_file_fsync" and hit(os.readlink("/proc/self/fd/%d" % fd)):
        kill()
    real_fsync(fd)

os.replace, os.fsync = replace, fsync
Trainer(load_config("tiny", {overrides!r}), sys.argv[1]).fit()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
@pytest.mark.parametrize("point", ["before_file_fsync", "before_rename", "after_rename"])
def test_a_kill_inside_the_checkpoint_write_still_resumes_exactly(tmp_path, point):
    words = tiny_overrides(train__steps=24, train__checkpoint_every=8, train__keep_last=5, model__dropout=0.1,
                           logging__probe_every=0)
    Trainer(load_config("tiny", words), tmp_path / "straight").fit()
    script = tmp_path / "kill.py"
    script.write_text(KILL_INSIDE_WRITE.format(overrides=words))
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "r"), point], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    kept = [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")]
    assert kept == ([8, 16] if point == "after_rename" else [8])
    r = run_cli("train", "--resume", "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    assert same_lines(metrics(tmp_path / "r"), metrics(tmp_path / "straight"))
    w1, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000024.safetensors")
    w2, _ = load_checkpoint(tmp_path / "r" / "checkpoints" / "step_00000024.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


VARIANTS = [[], ["model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.kv_heads=1",
                 "model.tie_embeddings=false"],
            ["model.bias=true"], ["model.root=learned", "model.root_per_position=true"],
            ["model.sharing=cyclic", "model.depth=4", "model.unique_blocks=2", "model.recursion_lora_rank=4"],
            ["model.schedule.widths=increasing", "model.schedule.width_range=[16,48]", "model.tie_embeddings=false",
             "model.head_dim=8"],
            ["model.attention=ssmax"], ["model.mlp=none"], ["model.inject=true"],
            ["model.schedule.layer_scaling=openelm"], ["model.embed_width=24"],
            ["model.root=learned", "model.embed_width=24", "model.blocks=[{width=48}, {width=32}]"],
            ["model.ngpt=true", "model.position=rope", "model.mlp=swiglu", "model.kv_heads=1",
             "model.tie_embeddings=false"], ["model.ngpt=true", "model.position=rope", "model.mlp=none"]]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_the_parameter_estimate_from_the_config_is_the_built_models_count(overrides):
    from vslm.model import GPT, parameter_count
    from vslm.model.accounting import parameter_estimate

    cfg = load_config("tiny", overrides).model.model_copy(update={"vocab_size": 101})
    assert parameter_estimate(cfg, 101) == parameter_count(GPT(cfg))


@pytest.mark.parametrize("overrides, described", [
    (["model.width=1000000000", "model.heads=1"], "more elements than torch can address"),
    (["model.context=1000000000"], "too large to train on this machine"),
    (["train.batch_size=1000000000"], "too large to train on this machine"),
])
def test_what_cannot_fit_is_refused_before_anything_is_built_or_written(tmp_path, overrides, described):
    r = run_cli("train", "tiny", *overrides, "--out", tmp_path / "r")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "this run needs about" in r.stderr and "parameters" in r.stderr and "smaller" in r.stderr
    assert not (tmp_path / "r").exists()  # nothing to block the rerun
    # describe builds on the meta device: what it can count it describes, with the line that says it does not fit
    r = run_cli("describe", "tiny", *overrides)
    if described.startswith("too large"):
        assert r.returncode == 0 and described in r.stdout and "training memory (estimate" in r.stdout, r.stderr
    else:
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and described in r.stderr, r.stderr


def test_a_depth_past_what_the_lab_builds_is_a_config_error_everywhere(tmp_path):
    for command in (["train", "tiny", "--out", tmp_path / "r"], ["describe", "tiny"]):
        r = run_cli(*command, "model.depth=100000")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "a depth of 100,000 is past the 2,048 this lab builds" in r.stderr
    assert not (tmp_path / "r").exists()


def test_describe_prints_the_memory_estimate():
    r = run_cli("describe", "tiny")
    assert r.returncode == 0 and "training memory (estimate" in r.stdout and "MiB" in r.stdout


def test_every_file_of_a_run_has_the_mode_the_umask_gives(tmp_path):
    # checkpoints and summary.json are written through a temporary file (atomic_write), the corpus cache built in a
    # temporary folder: each gets the mode of the run's other files and folders (0o640 and 0o750 under umask 027),
    # not mkstemp's 0o600 or mkdtemp's 0o700 that would hide them from a group sharing the run or the cache
    run, cache = tmp_path / "r", tmp_path / "cache"
    r = run_cli("train", "tiny", "--out", run, *tiny_overrides(train__steps=4, train__checkpoint_every=2),
                pre=f"import os; os.umask(0o027); os.environ['VSLM_CACHE_DIR'] = {str(cache)!r}")
    assert r.returncode == 0, r.stderr
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*")}
    assert "r/summary.json" in modes and any(name.startswith("r/checkpoints/") for name in modes), modes
    assert any(name.startswith("cache/shards/") for name in modes), modes
    folders = {name for name in modes if (tmp_path / name).is_dir()}
    assert {modes[name] for name in folders} == {"0o750"}, modes
    assert {mode for name, mode in modes.items() if name not in folders} == {"0o640"}, modes


@pytest.mark.parametrize("kind, window", [("sigmoid", None), ("ssmax", 16), ("power", None)])
def test_the_memory_estimate_of_explicit_attention_is_what_the_backward_pass_keeps(kind, window):
    """The (B, heads, T, T) tensors the autograd graph saves for a normalisation that materialises its weights
    (softmax's SDPA saves none), measured with saved_tensors_hooks against the estimate's share for them, the
    estimate of the same model with softmax taken off: within 10%. The estimate counted one value per
    element and shrank it with the window (half what float32 keeps, whatever the window)."""
    from vslm.model import GPT
    from vslm.train.memory import estimate_memory

    def saved_and_estimated(attention):
        words = [f"model.attention={attention}", "model.vocab_size=64", "model.context=128", "train.batch_size=8",
                 *([f"model.window={window}"] if window else [])]
        cfg = load_config("tiny", words)
        torch.manual_seed(0)
        model = GPT(cfg.model).train()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, 64, (8, 128))).float().logsumexp(-1).mean()
        return sum(storages.values()), estimate_memory(cfg).activations

    (saved, estimated), (saved_softmax, estimated_softmax) = saved_and_estimated(kind), saved_and_estimated("softmax")
    attention = 2 * 8 * 2 * 128 * 128 * 4  # depth x B x heads x T x T float32 values: one copy
    assert saved - saved_softmax == pytest.approx(2 * attention, rel=0.1)  # scores and weights
    assert estimated - estimated_softmax == pytest.approx(saved - saved_softmax, rel=0.1)
