"""Packaging: what pyproject promises, what set-up installs, and what vslm needs of the platform."""

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            out[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return out


def test_constraints_pin_every_requirement_within_pyprojects_bounds():
    pinned = pins()
    assert "torch" not in pinned and "vslm" not in pinned  # set-up's own choice; the project itself
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in requirements:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue
        assert name in pinned, f"constraints.txt pins no {req.name}: run `make constraints`"
        assert req.specifier.contains(pinned[name]), f"constraints.txt's {name}=={pinned[name]} is not {req}"


def test_set_up_installs_with_the_constraints():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "constraints.txt" in setup and setup.count('${PIN[@]+"${PIN[@]}"}') == 2
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(VENV\)/\.installed:.*constraints\.txt", make, re.M)


def test_no_private_torch_module_is_imported():
    """torch's private modules (torch.optim._muon, say) move without notice: vslm imports none."""
    for path in (ROOT / "src" / "vslm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "torch" and any(p.startswith("_") for p in parts)), \
                    f"{path.relative_to(ROOT)} imports the private {name}"


def test_vslm_imports_without_posix_only_modules():
    """Windows has neither fcntl nor resource: importing vslm, its CLI and its trainer needs neither."""
    code = ("import sys; sys.modules['fcntl'] = sys.modules['resource'] = None\n"
            "import warnings; warnings.simplefilter('ignore')\n"
            "import vslm.cli, vslm.train.trainer, vslm.train.run_folder\n"
            "print(vslm.train.run_folder.RunLock)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_passes_its_args_to_the_demo():
    """`make demo ARGS=train.threads=1`: what the demo's busy-machine warning advises, from the README's command."""
    r = subprocess.run(["make", "-s", "-n", "--no-print-directory", "demo", "ARGS=train.threads=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith("/vslm demo train.threads=1")
