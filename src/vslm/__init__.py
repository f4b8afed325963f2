"""VSLM: a lab for very small language models.

    from vslm import load_config, Trainer
    cfg = load_config("demo", ["train.steps=200"])
    Trainer(cfg, "runs/notebook").fit()

The names below are imported on first use (PEP 562), so that importing a leaf such as vslm.report or
vslm.lab.stats, or running `vslm --help`, does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vslm.config import RunConfig, load_config
    from vslm.errors import ConfigError, VSLMError
    from vslm.model import GPT
    from vslm.train.run_folder import load_run
    from vslm.train.trainer import Trainer

_WHERE = {"GPT": "vslm.model", "ConfigError": "vslm.errors", "RunConfig": "vslm.config", "VSLMError": "vslm.errors",
          "Trainer": "vslm.train.trainer", "load_config": "vslm.config", "load_run": "vslm.train.run_folder"}

__all__ = ["GPT", "ConfigError", "RunConfig", "Trainer", "VSLMError", "load_config", "load_run"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    raise AttributeError(f"module 'vslm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
