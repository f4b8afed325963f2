"""Bad input is one line on stderr naming the problem, a non-zero exit (2 for a bad config or argument),
no traceback, and nothing already written lost: config bases beside their file, sampling arguments,
kv_heads, inf and nan, JSON lines files with a bad line or a missing field, a hand-edited metrics.jsonl."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, files_in, tiny_overrides
from vslm.cli import main
from vslm.config import load_config
from vslm.errors import ConfigError, VSLMError


def one_line(err: str) -> str:
    """The single line of stderr, checked to be a single line with no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def vslm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "vslm", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 4-step tiny run folder."""
    from vslm.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("bad-input") / "run"
    Trainer(load_config("tiny", tiny_overrides(train__steps=4, logging__probe_every=0)), folder).fit()
    return folder


# ------------------------------------------------------------------------------------ config: base


def test_a_relative_base_is_found_beside_the_file_that_names_it_and_chains(tmp_path, monkeypatch):
    (tmp_path / "configs" / "more").mkdir(parents=True)
    (tmp_path / "configs" / "top.toml").write_text('base = "more/mid.toml"\n[model]\nwidth = 64\n')
    (tmp_path / "configs" / "more" / "mid.toml").write_text('base = "root.toml"\n[train]\nsteps = 7\n')
    (tmp_path / "configs" / "more" / "root.toml").write_text('base = "tiny"\n[train]\nlr = 0.002\n')
    # decoys in the current folder, where a base used to be looked up: never read
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "mid.toml").write_text('[train]\nsteps = 999\n')
    (tmp_path / "root.toml").write_text('[train]\nlr = 0.5\n')
    for cwd in (tmp_path, tmp_path / "more"):
        monkeypatch.chdir(cwd)
        cfg = load_config(str(tmp_path / "configs" / "top.toml"))
        got = (cfg.name, cfg.model.width, cfg.train.steps, cfg.train.lr, cfg.model.context)
        assert got == ("top", 64, 7, 0.002, 32)
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/top.toml").train.steps == 7  # the file itself: relative to the current folder


def test_a_missing_or_looping_base_is_one_line(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    (tmp_path / "c.toml").write_text('base = "nowhere.toml"\n')
    (tmp_path / "d.toml").write_text("base = 3\n")
    for name, words in (("a", ["loops"]), ("c", ["nowhere.toml", str(tmp_path / "nowhere.toml")]), ("d", ["base"])):
        assert main(["describe", str(tmp_path / f"{name}.toml")]) == 2
        line = one_line(capsys.readouterr().err)
        assert all(w in line for w in words), line


# ---------------------------------------------------------------------- config: kv_heads, inf, nan


@pytest.mark.parametrize("words, message", [
    (["model.kv_heads=3"], "kv_heads 3 is more than heads 2"),  # used to be cut to 2 silently
    (["model.kv_heads=3", "model.heads=4", "model.width=64"], "heads 4 is not divisible by kv_heads 3"),
    (["model.blocks=[{kv_heads=3}, {}]"], "block 0: kv_heads 3 is more than heads 2"),
    (["model.kv_heads=2", "model.blocks=[{heads=1}, {}]"], "block 0: kv_heads 2 is more than heads 1"),
])
def test_kv_heads_that_do_not_fit_the_heads_are_a_config_error(words, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", words)
    assert main(["describe", "tiny", *words]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_kv_heads_that_fit_still_build():
    specs = load_config("tiny", ["model.kv_heads=1"]).model.block_specs()
    assert [(s.heads, s.kv_heads) for s in specs] == [(2, 1)] * 2
    specs = load_config("tiny", ["model.width=64", "model.blocks=[{heads=4, kv_heads=2}, {}]"]).model.block_specs()
    assert [(s.heads, s.kv_heads) for s in specs] == [(4, 2), (2, 2)]


@pytest.mark.parametrize("word, field", [
    ("train.lr=inf", "train.lr"), ("train.lr=nan", "train.lr"), ("train.lr=-inf", "train.lr"),
    ("train.weight_decay=inf", "train.weight_decay"), ("train.checkpoint_minutes=inf", "train.checkpoint_minutes"),
    ("train.betas=[0.9, nan]", "train.betas.1"), ("model.rope_base=inf", "model.rope_base"),
    ("model.ffn_mult=1e400", "model.ffn_mult"),
    ("model.schedule.heads_scale=[0.5, inf]", "model.schedule.heads_scale.1"),
    ("model.blocks=[{attention_gamma=inf}, {}]", "model.blocks.0.attention_gamma"),
    ("data.val_fraction=nan", "data.val_fraction"),
])
def test_inf_and_nan_are_refused_in_every_float_field(word, field, capsys):
    with pytest.raises(ConfigError, match="finite"):
        load_config("tiny", [word])
    assert main(["describe", "tiny", word]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"vslm: error: config error: {field}: ") and "finite" in line, line


# ------------------------------------------------------------------------------------------ sample


@pytest.mark.parametrize("args, message", [
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--top-k", "-3"], "--top-k must be at least 1"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0"),
    (["--num", "0"], "--num must be at least 1"),
    (["--tokens", "-1"], "--tokens must be at least 1"),
    (["--threads", "-1"], "--threads must be 0 (torch's choice) or more, got -1"),
    (["--seed", "-1"], "--seed must be 0 to 2**64 - 1, got -1"),  # wrapped to 2**64 - 1's samples
    (["--seed", str(2**64)], "--seed must be 0 to 2**64 - 1"),  # a traceback
])
def test_sample_refuses_out_of_range_arguments_in_one_line(run, args, message, capsys):
    assert main(["sample", str(run), *args]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_sample_with_temperature_0_is_greedy(run, capsys):
    assert main(["sample", str(run), "--temperature", "0", "--tokens", "8", "--num", "3", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("sampling from ") and "warning" not in out.err  # which weights, then progress
    assert main(["sample", str(run), "--temperature", "0", "--tokens", "8", "--seed", "2"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.strip("\n") and greedy.strip("\n") in out.out  # every seed, every sample: the same text


def test_sample_takes_several_prompts(run, capsys):
    """A second --prompt replaced the first, silently; each is continued now, --num samples each."""
    assert main(["sample", str(run), "--temperature", "0", "--tokens", "4", "--prompt", "The", "--prompt",
                 "Once", "--num", "2"]) == 0
    out = capsys.readouterr().out
    heads = [ln for ln in out.splitlines() if "prompt " in ln and "sample " in ln]
    assert len(heads) == 4 and "prompt 2 sample 2" in heads[-1]
    texts = [ln for ln in out.splitlines() if ln and "─" not in ln]
    assert [t[:4] for t in texts] == ["The", "The", "Once", "Once"] or \
        [t.split()[0] for t in texts] == ["The", "The", "Once", "Once"]


def test_sample_on_busy_cores_says_how_to_take_fewer_threads(run, capsys, monkeypatch):
    from vslm.train import trainer

    # every core busy with other tasks, as cores_in_use would measure it on a loaded machine
    monkeypatch.setattr(trainer, "cores_in_use", lambda: (float(os.cpu_count() or 1), "2 other tasks"))
    monkeypatch.setattr(trainer, "_cores_seen", None)
    monkeypatch.setattr(trainer, "_threads_warned", False)
    threads = torch.get_num_threads()
    try:
        assert main(["sample", str(run), "--threads", "2", "--temperature", "0", "--tokens", "8"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "free for 2 threads; threads that fight for cores slow sampling down: set --threads 1" in err


def test_generate_refuses_out_of_range_arguments():
    from vslm.model import GPT

    model = GPT(load_config("tiny", ["model.vocab_size=20"]).model)
    idx = torch.zeros(1, 1, dtype=torch.long)
    bad = [({"top_k": 0}, "top_k must be at least 1"), ({"temperature": -1.0}, "temperature must be"),
           ({"temperature": float("nan")}, "temperature must be"),
           ({"temperature": float("inf")}, "temperature must be")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            model.generate(idx, 2, **kwargs)
    with pytest.raises(ValueError, match="new_tokens"):
        model.generate(idx, -1)
    assert model.generate(idx, 3, temperature=0).shape == (1, 4)
    assert model.generate(idx, 3, top_k=1).shape == (1, 4)


# ------------------------------------------------------------------------------------- JSON lines


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = [json.dumps({"text": f"Document number {i} is a short line of text. " * 3}) for i in range(4)]


def test_a_broken_json_line_is_named_by_its_line_number_in_one_line(tmp_path):
    """The third line is line 3 (datasets said "row 2"), and datasets' own log line does not appear."""
    write_lines(tmp_path / "broken.jsonl", [GOOD[0], GOOD[1], '{"text": "cut sh', GOOD[2]])
    r = vslm("train", "tiny", "data.source=broken.jsonl", "--out", "out", "logging.progress=false", cwd=tmp_path)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "broken.jsonl, line 3: not valid JSON" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lines, message", [
    ([GOOD[0], "not json", GOOD[1]], "line 2: not valid JSON"),
    ([GOOD[0], "", GOOD[1], "[1, 2]"], "line 4: not a JSON object"),
    ([GOOD[0], GOOD[1], json.dumps({"body": "x"}), GOOD[2]], "line 3: a record has no field 'text'"),
])
def test_json_lines_errors_name_the_line(tmp_path, capfd, lines, message):
    from vslm.config import DataConfig
    from vslm.data.sources import open_source

    path = write_lines(tmp_path / "rows.jsonl", lines)
    with pytest.raises(VSLMError, match=message) as e:
        list(open_source(DataConfig(source=str(path))).documents())
    assert "\n" not in str(e.value)
    assert capfd.readouterr().err == ""
    gz = tmp_path / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(VSLMError, match=message):
        list(open_source(DataConfig(source=str(gz))).documents())


def test_a_record_without_the_text_field_is_named_on_the_command_line(tmp_path):
    write_lines(tmp_path / "rows.jsonl", [GOOD[0], json.dumps({"body": "no text here"}), GOOD[1]])
    r = vslm("train", "tiny", "data.source=rows.jsonl", "--out", "out", cwd=tmp_path)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "rows.jsonl, line 2: a record has no field 'text'" in line and "data.text_field" in line, line


def test_json_lines_read_as_before(tmp_path):
    from vslm.config import DataConfig
    from vslm.data.sources import open_source

    rows = [{"text": "one"}, {"text": "two", "meta": {"a": [1, 2]}}, {"text": ""}, {"text": "four"}]
    for name in ("rows.jsonl", "rows.json", "rows.ndjson"):
        path = write_lines(tmp_path / name, [json.dumps(r) for r in rows] + [""])
        assert list(open_source(DataConfig(source=str(path))).documents()) == ["one", "two", "four"]
    # a JSON document (a list of records) in a .json file is still read, through datasets
    (tmp_path / "doc.json").write_text(json.dumps(rows, indent=1))
    assert list(open_source(DataConfig(source=str(tmp_path / "doc.json"))).documents()) == ["one", "two", "four"]


def test_a_broken_parquet_file_is_one_line_without_datasets_log(tmp_path, capfd):
    from vslm.config import DataConfig
    from vslm.data.sources import open_source

    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(VSLMError, match="bad.parquet: cannot read it as parquet"):
        list(open_source(DataConfig(source=str(tmp_path / "bad.parquet"))).documents())
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------------------------------ report


def test_report_skips_malformed_metrics_lines_with_one_warning(run, tmp_path, capsys):
    folder = tmp_path / "edited"
    shutil.copytree(run, folder)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    kept = len(lines)
    lines[2:2] = ['{"step": 3, "lo', "not json", '{"step": "x", "loss": 2}']  # lines 3, 4, 5
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr()
    line = one_line(out.err)
    assert line.startswith("warning: ") and "metrics.jsonl" in line and "3 malformed lines (3, 4, 5)" in line, line
    assert out.out.strip() == str(folder / "report.html") and (folder / "report.html").is_file()

    from vslm.report.runs import read_run

    warnings: list[str] = []
    assert len(read_run(folder, warn=warnings.append).metrics) == kept
    assert len(warnings) == 1

    lines = (run / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("\n".join([*lines[:1], "{oops", *lines[1:]]) + "\n")
    assert main(["report", str(folder)]) == 0
    assert "metrics.jsonl: skipped malformed line 2:" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------ the new-user audit


LOADS_A_RUN = [["sample", "--prompt", "The"], ["eval", "--on", "stories"], ["probe", "--induction", "4"],
               ["shape", "--prompt", "The", "--continuation", " cat"]]


@pytest.mark.parametrize("name, text, message", [
    ("config.toml", "garbage\n", "config.toml is not valid TOML: Expected '=' after a key in a key/value pair "
                                 "(at line 1, column 8)"),
    ("tokenizer.json", "{bad\n", "tokenizer.json is not valid JSON: Expecting property name enclosed in double "
                                 "quotes: line 1 column 2"),
])
def test_a_damaged_run_file_is_one_line_naming_it_for_every_command_that_loads_a_run(run, tmp_path, name, text,
                                                                                      message, capsys):
    folder = tmp_path / "corrupt"
    shutil.copytree(run, folder)
    (folder / name).write_text(text)
    before = files_in(folder)
    for command in LOADS_A_RUN:
        assert main([command[0], str(folder), *command[1:]]) == 1, command
        assert message in one_line(capsys.readouterr().err), command
    assert main(["export", str(folder), "--out", str(tmp_path / "hf")]) == 1
    assert message in one_line(capsys.readouterr().err)
    assert files_in(folder) == before and not (tmp_path / "hf").exists()


def test_a_damaged_summary_stops_an_export_with_one_line(run, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    shutil.copytree(run, folder)
    (folder / "summary.json").write_bytes(b"\xff{")
    assert main(["export", str(folder), "--out", str(tmp_path / "hf")]) == 1
    assert "summary.json: 'utf-8' codec can't decode" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("argv, message", [
    (["experiment"], "experiment needs a NAME"),
    (["scaling"], "scaling needs a SPEC"),
    (["eval", "RUN"], "eval needs --on CORPUS"),
    (["shape", "RUN", "--continuation", "x"], "shape needs at least one --prompt"),
    (["train"], "train needs a config"),
])
def test_a_missing_argument_is_a_usage_error(run, argv, message, capsys):
    assert main([str(run) if word == "RUN" else word for word in argv]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_prompt_outside_a_char_vocabulary_names_its_first_character_as_a_usage_error(run, capsys):
    before = files_in(run)
    assert main(["sample", str(run), "--prompt", "ÜΩ€ hi", "--tokens", "2"]) == 2
    out = capsys.readouterr()
    assert one_line(out.err).startswith("vslm: error: --prompt: character 'Ü' is not in this character vocabulary")
    assert out.out == "" and files_in(run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA trains on it")
def test_train_on_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "tiny", "--out", str(tmp_path / "run"), "train.device=cuda",
                 *tiny_overrides(train__steps=2)]) == 2
    assert "train.device=cuda but CUDA is not available" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run" / "config.toml").exists()


def test_demo_into_a_run_names_the_command_that_continues_it(run, capsys):
    before = files_in(run)
    assert main(["demo", "--out", str(run), "train.steps=5"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line == (f"vslm: error: {run} already holds a run: `vslm train --resume --out {run}` continues it; give "
                    "vslm demo another --out, or none (runs/demo, or runs/demo-N if taken)")
    assert files_in(run) == before


WORLD = ["--people", "8", "--novel-people", "4", "--hops", "2", "--questions-per-hop", "3"]


def test_facts_generate_refuses_a_folder_that_is_not_empty_unless_it_holds_the_same_world(run, tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["facts", "generate", "--out", str(world), *WORLD]) == 0
    capsys.readouterr()
    before = files_in(world)
    assert sorted(before) == ["cards.jsonl", "questions.jsonl", "train.txt", "world.json"]
    # another seed into the world, or any world into a run folder: one line, nothing written
    for out, asked, held in ((world, ["--seed", "1"], " (it holds a world of seed 0 (asked 1))"),
                             (world, ["--preloaded", "20"], " (it holds a world of preloaded 0 (asked 20))"),
                             (run, [], "")):
        kept = files_in(out)
        assert main(["facts", "generate", "--out", str(out), *asked, *WORLD]) == 1
        assert one_line(capsys.readouterr().err) == (
            f"vslm: error: {out} exists, is not empty and holds no world of these settings and seed{held}: facts "
            "generate writes a new folder (--out another), nothing is overwritten")
        assert files_in(out) == kept
    # the same world again: said to be there, rc 0, the files as they were
    assert main(["facts", "generate", "--out", str(world), *WORLD]) == 0
    out = capsys.readouterr()
    assert one_line(out.err) == f"{world} already holds this world (the same settings and seed): nothing written"
    assert out.out.splitlines()[-1] == str(world) and files_in(world) == before
