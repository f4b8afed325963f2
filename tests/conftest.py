"""Shared fixtures: an isolated shard cache, the study group's shared data when it is there, no network."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

# Before `datasets` is imported (it reads these once): never the network, caches in a temporary folder.
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
# One thread per process, before torch is imported: the suite's runs and the CLI subprocesses it starts
# share CI's 2 cores, and threads that fight for cores slow a step many times over (and would add the
# trainer's load warning to stderr that tests expect to be exactly one error line).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="vslm-hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
REFERENCE = SHARED / "bench" / "reference_gpt.py"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["VSLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("vslm-cache"))
    if (SHARED / "data").is_dir():
        os.environ["VSLM_DATA_DIR"] = str(SHARED / "data")
    yield


def ctrl_c_reaches() -> None:
    """A child's preexec_fn: SIGINT at its default, as in a terminal's foreground job. A shell starts a
    background job (`pytest ... &`, or ci-local run so) with SIGINT ignored, and children inherit that:
    a Ctrl-C test would then send a signal its child never sees."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_gpt(overrides: list[str], seed: int = 0, vocab: int = 50):
    """The `tiny` config's model with overrides, in eval mode, its weights moved away from the init (LoRA B = 0,
    identity projections and uniform logits would make comparisons vacuous)."""
    import torch

    from vslm.config import load_config
    from vslm.model import GPT

    cfg = load_config("tiny", overrides).model.model_copy(update={"vocab_size": vocab})
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def tiny_overrides(**extra) -> list[str]:
    """Overrides that make the built-in `tiny` config fast and quiet."""
    words = {"logging.progress": "false", "data.max_bytes": "200000"}
    words.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in words.items()]


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (the run lock and its host left out): what a refused command must
    leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def cli_in_process(capfd, *args):
    """`python -m vslm ARGS` run in this process (its imports paid once, not about 3 s a call): exit code,
    stdout and stderr as subprocess.run gives them. __main__ is `sys.exit(main())`, so the code is main's;
    an uncaught exception fails the test where a subprocess would print a traceback. Keep a real subprocess
    where the process itself is checked (signals, process groups, resource limits, locks held by another)."""
    from types import SimpleNamespace

    from rich.console import Console

    from vslm import cli

    capfd.readouterr()
    console, cli.console = cli.console, Console(width=140)  # a pipe's width, as a subprocess has (pytest -s: a tty)
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    finally:
        cli.console = console
    out, err = capfd.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


@pytest.fixture
def cli(capfd):
    """cli_in_process as a fixture: `cli("train", "--resume", "--out", folder)`."""
    return lambda *args: cli_in_process(capfd, *args)
