import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from vslm.cli import main


def readme_commands() -> list[str]:
    """The commands in the README's opening code block."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = (REPO / "README.md").read_text()
    assert text.index("```") < 600  # in the first lines
    assert readme_commands() == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(BIN\)/vslm demo \$\(ARGS\)$", makefile, re.M)
    assert re.search(r"^ARGS \?=$", makefile, re.M)  # `make demo` itself: the demo with no overrides
    assert re.search(r"^test: setup\n\t\$\(BIN\)/python -m pytest -q \$\(XDIST\)$", makefile, re.M)
    assert re.search(r"^XDIST := -n auto --maxprocesses \d+$", makefile, re.M)  # the suite in parallel
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci.splitlines()
    assert re.search(r"^bash scripts/ci-setup.sh", ci, re.M)


def test_demo_smoke_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "train.steps=6", "train.eval_every=3", "train.eval_windows=16", "data.max_bytes=100000",
                 "logging.probe_windows=32",
                 "logging.sample_tokens=20", "train.checkpoint_every=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1] == str(Path("runs") / "demo" / "report.html")
    assert "What it learned" in out and "sample 3" in out and "parameters" in out and "In-context learning" in out
    assert (tmp_path / "runs" / "demo" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "runs" / "demo" / "checkpoints" / "step_00000006.safetensors").is_file()
    # a second demo never overwrites the first
    main(["demo", "train.steps=2", "train.eval_windows=8", "data.max_bytes=100000", "logging.sample_tokens=5",
          "logging.probe_windows=8"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(Path("runs") / "demo-2" / "report.html")


def test_configs_and_describe_commands():
    r = subprocess.run([sys.executable, "-m", "vslm", "configs"], capture_output=True, text=True)
    assert r.returncode == 0 and "nanogpt-shakespeare" in r.stdout and "demo" in r.stdout
    r = subprocess.run([sys.executable, "-m", "vslm", "describe", "nanogpt-shakespeare", "model.vocab_size=65"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "parameters 804,096" in r.stdout and "FLOPs per token" in r.stdout


def test_unknown_command_and_bad_words_exit_nonzero():
    r = subprocess.run([sys.executable, "-m", "vslm", "train", "tiny", "stray-word"], capture_output=True, text=True)
    assert r.returncode == 2 and "override 'stray-word' is not of the form" in r.stderr


@pytest.mark.parametrize(("argv", "usage", "hint"), [
    (["train", "tiny", "--resmue"], "usage: vslm train ", "--resmue (did you mean --resume?)"),
    (["bench", "train", "--stpes", "3"], "usage: vslm bench train ", "--stpes (did you mean --steps?)")])
def test_an_unknown_option_gets_the_commands_usage_and_the_option_meant(capsys, argv, usage, hint):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and f"error: unrecognized arguments: {hint}" in err


def test_a_command_typed_wrong_gets_the_one_meant(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian", "tiny"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "vslm: error: unknown command 'trian' (did you mean train?); the commands: train," in err


SHAPE = ["shape", "run", "--prompt", "a", "--continuation", "b"]


@pytest.mark.parametrize(("argv", "line"), [
    (["bench", "train", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["bench", "speedrun", "--repeat", "0"], "--repeat must be at least 1, got 0"),
    (["bench", "sample", "--tokens", "0"], "--tokens must be at least 1, got 0"),
    (["bench", "gpu", "--seconds", "-5"], "--seconds and --shakespeare-seconds must be above 0, got -5 and 150"),
    ([*SHAPE, "--samples", "0"], "--samples must be at least 1, got 0"),
    ([*SHAPE, "--plot", "/no/such/x.png"], "--plot /no/such/x.png: no folder /no/such"),
    ([*SHAPE, "--plot", "x.txt"], "--plot x.txt: give a file ending in .png, .pdf, .svg"),
    (["probe", "run", "--out", "/"], "--out /: a folder; give a file"),
    (["probe", "run", "--stories", "50"], "--stories applies only with --copying"),
    (["probe", "run", "--induction", "8", "--far"], "--far applies only with --copying"),
    (["probe", "run", "--copying", "names", "--out", "x.jsonl"],
     "--out applies only with neither --copying nor --induction"),
    (["probe", "run", "--json"], "--json applies only with --copying or --induction"),
    (["probe", "run", "--copying", "tokens", "--sequences", "9"], "--sequences applies only with --induction"),
    (["facts", "reader", "--world", "w", "--out", "o", "--max-distractors", "-1"],
     "--max-distractors must be at least 0, got -1"),
    (["facts", "reader", "--world", "w", "--out", "o", "--ramp", "2"],
     "--ramp is a share of the steps, from 0 to 1, got 2"),
    (["facts", "eval", "r", "--world", "w", "--k", "0"], "--k must be at least 1, got 0"),
    (["eval", "run", "--on", "wikitext-2", "--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    (["eval", "run", "--on", "wikitext-2", "--limit", "3"], "--limit applies to --tasks"),
    (["eval", "run", "--on", "wikitext-2", "--include-path", "t"], "--include-path applies to --tasks"),
    (["eval", "run", "--tasks", "t", "--max-bytes", "2k"], "--max-bytes applies to --on"),
    (["eval", "run", "--tasks", "t", "--limit", "0"],
     "--limit is a count of examples per task, or a fraction between 0 and 1, got 0"),
    (["eval", "run", "--tasks", "t", "--limit", "2.5"],
     "--limit is a count of examples per task, or a fraction between 0 and 1, got 2.5"),
    (["eval", "run", "--tasks", "t", "--num-fewshot", "-1"], "--num-fewshot must be at least 0, got -1"),
    (["eval", "run", "--tasks", "t", "--limit", "inf"],
     "--limit is a count of examples per task, or a fraction between 0 and 1, got inf"),
    (["probe", "run", "--stories", "0"], "--stories applies only with --copying"),
    (["eval", "run", "--on", "wikitext-2", "--device", "gpu"], "--device gpu: not a device (auto, cpu, cuda, "
                                                              "cuda:N or mps)")])
def test_bad_counts_and_output_files_are_refused_before_anything_is_measured(capsys, argv, line):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"vslm: error: {line}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_a_device_this_machine_lacks_is_named_before_any_checkpoint_is_read(capsys):
    for argv in (["eval", "run", "--on", "wikitext-2", "--device", "cuda"],
                 ["facts", "eval", "run", "--world", "w", "--device", "cuda:1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"vslm: error: --device {argv[-1]} but CUDA is not available here (--device auto "
                              "runs on the CPU where there is no GPU)")


def test_describe_shows_the_attention_width_a_blocks_own_heads_give(capsys):
    """The head size is model-wide: 3 heads of 16 in a block of width 32 attend over 48, and describe says so."""
    assert main(["describe", "tiny", "model.blocks=[{heads=3},{}]", "model.tie_embeddings=false"]) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert [cells[4].strip() for cells in rows] == ["3 x 16 = 48", "2 x 16"]


def test_version_and_a_bare_vslm(capsys):
    """`vslm --version`: vslm's (pyproject's), torch's and Python's; a bare `vslm`: the commands, exit 2."""
    import tomllib

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == (f"vslm {project} (torch {torch.__version__}, "
                                       f"Python {sys.version.split()[0]})\n")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vslm [-h] [--version] COMMAND ...") and "train" in err and "export" in err
