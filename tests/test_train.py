import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import files_in, tiny_overrides
from vslm.config import load_config, save_config
from vslm.errors import VSLMError
from vslm.train.callbacks import Callback
from vslm.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from vslm.train.optim import lr_at
from vslm.train.run_folder import RunLock, load_run
from vslm.train.trainer import Trainer, TrainingDiverged, default_callbacks


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vslm", *map(str, args)], capture_output=True, text=True)


def test_loss_falls_on_a_tiny_run(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=120, train__eval_every=60, train__device="cpu"))
    final = Trainer(cfg, tmp_path / "r").fit()
    lines = metrics(tmp_path / "r")
    assert len(lines) == 120 and lines[0]["loss"] == pytest.approx(math.log(cfg.model.vocab_size or 58), abs=0.3)
    assert final["val_loss"] < lines[0]["loss"] - 1.0  # from ln V (~4.1) to about 3.08
    # a reproducibility pin of the seeded recipe on the CPU (the same at 1 or 2 threads): a change to what the
    # loop computes moves it. Not a test of learning (120 steps of tiny do not use attention yet: seeds 0-2 give
    # 3.08, 3.00, 3.10, and 3.02, 3.09, 3.08 without it, model.context=1)
    assert final["val_loss"] == pytest.approx(3.0754, abs=0.02)
    assert 0 < final["val_bpb"] < final["val_loss"] / math.log(2) * 1.01
    assert [ln["step"] for ln in lines if "val_loss" in ln] == [60, 120]
    _, model, tok = load_run(tmp_path / "r")
    assert sum(p.numel() for p in model.parameters()) > 0 and tok.vocab_size == model.cfg.vocab_size


def test_the_headline_validation_loss_and_bits_per_byte_are_the_brute_force_ones(tmp_path):
    """val_loss is the mean next-token loss over the fixed validation windows, val_bpb the text's loss in bits over
    its UTF-8 bytes (end-of-text left out of both), both recomputed here from the model and each token's decoded
    text: with BPE, whose tokens are several bytes, a loss per byte in place of per token, or bytes counted
    from the wrong tokens, cannot pass."""
    import torch.nn.functional as F

    cfg = load_config("tiny", tiny_overrides(train__steps=6, train__eval_every=6, train__eval_windows=200,
                                             data__tokenizer="bpe", data__vocab_size=300, train__device="cpu"))
    trainer = Trainer(cfg, tmp_path / "r")
    final = trainer.fit()
    with torch.no_grad():
        logits = trainer.model.eval()(trainer.val_x)
    nll = F.cross_entropy(logits.double().flatten(0, 1), trainer.val_y.flatten(), reduction="none")
    tok = trainer.corpus.tokenizer
    sizes = torch.tensor([0 if i == tok.eos_id else len(tok.decode([i]).encode()) for i in trainer.val_y.flatten()])
    assert trainer.val_x.shape == (200, cfg.model.context) and (sizes == 0).any() and sizes.max() > 2
    assert final["val_loss"] == pytest.approx(nll.mean().item(), abs=2e-6)
    assert final["val_bpb"] == pytest.approx(nll[sizes > 0].sum().item() / math.log(2) / sizes.sum().item(), abs=2e-6)


def test_schedules():
    cfg = load_config("tiny", ["train.steps=100", "train.warmup=10", "train.lr=1.0", "train.min_lr=0.1"]).train
    assert lr_at(0, cfg) == pytest.approx(1 / 11) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(55, cfg) == pytest.approx(0.55)
    wsd = cfg.model_copy(update={"schedule": "wsd", "decay_fraction": 0.2})
    assert lr_at(79, wsd) == 1.0 and lr_at(90, wsd) == pytest.approx(0.55) and lr_at(100, wsd) == pytest.approx(0.1)


KILLER = """
import os, signal, sys
from vslm.config import load_config
from vslm.train.callbacks import Callback
from vslm.train.trainer import default_callbacks
from vslm.train.trainer import Trainer

class KillAt(Callback):
    def on_step_end(self, trainer, metrics):
        if trainer.step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = load_config("tiny", {overrides!r})
Trainer(cfg, sys.argv[1], callbacks=default_callbacks(cfg) + [KillAt()]).fit()
"""


def test_exact_resume_after_sigkill(tmp_path, cli):
    # dropout on, so the torch RNG state must be restored too; grad accumulation on
    words = tiny_overrides(train__steps=40, train__checkpoint_every=8, train__eval_every=20, model__dropout=0.1,
                           train__grad_accum=2, data__doc_aligned="true", logging__probe_every=16)
    Trainer(load_config("tiny", words), tmp_path / "straight").fit()

    script = tmp_path / "killed.py"
    script.write_text(KILLER.format(kill_at=21, overrides=words))
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "killed")], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [s for s, _ in list_checkpoints(tmp_path / "killed" / "checkpoints")] == [8, 16]
    assert metrics(tmp_path / "killed")[-1]["step"] == 21
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 22, "lo')  # a line cut short by the kill

    r = cli("train", "--resume", "--out", tmp_path / "killed")
    assert r.returncode == 0, r.stderr
    assert "Training (resumed from its checkpoint at step 16, " in r.stdout  # the step it goes on from, said
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [m["step"] for m in resumed] == list(range(1, 41))
    for a, b in zip(straight, resumed, strict=True):
        assert (a["loss"], a["grad_norm"], a.get("val_loss")) == (b["loss"], b["grad_norm"], b.get("val_loss"))
    probes = [(tmp_path / run / "probes.jsonl").read_text() for run in ("straight", "killed")]
    assert probes[0] == probes[1] and probes[0].count("\n") == 8  # 0, 1, 2, 4, 8, 16, 32, 40
    w1, _ = load_checkpoint(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1][1])
    w2, _ = load_checkpoint(list_checkpoints(tmp_path / "killed" / "checkpoints")[-1][1])
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


CRASH_IN_WRITE = """
import os, signal, sys, torch
from pathlib import Path
from vslm.train import checkpoint
folder = Path(sys.argv[1])
checkpoint.save_checkpoint(folder / checkpoint.checkpoint_name(1), {"w": torch.ones(3)}, {"step": 1})
real_fsync = os.fsync
def die(fd):  # the new file is written but not yet renamed into place
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.os.fsync = die
checkpoint.save_checkpoint(folder / checkpoint.checkpoint_name(2), {"w": torch.zeros(3)}, {"step": 2})
"""


def test_kill_while_writing_a_checkpoint_keeps_the_previous(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_IN_WRITE)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half-done write is there ...
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # ... and ignored
    weights, state = load_checkpoint(list_checkpoints(tmp_path)[0][1])
    assert torch.equal(weights["w"], torch.ones(3)) and state == {"step": 1}


def test_checkpoint_state_round_trip_without_pickle(tmp_path):
    state = {"step": 3, "t": (1, 2.5), "opt": {0: {"exp_avg": torch.arange(4.0)}}, "rng": torch.get_rng_state(),
             "none": None, "nested": [{"a": torch.tensor(1.5)}]}
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.eye(2)}, state)
    weights, back = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(weights["w"], torch.eye(2)) and back["t"] == (1, 2.5) and back["none"] is None
    assert torch.equal(back["opt"][0]["exp_avg"], torch.arange(4.0)) and torch.equal(back["rng"], state["rng"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(VSLMError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")


class Poison(Callback):
    def on_step_end(self, trainer, metrics):
        if trainer.step == 5:
            with torch.no_grad():
                trainer.model.embed.weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=20, train__checkpoint_every=4, train__keep_last=5))
    trainer = Trainer(cfg, tmp_path / "r", callbacks=default_callbacks(cfg) + [Poison()])
    with pytest.raises(TrainingDiverged, match="loss is nan at step 6.*step_00000004"):
        trainer.fit()
    found = list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [s for s, _ in found] == [4]
    weights, _ = load_checkpoint(found[-1][1])
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert metrics(tmp_path / "r")[-1]["step"] == 5


@pytest.mark.parametrize("left", ["corrupt", "finished", "past the first"])
def test_a_run_with_no_checkpoint_that_had_one_is_never_cleared(tmp_path, capsys, left):
    """Its checkpoints set aside as corrupt, or removed from a finished run or from one past its first
    checkpoint: --resume and a new run into it are refused, and every file stays."""
    from vslm.cli import main

    run = tmp_path / "r"
    run.mkdir()
    save_config(load_config("tiny", tiny_overrides(train__steps=50)), run / "config.toml")
    step = {"corrupt": 3, "finished": 50, "past the first": 30}[left]  # tiny: checkpoint_every 25
    (run / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 4.0, "train_time_s": 1.0}) + "\n")
    if left == "corrupt":
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "step_00000002.safetensors.corrupt").write_bytes(b"x")
    before = files_in(run)
    assert main(["train", "--resume", "--out", str(run)]) == 1
    assert "no checkpoint to continue from, though it trained past its first one" in capsys.readouterr().err
    assert main(["train", "tiny", *tiny_overrides(train__steps=50), "--out", str(run)]) == 1
    assert "already holds a run that has no checkpoint to continue from" in capsys.readouterr().err
    assert files_in(run) == before


def test_busy_or_used_run_folder_is_refused(tmp_path, capsys):
    from vslm.cli import main

    folder, early = tmp_path / "r", tmp_path / "early"
    # a run killed (or still running) before its first checkpoint: its config and a metrics line, no checkpoint
    early.mkdir()
    save_config(load_config("tiny", tiny_overrides(train__steps=2)), early / "config.toml")
    (early / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    before_early = files_in(early)
    with RunLock(early):  # held by this process: the refused one must be another
        r = run_cli("train", "--resume", "--out", early)
    # a live run's folder is "in use", never "delete it to start over"
    assert r.returncode == 1 and "in use by another process" in r.stderr and "Traceback" not in r.stderr
    assert "delete" not in r.stderr
    capsys.readouterr()
    with RunLock(early):  # flock: a second open of the lock file conflicts in this process too
        assert main(["train", "tiny", *tiny_overrides(train__steps=2), "--out", str(early)]) == 1
        assert "in use by another process" in capsys.readouterr().err
        assert main(["demo", "--out", str(early)]) == 1
        assert "in use by another process" in capsys.readouterr().err
    assert main(["demo", "--out", str(early)]) == 1  # not in use: the demo gives the same way on
    how = f"`vslm train --resume --out {early}` (resume=True in Python) trains it again from step 0"
    assert "already holds a run that stopped before its first checkpoint" in (err := capsys.readouterr().err)
    assert how in err
    # not in use: both commands give the one way on, not each other
    assert main(["train", "tiny", *tiny_overrides(train__steps=2), "--out", str(early)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run that stopped before its first checkpoint (train.checkpoint_every/checkpoint_minutes: " \
           "every 25 steps or every 5 minutes)" in err and how in err and err.count("\n") == 1
    assert files_in(early) == before_early  # nothing lost
    # a resume (kill -9 in the first minutes, say) has nothing to continue from: it trains the run again, but
    # clears the folder only in fit(), under its lock, once a batch can be drawn
    Trainer(load_config(str(early / "config.toml")), early, resume=True)
    assert files_in(early) == before_early
    assert main(["train", "--resume", "--out", str(early)]) == 0
    assert f"{early} stopped before its first checkpoint: it trains again from step 0" in capsys.readouterr().err
    assert [m["step"] for m in metrics(early)] == [1, 2] and list_checkpoints(early / "checkpoints")

    def train(*extra, **overrides):  # the rest in this process
        return main(["train", "tiny", *tiny_overrides(**overrides), "--out", str(folder), *extra])

    assert train(train__steps=2) == 0
    before = (folder / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train(train__steps=2) == 1 and "already holds a run" in capsys.readouterr().err
    assert (folder / "metrics.jsonl").read_text() == before  # nothing lost
    # refused before the corpus is prepared: a source that does not exist is never looked at
    assert train(data__source=str(tmp_path / "missing.txt")) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert train("--resume", train__steps=2, model__width=64) == 2
    err = capsys.readouterr().err  # the values came from the named config: how to resume with the run's own
    assert "model.width: 32 in the run, 64 given" in err and err.count("\n") == 1
    assert f"these values are tiny's: `vslm train --resume --out {folder}` without a config" in err
    assert train("--resume", train__steps=3) == 0  # the same config
    assert [m["step"] for m in metrics(folder)] == [1, 2, 3]


def test_resume_can_extend_a_finished_run(tmp_path, cli):
    folder = tmp_path / "r"
    Trainer(load_config("tiny", tiny_overrides(train__steps=10)), folder).fit()
    r = cli("train", "--resume", "--out", folder, "train.steps=14")
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in metrics(folder)] == list(range(1, 15))
    assert os.path.exists(folder / "snapshots" / "step_00000014.safetensors")
    # config.toml says 14 steps from now on; the summary keeps that steps 1-10 were trained for 10
    assert "steps = 14" in (folder / "config.toml").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config_changes"] == [{"step": 10, "train.steps": [10, 14]}]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_what_a_resume_may_change_takes_effect(tmp_path, optimizer):
    """train.weight_decay and train.hidden_lr_scale are the config's after a resume, not the checkpoint's
    (the optimizer's saved groups had put back the old ones: a recorded change that changed nothing)."""
    base = tiny_overrides(train__steps=4, train__optimizer=optimizer, train__checkpoint_every=2)
    Trainer(load_config("tiny", base), tmp_path / "a").fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    scaled = " train.hidden_lr_scale=4.0" if optimizer != "adamw" else ""  # adamw has no hidden lr of its own
    for name, values in (("a", "train.weight_decay=0.1"), ("b", f"train.weight_decay=5.0{scaled}")):
        cfg = load_config("tiny", [*base, "train.steps=6", *values.split()])
        trainer = Trainer(cfg, tmp_path / name, resume=True)
        trainer.fit()
        groups = trainer.optimizer.param_groups
        assert max(g["weight_decay"] for g in groups) == cfg.train.weight_decay
    a, b = (load_run(tmp_path / name)[1].state_dict() for name in "ab")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the changed settings changed the steps after the resume


def test_a_resume_refuses_what_would_change_the_run_and_leaves_a_finished_one_as_it_is(tmp_path, capsys):
    from vslm.cli import main

    folder = tmp_path / "term"
    Trainer(load_config("tiny", tiny_overrides(train__steps=6, train__batch_size=16, logging__probe_every=0)),
            folder).fit()
    before = files_in(folder)

    def resume(*overrides):
        code = main(["train", "--resume", "--out", str(folder), *overrides])
        return code, capsys.readouterr()

    code, out = resume("train.steps=3")  # fewer steps than the run has: refused, naming both
    assert code == 2 and out.err.count("\n") == 1 and "train.steps=3 is below step 6" in out.err
    code, out = resume("train.batch_size=8", "train.seed=1")  # another batch and data order: refused, naming both
    assert code == 2 and out.err.count("\n") == 1
    assert "train.batch_size: 16 in the run, 8 given; train.seed: 1337 in the run, 1 given" in out.err
    code, out = resume("logging.samples=1")  # finished: says so, trains, samples and writes nothing
    assert code == 0 and "already at its last step (6 = train.steps)" in out.err
    assert f"Resuming {folder} from its checkpoint at step 6 = train.steps" in " ".join(out.out.split())
    assert "Training" not in out.out and "nothing trained: at step 6 (train.steps), its last logged loss " in out.out
    assert files_in(folder) == before
    from vslm.train.checkpoint import list_checkpoints
    code, out = resume("--checkpoint", str(list_checkpoints(folder / "checkpoints")[-1][1]))  # the same, asked for
    assert code == 0 and "Training" not in out.out and "nothing trained: at step 6" in out.out
    assert files_in(folder) == before


def test_a_resume_on_a_corpus_whose_characters_changed_is_refused(tmp_path):
    """Every ’ made ': the same token counts and vocabulary size, but every char id from ' on shifts. A resume
    would train on scrambled ids; refused in one line naming the characters. Trained anew from step 0 (no
    checkpoint yet), the run takes the corpus as it now is."""
    from vslm.errors import ConfigError

    text = tmp_path / "corpus.txt"
    text.write_text("the cat’s mat, and the dog’s bone. " * 3000, encoding="utf-8")
    folder = tmp_path / "r"
    cfg = load_config("tiny", tiny_overrides(train__steps=4, train__checkpoint_every=2, data__source=str(text),
                                             data__tokenizer="char", logging__probe_every=0))
    Trainer(cfg, folder).fit()
    text.write_text(text.read_text(encoding="utf-8").replace("’", "'"), encoding="utf-8")
    before = files_in(folder)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6})})
    with pytest.raises(ConfigError, match=r"^cannot resume .*: its corpus reads as other tokens \(characters '’' "
                       r"then, \"'\" now \(a char vocabulary's ids shift\)\); the source's files changed"):
        Trainer(longer, folder, resume=True)
    assert files_in(folder) == before
    shutil.rmtree(folder / "checkpoints")  # stopped before its first checkpoint: trained again, from step 0
    shutil.rmtree(folder / "snapshots", ignore_errors=True)
    (folder / "metrics.jsonl").write_text((folder / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    Trainer(longer, folder, resume=True).fit()
    assert "'" in load_run(folder)[2].to_dict()["chars"]


def test_a_moved_run_resumes_from_its_data_at_the_new_path_only_if_it_is_the_same_text(tmp_path):
    """data.source is an absolute path in a run's config (a reader's or capacity run's data lies in its folder):
    a folder or a data file moved (mv, cp -a: the same names, sizes, modification times and contents, the run's
    data_identity) is the same data at another path, and the resume goes on exactly; another text there is
    refused in one line naming data.source, the folder left as it was."""
    from vslm.errors import ResumeRefused

    (tmp_path / "a").mkdir()
    text = tmp_path / "a" / "corpus.txt"
    text.write_text("the cat sat on the mat and looked at the dog. " * 3000)
    cfg = load_config("tiny", tiny_overrides(train__steps=4, train__checkpoint_every=2, data__source=str(text),
                                             logging__probe_every=0))
    whole = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6})})
    Trainer(whole, tmp_path / "whole").fit()  # the run no move interrupts
    Trainer(cfg, tmp_path / "r").fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: times kept
    (tmp_path / "r").rename(tmp_path / "moved")
    folder = tmp_path / "moved"

    def moved_to(path):
        return whole.model_copy(update={"data": whole.data.model_copy(update={"source": str(path)})})

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "corpus.txt").write_text(text.read_text().replace("cat", "cow"))  # the same counts
    (tmp_path / "d").mkdir()
    shutil.copy(text, tmp_path / "d" / "corpus.txt")  # the same text, not kept as it was: another time
    os.utime(tmp_path / "d" / "corpus.txt", ns=(text.stat().st_atime_ns, text.stat().st_mtime_ns + 10**9))
    before = files_in(folder)
    for other in ("c/corpus.txt", "d/corpus.txt", "missing.txt"):
        with pytest.raises(ResumeRefused, match=rf"data.source: {text} in the run, {tmp_path / other} given"):
            Trainer(moved_to(tmp_path / other), folder, resume=True)
    assert files_in(folder) == before
    text.unlink()  # the old path is gone: the copy is the run's data
    Trainer(moved_to(tmp_path / "b" / "corpus.txt"), folder, resume=True).fit()
    a, b = load_run(tmp_path / "whole")[1].state_dict(), load_run(folder)[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_config(str(folder / "config.toml")).data.source == str(tmp_path / "b" / "corpus.txt")
    changes = json.loads((folder / "summary.json").read_text())["config_changes"]
    assert changes == [{"step": 4, "data.source": [str(text), str(tmp_path / "b" / "corpus.txt")],
                        "train.steps": [4, 6]}]


def test_a_resume_on_a_corpus_that_reads_as_other_tokens_is_refused(tmp_path, capsys):
    """A resume goes on with the batch source's stream over the run's corpus: a source file that grew, or a run
    folder whose config.toml lost data.max_bytes = none (written before 2026-12-06: it reads as 8 MB), would
    train on other data, silently. Refused in one line, naming the counts, the folder left as it was."""
    from vslm.cli import main

    text = tmp_path / "corpus.txt"
    story = "the cat sat on the mat and looked at the dog. " * 20 + "\n\n"
    text.write_text(story * 8700)  # 8.2 MB: over the 8 MB that a left-out data.max_bytes reads as
    folder = tmp_path / "r"
    base = tiny_overrides(train__steps=4, train__checkpoint_every=2, data__source=str(text), data__max_bytes="none",
                          logging__probe_every=0)
    Trainer(load_config("tiny", base), folder).fit()
    summary = json.loads((folder / "summary.json").read_text())
    before = files_in(folder)

    def resume():
        code = main(["train", "--resume", "--out", str(folder), "train.steps=6"])
        return code, capsys.readouterr().err

    config = (folder / "config.toml").read_text()
    assert 'max_bytes = "none"' in config
    (folder / "config.toml").write_text(config.replace('max_bytes = "none"\n', ""))  # as the old dump wrote it
    before = files_in(folder)
    code, err = resume()
    assert code == 2 and err.count("\n") == 1, err
    assert f"its corpus reads as other tokens (train {summary['train_tokens']:,} then, " in err
    assert 'a run folder written before 2026-12-06 with data.max_bytes = none lost it: add max_bytes = "none"' in err
    assert files_in(folder) == before
    (folder / "config.toml").write_text(config)  # mended as the message says: it resumes
    assert resume()[0] == 0
    assert [m["step"] for m in metrics(folder)] == list(range(1, 7))

    before = files_in(folder)
    with text.open("a") as f:  # the source grew since
        f.write("the dog sat on the cat. " * 40 + "\n\n")  # its characters, so the vocabulary holds
    code, err = resume()
    assert code == 2 and err.count("\n") == 1, err
    assert "the source's files changed since the run began, or this vslm prepares them otherwise" in err
    assert files_in(folder) == before
    code = main(["train", "tiny", *base, "train.steps=6", "--resume", "--out", str(folder)])  # with its config:
    err = capsys.readouterr().err  # no advice to leave the config out, which would not mend it
    assert code == 2 and "corpus reads as other tokens" in err and "without a config" not in err
    for name in ("checkpoints", "snapshots"):  # stopped before its first checkpoint: trained again from step 0,
        shutil.rmtree(folder / name, ignore_errors=True)  # on the corpus as it now is
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text(lines[0] + "\n")  # step 1 of a run that checkpoints every 2
    code = main(["train", "--resume", "--out", str(folder), "train.steps=6"])
    assert code == 0, capsys.readouterr().err
    assert [m["step"] for m in metrics(folder)] == list(range(1, 7))
    for name in ("checkpoints", "snapshots"):  # again, on a corpus with a symbol its vocabulary lacks: said why
        shutil.rmtree(folder / name, ignore_errors=True)
    (folder / "metrics.jsonl").write_text((folder / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    with text.open("a") as f:
        f.write("a fox! " * 40 + "\n\n")
    assert main(["train", "--resume", "--out", str(folder), "train.steps=6"]) != 0
    err = capsys.readouterr().err
    assert "is smaller than the tokenizer's" in err and "has gained symbols since: train anew into another --out" in err


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from vslm.cli import main

    file = tmp_path / "README.md"
    file.write_text("notes\n")
    for out in (file, file / "run"):
        assert main(["train", "tiny", *tiny_overrides(train__steps=2), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{file} is a file, not a folder" in err and "Traceback" not in err
    assert file.read_text() == "notes\n"


def test_sample_command(tmp_path, cli):
    Trainer(load_config("tiny", tiny_overrides(train__steps=5)), tmp_path / "r").fit()
    r = cli("sample", tmp_path / "r", "--prompt", "Once", "--tokens", "20", "--num", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Once") >= 2
    r = cli("sample", tmp_path / "missing")
    assert r.returncode == 1 and "not a run folder" in r.stderr


def test_snapshots_are_log_spaced(tmp_path):
    Trainer(load_config("tiny", tiny_overrides(train__steps=20)), tmp_path / "r").fit()
    steps = [s for s, _ in list_checkpoints(tmp_path / "r" / "snapshots")]
    assert steps == [0, 1, 2, 4, 8, 16, 20]
    weights, state = load_checkpoint(list_checkpoints(tmp_path / "r" / "snapshots")[0][1])
    assert state == {"step": 0} and "embed.weight" in weights




def test_bits_per_byte_by_hand():
    from vslm.train.trainer import text_nll_and_bytes

    token_bytes = torch.tensor([1, 2, 0, 3])  # token 2 is end-of-text
    nll = torch.tensor([1.0, 2.0, 5.0, 0.5])
    nats, n_bytes = text_nll_and_bytes(nll, torch.tensor([0, 1, 2, 3]), token_bytes)
    assert (nats, n_bytes) == (3.5, 6)  # the end-of-text loss and bytes are left out
    assert nats / math.log(2) / n_bytes == pytest.approx(3.5 / 0.693147 / 6, abs=1e-6)


def test_schedule_and_range_errors():
    from vslm.errors import ConfigError

    with pytest.raises(ConfigError, match="warmup 90 runs into the decay phase"):
        load_config("tiny", ["train.schedule=wsd", "train.steps=100", "train.warmup=90"])
    with pytest.raises(ConfigError, match=r"window_range \[64, 8\] must be \(low, high\)"):
        load_config("tiny", ["model.schedule.window_range=[64, 8]"])


def test_too_little_text_is_one_line(tmp_path, cli):
    text = tmp_path / "short.txt"
    text.write_text("just a few words of text here " * 3)
    r = cli("train", "tiny", f"data.source={text}", "--out", tmp_path / "r")
    assert r.returncode == 1 and "fewer than model.context + 1" in r.stderr and "Traceback" not in r.stderr


def test_doc_aligned_on_one_text_is_refused_before_the_run_folder(tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("one long text without separators. " * 2000)
    cfg = load_config("tiny", tiny_overrides(data__source=str(text), data__doc_aligned="true"))
    with pytest.raises(VSLMError, match=r"data.doc_aligned: the training text of .*one.txt is one document"):
        Trainer(cfg, tmp_path / "r").fit()
    assert not (tmp_path / "r").exists()


def test_answer_only_on_one_text_is_refused_as_doc_aligned_is(tmp_path):
    """A single text over 1 MB reads in pieces: they were taken for documents, and two of them trained on."""
    text = tmp_path / "one.txt"
    text.write_text("Tom has a red ball.\nQ: What color?\nA: red\n" * 40_000)  # 1.6 MB, no <|endoftext|>
    cfg = load_config("tiny", tiny_overrides(data__source=str(text), data__max_bytes="none",
                                             data__tokenizer="byte", data__answer_only="true"))
    with pytest.raises(VSLMError, match=r"^data.answer_only: the training text of .*one.txt is one document \(no "
                       r"<\|endoftext\|> between documents\), so there are no documents to draw rows from; "
                       r"drop data.answer_only$"):
        Trainer(cfg, tmp_path / "r").fit()
    assert not (tmp_path / "r").exists()


class StepCounter(Callback):
    """A user's stateful callback: the steps it has seen, kept across a resume."""

    def __init__(self):
        self.seen = 0

    def on_step_end(self, trainer, metrics):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state.get("seen", 0)


def test_a_users_callback_state_is_saved_at_its_step_and_found_when_the_callbacks_change(tmp_path):
    cfg = load_config("tiny", tiny_overrides(train__steps=3, train__checkpoint_every=3))
    counter = StepCounter()
    Trainer(cfg, tmp_path / "r", callbacks=[*default_callbacks(cfg), counter]).fit()
    _, state = load_checkpoint(tmp_path / "r" / "checkpoints" / "step_00000003.safetensors")
    assert state["callbacks"]["StepCounter:0"] == {"seen": 3}  # the checkpoint's own step, not the one before
    # resumed with weight diagnostics on (a callback placed first): the counter's state is still found
    more = load_config("tiny", tiny_overrides(train__steps=6, train__checkpoint_every=3, logging__diagnostics_every=2))
    again = StepCounter()
    Trainer(more, tmp_path / "r", resume=True, callbacks=[*default_callbacks(more), again]).fit()
    assert again.seen == 6


def test_a_resume_takes_only_the_runs_own_checkpoints(tmp_path, cli):
    words = tiny_overrides(train__steps=4, train__checkpoint_every=2, train__keep_last=3)
    Trainer(load_config("tiny", words), tmp_path / "a").fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    other = tmp_path / "a" / "checkpoints" / "step_00000002.safetensors"  # the same shapes, another run's
    r = cli("train", "--resume", "--out", tmp_path / "b", "--checkpoint", other)
    assert r.returncode == 1 and "is not one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    own = tmp_path / "b" / "checkpoints"
    r = cli("train", "--resume", "--out", tmp_path / "b", "--checkpoint", own / "step_00000002.safetensors")
    assert r.returncode == 0, r.stderr  # its own: the newer one set aside
    aside = own / "step_00000004.safetensors.superseded"
    assert aside.is_file()
    r = cli("train", "--resume", "--out", tmp_path / "b", "--checkpoint", aside, "train.steps=5")
    assert r.returncode == 1 and "not set aside as .superseded" in r.stderr
