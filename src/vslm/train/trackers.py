"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow (`logging.trackers`, extras `wandb`
and `mlflow`).

Each logs the scalars of every logged step (the numbers of metrics.jsonl's line), the resolved config, and at
probe steps the probe scalars and the position-loss heat map (figures.py, as TensorBoard has them). Neither
reaches the network unless told to: W&B runs offline into <run>/wandb/ unless WANDB_MODE says otherwise
(`wandb sync <run>/wandb/offline-run-*` uploads later); MLflow writes a local file store in <run>/mlflow/
unless MLFLOW_TRACKING_URI names another, with its telemetry off unless MLFLOW_DISABLE_TELEMETRY is set.
The tracker's run id is kept in <run>/trackers.json: `--resume` continues the same tracker run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from typing import TYPE_CHECKING

from vslm.config import as_text, flat_values
from vslm.errors import ConfigError
from vslm.files import write_text
from vslm.train.callbacks import Callback
from vslm.train.figures import HEATMAP, position_loss_heatmap, probe_scalars
from vslm.train.probing import ProbeCallback

if TYPE_CHECKING:
    import numpy as np

    from vslm.train.trainer import Trainer

TRACKERS = "trackers.json"  # {"wandb": run id, "mlflow": run id}
WANDB = "wandb"
MLFLOW = "mlflow"


def require(package: str) -> None:
    """One line (exit 2) when a tracker in logging.trackers lacks its package; the extra has its name."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"logging.trackers has '{package}' but the {package} package is not installed: "
                          f"pip install 'vslm[{package}]'")


def scalars_of(metrics: dict) -> dict[str, float]:
    """A step's numbers, `step` and anything not a number left out."""
    return {k: v for k, v in metrics.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


def flat_params(tree: dict, limit: int) -> dict[str, str]:
    """`model.width` -> "64": a nested config as MLflow params; lists as JSON; values cut to `limit` chars."""
    texts = {k: as_text(v) for k, v in flat_values(tree).items()}
    return {k: t if len(t) <= limit else t[: limit - 3] + "..." for k, t in texts.items()}


def param_limit() -> int:
    """The longest param value this MLflow takes (6000 in 2.x and 3.x; 500 before)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return 500
    return MAX_PARAM_VAL_LENGTH


class _Tracker(Callback):
    """Scalars every logged step, probe scalars and the heat map at probe steps, one `log` call per step."""

    name = ""

    def __init__(self):
        require(self.name)  # at trainer start, before the run folder is written

    def on_train_start(self, trainer: Trainer) -> None:
        path = trainer.run_dir / TRACKERS
        ids = json.loads(path.read_text()) if path.exists() else {}
        run_id = self.start(trainer, ids.get(self.name) if trainer.resume else None)
        if ids.get(self.name) != run_id:
            write_text(path, json.dumps({**ids, self.name: run_id}, indent=1) + "\n")
        self.probes = next((cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback)), None)
        self._log_step(trainer.step, {})  # step 0's probes, run just before

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        self._log_step(trainer.step, scalars_of(metrics))

    def _log_step(self, step: int, scalars: dict[str, float]) -> None:
        image = None
        if self.probes is not None and self.probes.last_step == step:
            scalars = {**scalars, **probe_scalars(self.probes.history[-1])}
            image = position_loss_heatmap(self.probes.history)
        if scalars or image is not None:
            self.log(step, scalars, image)

    def start(self, trainer: Trainer, run_id: str | None) -> str:
        """Open (or, with the id of the run before a resume, reopen) the tracker's run; log the config."""
        raise NotImplementedError

    def log(self, step: int, scalars: dict[str, float], image: np.ndarray | None) -> None:
        raise NotImplementedError


class WandbLog(_Tracker):
    name = WANDB

    def start(self, trainer: Trainer, run_id: str | None) -> str:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vslm"), name=trainer.cfg.name,
                              id=run_id or uuid.uuid4().hex[:12], resume="allow", dir=str(trainer.run_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(silent=True, console="off"))
        self.run.config.update(trainer.cfg.model_dump(mode="json"), allow_val_change=True)
        return self.run.id

    def log(self, step: int, scalars: dict[str, float], image: np.ndarray | None) -> None:
        row: dict = dict(scalars)
        if image is not None:
            row[HEATMAP] = self.wandb.Image(image)
        self.run.log(row, step=step)

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        offline = self.run.offline
        self.run.finish(exit_code=0 if trainer.step >= trainer.cfg.train.steps else 1)
        # finish() only informs wandb-core that the run is over: the run file is closed when its service
        # stops, which an exiting process does at exit. Offline, stop it now, so that the run file is whole
        # for `wandb sync` when fit() returns (as in a notebook), unless another run of the process is open
        if offline and self.wandb.setup().most_recent_active_run is None:
            self.wandb.teardown()


class MLflowLog(_Tracker):
    name = MLFLOW

    def start(self, trainer: Trainer, run_id: str | None) -> str:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (trainer.run_dir / MLFLOW).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store, in maintenance, behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.Metric, self.client = Metric, MlflowClient(uri)
        run = None
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException:  # another tracking store since: a new run
                run = None
        if run is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "vslm")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=trainer.cfg.name)
        self.run_id = run.info.run_id
        config = trainer.cfg.model_dump(mode="json")
        # a param never changes in MLflow: a resume that extends train.steps keeps the first value there,
        # and config.json (an artifact, rewritten) holds the config the run continued with
        params = [Param(k, v) for k, v in flat_params(config, param_limit()).items()
                  if k not in run.data.params]
        for i in range(0, len(params), 100):  # MLflow's most params in one batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config, "config.json")
        return self.run_id

    def log(self, step: int, scalars: dict[str, float], image: np.ndarray | None) -> None:
        now = int(time.time() * 1000)
        if scalars:
            rows = [self.Metric(k, float(v), now, step) for k, v in scalars.items()]
            self.client.log_batch(self.run_id, metrics=rows)
        if image is not None:
            self.client.log_image(self.run_id, image, f"probes/position_loss_heatmap_step_{step:08d}.png")

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if trainer.step >= trainer.cfg.train.steps else "KILLED")
