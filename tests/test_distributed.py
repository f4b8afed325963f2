"""Data-parallel training under torchrun (gloo, CPU): the same losses as one process, exact resume."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.data.batches import WindowSampler
from vslm.errors import VSLMError
from vslm.train.checkpoint import list_checkpoints, load_checkpoint
from vslm.train.trainer import Trainer


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def torchrun(*args, procs=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "vslm", "train", *map(str, args)]
    with tempfile.TemporaryDirectory() as tmp:  # torchrun's torchelastic_* folders, left behind otherwise
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                     "TMPDIR": tmp}, timeout=600)
    assert r.returncode == 0, "STDOUT:" + r.stdout[-1500:] + "STDERR:" + r.stderr[:2500]
    return r


def test_ranks_read_disjoint_rows_of_the_single_process_batch():
    tokens = torch.arange(10_000).numpy()
    one = WindowSampler(tokens, 16, 6, seed=3)
    ranks = [WindowSampler(tokens, 16, 6, seed=3, shard=(r, 3)) for r in range(3)]
    for _ in range(4):
        x, y = one.next_batch()
        parts = [s.next_batch() for s in ranks]
        assert all(p[0].shape == (2, 16) for p in parts)
        for r, (xr, yr) in enumerate(parts):
            assert torch.equal(xr, x[r::3]) and torch.equal(yr, y[r::3])
    assert all(torch.equal(s.generator.get_state(), one.generator.get_state()) for s in ranks)
    with pytest.raises(VSLMError, match="batch_size 6 .* not divisible by the 4 processes"):
        WindowSampler(tokens, 16, 6, seed=3, shard=(0, 4))


def test_two_processes_match_one(tmp_path):
    # grad accumulation on: the no_sync micro-step and the all-reduce on the last one
    words = tiny_overrides(train__steps=10, train__eval_every=5, train__checkpoint_every=5, train__eval_windows=40,
                           train__grad_accum=2, logging__tensorboard="false")
    Trainer(load_config("tiny", words), tmp_path / "one").fit()
    r = torchrun("tiny", *words, "--out", tmp_path / "two")
    assert "trained 10 steps" in r.stdout and r.stdout.count("trained") == 1  # rank 0 speaks for all
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 11))
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "grad_norm", "val_loss", "val_bpb"):
            assert (key in a) == (key in b) and b.get(key, 0) == pytest.approx(a.get(key, 0), rel=1e-5, abs=1e-6)
        assert a["tokens"] == b["tokens"]  # the global batch
    w1, _ = load_checkpoint(list_checkpoints(tmp_path / "one" / "checkpoints")[-1][1])
    w2, state = load_checkpoint(list_checkpoints(tmp_path / "two" / "checkpoints")[-1][1])
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6) for k in w1)
    assert len(state["rng"]["ranks"]) == 2  # every rank's dropout RNG, for exact resume
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_exact_resume_under_ddp(tmp_path):
    # dropout on: each rank's own RNG state must come back
    words = tiny_overrides(train__steps=8, train__checkpoint_every=4, train__keep_last=3, train__eval_every=4,
                           train__eval_windows=16, model__dropout=0.1, logging__tensorboard="false")
    torchrun("tiny", *words, "--out", tmp_path / "straight")
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "step_00000008.safetensors").unlink()
    torchrun("--resume", "--out", tmp_path / "resumed")
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == list(range(1, 9))
    for a, b in zip(straight, resumed, strict=True):
        assert (a["loss"], a["grad_norm"], a.get("val_loss")) == (b["loss"], b["grad_norm"], b.get("val_loss"))
    w1, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000008.safetensors")
    w2, _ = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_00000008.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


NAN_AFTER_UPDATE = """
import sys
import torch
from vslm.config import load_config
from vslm.train.callbacks import Callback
from vslm.train.trainer import Trainer, TrainingDiverged, default_callbacks

class Poison(Callback):  # step 2's update ends in a NaN weight; its loss, read before the update, is finite
    def on_before_update(self, trainer):
        if trainer.step == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

cfg = load_config("tiny", sys.argv[2:])
trainer = Trainer(cfg, sys.argv[1], callbacks=[Poison(), *default_callbacks(cfg)])  # (rank 0's callbacks)
try:
    trainer.fit()
except TrainingDiverged as e:
    print(f"rank {trainer.dist.rank}: {e}", flush=True)
    sys.exit(3)
"""


def test_a_state_that_is_not_finite_at_a_checkpoint_stops_every_rank(tmp_path):
    """Rank 0's checkpointer refuses a non-finite state and stops; the other ranks waited for it at the
    checkpoint's barrier until torchrun killed them (another launcher: until the group's timeout). Every rank
    now stops at that step with the reason."""
    (tmp_path / "nan.py").write_text(NAN_AFTER_UPDATE)
    words = tiny_overrides(train__steps=6, train__checkpoint_every=2, train__eval_every=0, train__eval_windows=8,
                           logging__tensorboard="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(tmp_path / "nan.py"), str(tmp_path / "run"), *words]
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp})
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: " in r.stdout and "at step 2: training stopped" in r.stdout, r.stdout + r.stderr[-2000:]
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []  # the poisoned state was never written
    assert metrics(tmp_path / "run")[-1]["step"] == 2  # the step is logged (its loss was finite), as by one process


def test_answer_only_training_runs_data_parallel_on_rows_of_the_global_batch(tmp_path):
    # a batch source without its own sharding: the trainer gives each rank rows rank, rank + world, ...
    docs = "<|endoftext|>".join(f"Q: What is {i} plus one?\nA: {i + 1}\n" for i in range(60))
    (tmp_path / "qa.txt").write_text(docs)
    words = [*tiny_overrides(train__steps=6, train__eval_every=0, train__eval_windows=8, train__checkpoint_every=3,
                             logging__tensorboard="false"),
             f"data.source={tmp_path / 'qa.txt'}", "data.tokenizer=byte", "data.answer_only=true"]
    Trainer(load_config("tiny", words), tmp_path / "one").fit()
    torchrun("tiny", *words, "--out", tmp_path / "two")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 7))
    # the same rows each step; the gradient is the mean of the ranks' means over their answer tokens,
    # not the mean over all answer tokens, so the losses agree closely but not exactly
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    # step 1's loss, at the initial weights, by hand: the mean of rows 0, 2, 4, ... and of rows 1, 3, 5, ...
    # (a loss near ln 257 whatever rows a rank reads: the bound above alone would pass any split)
    from vslm.train.objectives import NextToken

    probe = Trainer(load_config("tiny", words), tmp_path / "probe")
    x, y = probe.batches.next_batch()
    with torch.no_grad():
        ranks = [NextToken()(probe.model, (x[r::2], y[r::2]))[0].item() for r in range(2)]
        halves = [NextToken()(probe.model, (x[h], y[h]))[0].item() for h in (slice(0, 4), slice(4, 8))]
    assert two[0]["loss"] == pytest.approx(sum(ranks) / 2, abs=2e-6)
    assert abs(sum(halves) / 2 - sum(ranks) / 2) > 1e-4 and abs(one[0]["loss"] - sum(ranks) / 2) > 1e-4


def test_a_rank_that_loses_its_peers_says_so_in_one_line(monkeypatch, capsys):
    """When one process of a torchrun job dies, the others' next collective raises gloo's 'Connection reset by
    peer': 30 lines of traceback per rank. One line now, naming the rank and the way on; outside torchrun the
    same error is not dressed up."""
    from vslm import cli

    def lost(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:29500\nmore")

    monkeypatch.setattr(cli, "cmd_describe", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["describe", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vslm: error: rank 1 lost the other processes of the run (")
    assert "another rank stopped or died, and its own lines say why" in err and "--resume" not in err  # describe
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        cli.main(["describe", "tiny"])
