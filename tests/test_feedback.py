"""What a user reads: progress lines that never pass an old number for new, reports that say a run is
unfinished, tables that keep their labels in a file, suggestions for typos, the threads warning."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from conftest import tiny_overrides
from vslm.cli import build_parser, main
from vslm.config import load_config


def test_progress_lines_say_from_which_step_a_validation_loss_is(tmp_path, capsys):
    from vslm.train.trainer import Trainer

    cfg = load_config("tiny", tiny_overrides(train__steps=20, train__eval_every=10, logging__progress="true",
                                             logging__probe_every=0, train__snapshots="false"))
    Trainer(cfg, tmp_path / "r").fit()
    lines = {int(ln.split()[1].split("/")[0]): ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("step ")}
    assert "val " in lines[10] and "(step" not in lines[10]  # new at step 10
    assert "val " in lines[12] and lines[12].endswith("(step 10)")  # step 12 shows step 10's, and says so
    assert "val " not in lines[8]


def test_tables_keep_their_labels_in_a_file():
    from vslm.lab.tables import DYNAMICS, print_table

    buf = io.StringIO()
    rows = [("width-32", "-0.143 ± 0.018", *["0.043 ± 0.001"] * (len(DYNAMICS) - 1))]
    print_table(Console(file=buf, width=140), "training dynamics", ("variant", *DYNAMICS.values()), rows)
    text = buf.getvalue()
    assert "│ width-32 │" in text and "┃ variant  ┃" in text


def _fake_run(folder, steps_done: int, steps: int, val: bool):
    folder.mkdir()
    (folder / "config.toml").write_text(f'name = "fake"\n[train]\nsteps = {steps}\n')
    rows = [{"step": s, "loss": 4 - s / 100, "tokens": 100 * s} for s in range(1, steps_done + 1)]
    if val:
        rows[-1].update(val_loss=3.5, val_bpb=5.0)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_report_says_a_run_is_unfinished_and_names_only_the_axes_drawn(tmp_path):
    from vslm.report import compare_runs, write_report

    html = write_report(_fake_run(tmp_path / "a", 32, 100, val=False)).read_text()
    assert "unfinished: 32 of 100 steps" in html and "right axis" not in html
    html = write_report(_fake_run(tmp_path / "b", 100, 100, val=True)).read_text()
    assert "unfinished" not in html and "right axis" in html
    assert "comparison of 1 run<" in compare_runs([tmp_path / "a"], tmp_path / "c.html").read_text()
    assert "comparison of 2 runs" in compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c.html").read_text()


def test_sample_help_describes_every_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["sample"]
    assert sub.description
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.dest


def test_typos_get_the_near_names_and_exit_2(capsys, tmp_path):
    import pytest

    from vslm.errors import ConfigError

    cases = [(["train.step=300"], "unknown field 'train.step' (did you mean train.steps?)"),
             (["model.widht=64"], "(did you mean model.width?)"),
             (["tran.steps=3"], "(did you mean train?)"),
             (["model.blocks=[{widht=16}]"], "(did you mean model.blocks.0.width?)"),
             (["steps=3"], "unknown field 'steps' (did you mean train.steps?)"),  # the section left out
             (["seed=3"], "(did you mean data.seed or train.seed?)")]
    for words, message in cases:
        with pytest.raises(ConfigError) as e:
            load_config("tiny", words)
        assert message in str(e.value)
    with pytest.raises(ConfigError, match=r"no config 'tinny' \(did you mean tiny\?\)"):
        load_config("tinny")
    assert main(["train", "tiny", "train.step=3", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean train.steps?" in capsys.readouterr().err
    assert main(["experiment", "smoek", "--out", str(tmp_path / "x")]) == 2
    assert "no experiment 'smoek' (did you mean smoke?)" in capsys.readouterr().err
    assert main(["data", "prepare", "wikitext2"]) == 2
    err = capsys.readouterr().err
    assert "unknown data source 'wikitext2' (did you mean wikitext-2" in err and err.count("\n") == 1
    assert main(["train", "tiny", "data.source=wikitext2", "--out", str(tmp_path / "r")]) == 2  # before it prepares
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "unknown data source 'wikitext2'" in err
    assert not (tmp_path / "r").exists()


def test_train_threads_sets_torch_threads_and_warns_once_under_load(tmp_path, monkeypatch, capsys):
    import torch

    from vslm.train import trainer as trainer_module
    from vslm.train.trainer import Trainer

    before = torch.get_num_threads()
    monkeypatch.setattr(trainer_module, "_threads_warned", False)
    monkeypatch.setattr(trainer_module, "cores_in_use", lambda: (7.0, "7 other tasks running now"))
    monkeypatch.setattr(trainer_module, "_cores_seen", None)  # no look kept from an earlier test
    monkeypatch.setattr(trainer_module.os, "cpu_count", lambda: 4)
    try:
        cfg = load_config("tiny", tiny_overrides(train__steps=2, train__threads=2))
        Trainer(cfg, tmp_path / "a")
        assert torch.get_num_threads() == before  # train.threads during fit() (test_notebook), the session's after
        Trainer(cfg, tmp_path / "b")  # a second trainer in the process: no second warning
        err = capsys.readouterr().err
        assert err.count("train.threads=1") == 1 and "7 other tasks running now on 4 cores: 0.0 free" in err
        Trainer(load_config("tiny", tiny_overrides(train__steps=2, train__threads=1)), tmp_path / "c")
        assert torch.get_num_threads() == before and capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(before)


def test_cores_in_use_counts_what_runs_now_not_the_last_minute():
    import subprocess
    import sys
    import time
    from pathlib import Path

    from vslm.train.trainer import cores_in_use

    if not Path("/proc/loadavg").is_file():
        pytest.skip("needs Linux's /proc/loadavg")
    # a process that spins is runnable at every sample: counted, this test's own process not
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy, how = cores_in_use()
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 1 and how == f"{busy:g} other tasks running now"


def test_train_prints_the_header_before_the_first_step(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vslm", "train", "tiny", *tiny_overrides(train__steps=3),
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()  # as the demo's (stderr: the progress, a warning, an error)
    assert lines[0].startswith("Preparing the corpus stories")
    model = next(ln for ln in lines if ln.startswith("Model: a GPT of "))
    assert "MFLOPs per training token" in model
    training = next(ln for ln in lines if ln.startswith("Training: 3 steps of 8 x 32 tokens"))
    # tiny's warmup is longer than these 3 steps: the header says the lr never reaches its peak
    assert "(its warmup of 5 steps outlasts the run: the learning rate never reaches train.lr=0.003)" in training
    assert r.stdout.strip().splitlines()[-1] == str(tmp_path / "r")


def test_a_source_cut_by_max_bytes_is_said_in_the_header_and_by_data_prepare(tmp_path, capsys):
    """tiny's data.max_bytes on a larger file trained on part of it without a word; a generated corpus (made
    to max_bytes) and a file read whole say nothing."""
    from vslm.commands.demo import start_training

    big, small, records = tmp_path / "big.txt", tmp_path / "small.txt", tmp_path / "records.jsonl"
    big.write_text("the cat sat on the mat and looked at the dog.\n" * 8000)  # 376 KB
    small.write_text("the cat sat on the mat and looked at the dog.\n" * 1000)  # 47 KB
    records.write_text("".join(json.dumps({"text": f"record {i}: " + "the dog ran. " * 20}) + "\n"
                               for i in range(1000)))  # 270 KB of text

    def header(source: str, out: str) -> str:
        text = io.StringIO()
        start_training(load_config("tiny", tiny_overrides(data__source=source)), tmp_path / out,
                       Console(file=text, width=200))
        return text.getvalue()

    notes = [ln for ln in header(str(big), "a").splitlines() if ln.startswith("note: data.max_bytes")]
    assert len(notes) == 1 and notes[0].startswith(f"note: data.max_bytes=200,000 stopped {big} at 200,000 tokens, "
                                                   "short of its end: data.max_bytes=none reads all of it")
    assert f"note: data.max_bytes=200,000 stopped {records} at " in header(str(records), "b")
    for out, source in (("c", str(small)), ("d", "stories")):
        assert "note: data.max_bytes" not in header(source, out)
    capsys.readouterr()
    assert main(["data", "prepare", str(big), "--max-bytes", "100K", "--quiet"]) == 0
    assert capsys.readouterr().err == (f"note: data.max_bytes=100,000 stopped {big} at 100,000 tokens, short of its "
                                       "end: data.max_bytes=none reads all of it\n")


def test_a_validation_split_far_above_its_share_is_said(tmp_path, capsys):
    """3 documents: the last is held out whole (here 60% of the tokens), which a header's counts alone left to
    the reader to notice; 20 documents hold out every tenth, and say nothing."""
    from vslm.commands.demo import start_training

    few, many = tmp_path / "few.txt", tmp_path / "many.txt"
    few.write_text("<|endoftext|>".join(["the cat sat. " * 100, "the dog ran. " * 100, "a bird sang. " * 300]))
    many.write_text("<|endoftext|>".join(f"story {i}: the cat sat. " * 20 for i in range(20)))

    def header(source, out: str) -> str:
        text = io.StringIO()
        start_training(load_config("tiny", tiny_overrides(data__source=str(source))), tmp_path / out,
                       Console(file=text, width=300))
        return text.getvalue()

    notes = [ln for ln in header(few, "a").splitlines() if ln.startswith("note: validation")]
    assert notes == ["note: validation is 60% of the tokens, the last of 3 documents (under 6, so one whole document "
                     "is held out): give more documents, or one text without <|endoftext|> (its last tenth held out)"]
    assert "note: validation" not in header(many, "b")
    # every tenth document held out, one of them long: said too (the note spoke only of the last document)
    long_held = tmp_path / "long-held.txt"
    long_held.write_text("<|endoftext|>".join(("a long one. " * 2000) if i == 5 else f"story {i}: the cat sat. " * 5
                                              for i in range(30)))
    notes = [ln for ln in header(long_held, "c").splitlines() if ln.startswith("note: validation")]
    assert len(notes) == 1 and notes[0].endswith("of the tokens, 3 whole documents of 30 (one in 10, from document "
                                                 "6), longer than most: give more documents, or one text without "
                                                 "<|endoftext|> (its last tenth held out)")
    share = int(notes[0].split("validation is ")[1].split("%")[0])
    assert share > 80  # 2,000 of the long document's sentences against 29 x 5 short ones
    capsys.readouterr()
    assert main(["data", "prepare", str(few), "--quiet"]) == 0
    assert capsys.readouterr().err.startswith("note: validation is 60% of the tokens, the last of 3 documents")


def test_track_plain_lines_in_a_file_and_a_bar_on_a_terminal(monkeypatch):
    from vslm import progress
    from vslm.progress import track

    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain = io.StringIO()  # a job done at once: where it starts and where it ends, no tenths between
    assert list(track(range(20), "probing", stream=plain)) == list(range(20))
    lines = plain.getvalue().splitlines()
    assert lines[0] == "probing: 20 to do ..." and lines[1].startswith("probing: 20 done in ") and len(lines) == 2
    clock = iter(range(1000))  # an item a second: each tenth done is a line
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    plain = io.StringIO()
    assert list(track(range(20), "probing", stream=plain)) == list(range(20))
    lines = plain.getvalue().splitlines()
    assert lines[0] == "probing: 20 to do ..." and lines[-1].startswith("probing: 20 done in ")
    assert any(ln.startswith("probing: 10/20 (50%)") and ", eta " in ln for ln in lines) and len(lines) == 11
    monkeypatch.undo()
    assert "━" not in plain.getvalue()  # no bar in a file
    tty = Tty()
    assert list(track(range(3), "probing", stream=tty)) == [0, 1, 2]
    assert "3/3" in tty.getvalue() and "eta" in tty.getvalue()


def test_long_commands_say_what_they_do(tmp_path, capsys):
    from vslm.train.trainer import Trainer

    Trainer(load_config("tiny", tiny_overrides(train__steps=4)), tmp_path / "r").fit()
    assert main(["probe", str(tmp_path / "r")]) == 0
    assert "probing the snapshots of" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "r"), "--tokens", "5"]) == 0
    err = capsys.readouterr().err
    assert "sampling from" in err and "step_00000004.safetensors" in err and "generating tokens: 5 done" in err
    assert main(["eval", str(tmp_path / "r"), "--on", "stories"]) == 0
    assert "evaluating on stories: " in capsys.readouterr().err
    assert main(["shape", str(tmp_path / "r"), "--prompt", "Tom", "--continuation", " said", "--samples", "2",
                 "--tokens", "5", "--plot", str(tmp_path / "s.png")]) == 0
    assert "sampling 2 continuations of each prompt: 2 done" in capsys.readouterr().err


def test_the_readme_eval_example_works_with_a_byte_tokenizer_and_a_char_one_says_why_not(tmp_path, capsys):
    import pytest

    from conftest import SHARED
    from vslm.train.trainer import Trainer

    if not (SHARED / "data" / "wikitext-2").is_dir():
        pytest.skip("no local WikiText-2 (../shared/data)")
    Trainer(load_config("tiny", tiny_overrides(train__steps=2, data__tokenizer="byte")), tmp_path / "byte").fit()
    assert main(["eval", str(tmp_path / "byte"), "--on", "wikitext-2", "tinystories", "--max-bytes", "20000",
                 "--json"]) == 0
    corpora = json.loads(capsys.readouterr().out)["corpora"]
    assert [c["corpus"] for c in corpora] == ["wikitext-2", "tinystories"] and all(c["bpb"] > 0 for c in corpora)
    Trainer(load_config("tiny", tiny_overrides(train__steps=2)), tmp_path / "char").fit()
    assert main(["eval", str(tmp_path / "char"), "--on", "wikitext-2", "--max-bytes", "20000"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "is not in this character vocabulary" in err and "data.tokenizer=byte or bpe" in err


def test_watch_tells_a_stopped_run_from_a_running_one_by_its_lock(tmp_path, monkeypatch, capsys):
    """A run killed half-way (no process holds its folder's lock) reads "stopped", not "running, eta", and
    watch ends on it instead of waiting out its idle time."""
    import io

    from filelock import FileLock
    from rich.console import Console

    from vslm.commands import watch as watch_module
    from vslm.files import LOCK, LOCK_HOST, in_use

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.toml").write_text('name = "killed"\n[train]\nsteps = 6\n')
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 3.0, "train_time_s": 1.0}) + "\n")
    (folder / LOCK).touch()  # left behind by the killed trainer, held by no one
    assert main(["watch", str(folder), "--once"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the line may wrap at the terminal's width
    # killed before its first checkpoint: a resume trains it again, and watch says so
    assert f"stopped: no process trains in it (`vslm train --resume --out {folder}` trains it again from step 0)" in out
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "step_00000002.safetensors").touch()  # watch reads the checkpoints' names only
    assert main(["watch", str(folder), "--once"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"step 2/6 (33%) stopped: no process trains in it (`vslm train --resume --out {folder}` continues it "
            "from step 2)") in out
    with FileLock(str(folder / LOCK)):  # a trainer in it now
        assert main(["watch", str(folder), "--once"]) == 0
        assert "step 2/6 (33%)  running, eta 2 s" in capsys.readouterr().out
    import os
    import time

    past = time.time() - 3600  # stopped an hour ago: said at once, not after STOPPED_AFTER (30 s) more of quiet
    for name in ("config.toml", "metrics.jsonl"):
        os.utime(folder / name, (past, past))
    buf, started = io.StringIO(), time.monotonic()
    watch_module.watch(folder, Console(file=buf, width=200), every=0.05, idle=60)
    assert buf.getvalue().rstrip().endswith("the run stopped: no process trains in it")
    assert time.monotonic() - started < 5
    monkeypatch.setattr(watch_module, "STOPPED_AFTER", 0.2)
    (folder / "metrics.jsonl").touch()  # written just now: said once quiet for STOPPED_AFTER
    buf = io.StringIO()
    watch_module.watch(folder, Console(file=buf, width=200), every=0.05, idle=60)
    assert buf.getvalue().rstrip().endswith("the run stopped: no process trains in it")
    # locked last on another machine: its lock may not be seen from here (flock over NFS), so no verdict
    (folder / LOCK_HOST).write_text("another-machine\n")
    assert in_use(folder)


def test_a_run_without_logged_steps_is_not_called_waiting_when_no_process_trains_it(tmp_path, capsys):
    """A run whose metrics.jsonl is gone (or was never written: killed while preparing) and whose lock no
    one holds: watch and report say so, not "waiting for the first step" and "0 of 6 steps"."""
    from filelock import FileLock

    from vslm.files import LOCK
    from vslm.report.run_report import unfinished
    from vslm.report.runs import read_run
    from vslm.train.checkpoint import save_checkpoint

    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.toml").write_text('name = "gone"\n[train]\nsteps = 6\n')
    assert main(["watch", str(folder), "--once"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"stopped before its first logged step: no process trains in it (`vslm train --resume --out {folder}` "
            "trains it from step 0)") in out
    with FileLock(str(folder / LOCK)):  # a trainer in it: still preparing
        assert main(["watch", str(folder), "--once"]) == 0
        assert "waiting for the first step" in capsys.readouterr().out
    save_checkpoint(folder / "checkpoints" / "step_00000004.safetensors", {"w": torch.zeros(1)}, {"step": 4})
    assert main(["watch", str(folder), "--once"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("no logged step: metrics.jsonl is missing or empty, yet a checkpoint is at step 4; no process trains "
            "in it") in out
    assert unfinished(read_run(folder)) == "no logged step of 6 (metrics.jsonl is missing or empty)"


def test_watch_follows_a_run_folder_that_grows_until_it_finishes(tmp_path):
    import threading
    import time

    from filelock import FileLock

    from vslm.commands.watch import frame, watch
    from vslm.files import LOCK
    from vslm.report.runs import read_run

    folder = tmp_path / "r"

    def grow():  # a trainer's files, written the way it writes them: config, then a line per step
        time.sleep(0.2)
        folder.mkdir()
        (folder / "config.toml").write_text('name = "grow"\n[train]\nsteps = 6\n')
        with FileLock(str(folder / LOCK)):  # as the trainer holds it while it trains
            write_steps()

    def write_steps():
        for step in range(1, 7):
            row = {"step": step, "loss": 4 - step / 3, "tokens": 256 * step, "tokens_per_s": 1000.0,
                   "train_time_s": 0.5 * step}
            if step % 3 == 0:
                row.update(val_loss=3.5 - step / 10, val_bpb=5.0 - step / 10)
                (folder / "checkpoints").mkdir(exist_ok=True)
                (folder / "checkpoints" / f"step_{step:08d}.safetensors").write_bytes(b"x")
                with open(folder / "probes.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "icl_score": -0.1 * step, "distribution": {"M1": 0.5}}) + "\n")
            with open(folder / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            time.sleep(0.15)

    writer = threading.Thread(target=grow)
    writer.start()
    buf = io.StringIO()
    run = watch(folder, Console(file=buf, width=200), every=0.05, idle=30)
    writer.join()
    text = buf.getvalue()
    assert run.metrics[-1]["step"] == 6 and text.rstrip().endswith("the run finished")
    assert "step 1/6 (17%)" in text and "step 6/6 (100%)  finished in 3 s of training" in text
    assert "eta 2 s" in text  # at step 2: 1 s for 2 steps, 4 to go
    assert "validation loss 2.900, 4.400 bits per byte at step 6" in text and "1,000 tokens/s" in text
    assert "probes at step 6: ICL score -0.600, KL(unigram ‖ mean prediction) 0.500" in text
    assert "last checkpoint: step 6" in text and "▁" in text and "█" in text
    lines = frame(read_run(folder))
    assert lines[1].startswith("step 6/6") and any(ln.startswith("loss 2.000  █") for ln in lines)
    assert main(["watch", str(folder), "--once"]) == 0
