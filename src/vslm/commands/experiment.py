"""`vslm experiment NAME`: an experiment of any kind, by the `kind` its TOML names.

A plain experiment (variants of a config over seeds) runs in vslm.lab.experiments; `kind = "knowledge"`
(arms, a world per seed, criteria) runs in vslm.knowledge.experiment, which trains its arms through
vslm.lab.runner (reader arms through vslm.knowledge.reader). The choice is made here, in the commands
layer, so that lab/ never imports knowledge/ and the imports stay one way: commands -> knowledge -> lab.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vslm.errors import ConfigError
from vslm.lab import experiments
from vslm.lab.parallel import Launcher


def run_experiment(spec_name_or_path: str, out: Path, seeds: int | None = None, extra_overrides: Sequence[str] = (),
                   console: Console | None = None, launcher: Launcher | None = None, resolve: float | None = None,
                   max_seeds: int | None = None) -> dict:
    """The summary of a plain experiment (vslm.lab.experiments.run_experiment) or the results of a
    knowledge experiment (vslm.knowledge.experiment.run_knowledge_experiment). launcher, resolve and
    max_seeds apply to plain experiments; a knowledge experiment runs its seeds in launcher.jobs local processes."""
    name, raw, label = experiments.read_experiment(spec_name_or_path)
    kind = raw.get("kind")
    if kind is None:
        return experiments.run_experiment(spec_name_or_path, out, seeds, extra_overrides, console, launcher, resolve,
                                          max_seeds)
    if resolve is not None or max_seeds is not None or (launcher and launcher.kind != "local"):
        raise ConfigError(f"{label}: --resolve, --max-seeds and --launcher apply to comparisons of variants; "
                          "a knowledge experiment runs its seeds here (--jobs N: in N worker processes)")
    if kind == "knowledge":
        from vslm.knowledge.experiment import parse_spec, run_knowledge_experiment

        return run_knowledge_experiment(name, parse_spec(raw, label), Path(out), seeds, extra_overrides, console,
                                        spec_name_or_path, jobs=launcher.jobs if launcher else 1)
    raise ConfigError(f"{label}: unknown kind '{kind}' (leave it out for a comparison of variants, or 'knowledge')")
