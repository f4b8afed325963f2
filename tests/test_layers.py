"""Imports run one way (README's Layout; the contracts in .importlinter), and the leaves stay light:
`vslm --help`, argument errors, `import vslm.report` and `import vslm.lab.stats` load no torch."""

import os
import shutil
import subprocess
import sys

from conftest import REPO

CONFIG = REPO / ".importlinter"
HEAVY = ("torch", "numpy", "scipy", "matplotlib", "datasets", "safetensors")


def lint_imports(pythonpath=None) -> subprocess.CompletedProcess:
    """import-linter on the vslm found first on the path (the checkout's, or `pythonpath`'s copy)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(CONFIG)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


def test_import_contracts_are_kept():
    r = lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_the_contracts_catch_an_upward_import_and_torch_in_a_leaf(tmp_path):
    """A copy of the package with an arrow upward (model -> train) and torch in lab/stats.py: both contracts
    break, so a passing test_import_contracts_are_kept means something."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "vslm", src / "vslm", ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "vslm" / "model" / "hooks.py", "a") as f:
        f.write("\nimport vslm.train.trainer  # noqa\n")
    with open(src / "vslm" / "lab" / "stats.py", "a") as f:
        f.write("\nimport torch  # noqa\n")
    r = lint_imports(src)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "0 kept, 2 broken" in r.stdout, r.stdout
    assert "vslm.model.hooks -> vslm.train.trainer" in r.stdout and "vslm.lab.stats -> torch" in r.stdout


def loaded_after(code: str) -> list[str]:
    """The heavy packages in sys.modules after running code in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_help_and_argument_errors_load_no_torch():
    run_cli = """
import contextlib, io
from vslm.cli import main
for argv in (["--help"], ["train", "--help"], ["bench", "train", "--help"], ["experiment", "--help"],
             ["train", "--nope"], ["bench", "attention", "--steps", "x"], ["nocommand"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == (0 if "--help" in argv else 2), (argv, e.code)
        else:
            raise AssertionError(argv)
    assert "--help" in argv or "error:" in err.getvalue(), argv
"""
    assert loaded_after(run_cli) == []


def test_report_and_lab_statistics_load_no_torch():
    """What import-linter cannot see: a package's __init__ runs on the import of any module in it, so
    vslm/__init__.py must not import the training stack either (it imports its names on first use)."""
    assert "torch" not in loaded_after("import vslm.report, vslm.report.experiment")
    stats = loaded_after("import vslm.lab.stats as s, vslm.lab.tables; assert s.welch([1, 2, 4], [3, 5, 6])['p'] > 0")
    assert "scipy" in stats and "torch" not in stats
    assert "torch" in loaded_after("from vslm import Trainer")  # the lazy names still work
