"""VSLM: a lab for very small language models.

    from vslm import load_config, Trainer
    cfg = load_config("demo", ["train.steps=200"])
    Trainer(cfg, "runs/notebook").fit()
"""

from vslm.config import RunConfig, load_config
from vslm.errors import ConfigError, VSLMError
from vslm.model import GPT
from vslm.train.run_folder import load_run
from vslm.train.trainer import Trainer

__all__ = ["GPT", "ConfigError", "RunConfig", "Trainer", "VSLMError", "load_config", "load_run"]
__version__ = "0.1.0"
