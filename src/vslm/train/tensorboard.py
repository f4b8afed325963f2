"""TensorBoard event files, so a run can be watched live: `tensorboard --logdir runs/`.

Scalars: every logged metric (loss, lr, grad_norm, tokens_per_s, val_loss, val_bpb, weight
diagnostics) and, at probe steps, the ICL score, M1/M2/M3 and the induction losses. Images: the
position-loss heat map over training so far (probe steps down, positions across) at each probe step.
On resume, events past the checkpoint's step are dropped (purge_step: the step after it) and written anew.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from vslm.errors import VSLMError
from vslm.train.callbacks import Callback
from vslm.train.figures import HEATMAP, position_loss_heatmap, probe_scalars
from vslm.train.probing import ProbeCallback

if TYPE_CHECKING:
    from vslm.train.trainer import Trainer

TENSORBOARD = "tensorboard"


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def after_existing_files(folder: Path) -> None:
    """Returns once a new event file's name sorts after every one in `folder`. TensorBoard reads a run's files in
    name order, events.out.tfevents.<second>.<host>.<pid>.<count>, and names of one second compare by pid and a
    per-process count as text ("10" before "9"): a resume's file read first, its purge would keep the steps it
    drops (steps 5-8 twice). Waits at most a second, where a file of this very second is there already (one
    stamped later still, by a clock ahead of this one, is not waited for)."""
    stamps = [int(part) for p in folder.glob("events.out.tfevents.*")
              if (part := p.name.split(".")[3] if p.name.count(".") >= 3 else "").isdigit()]
    deadline = time.monotonic() + 1.0
    while stamps and time.time() < max(stamps) + 1 and time.monotonic() < deadline:
        time.sleep(0.02)


class TensorBoardLog(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        if not tensorboard_available():
            raise VSLMError("logging.tensorboard = true needs the tensorboard package: pip install 'vslm[tensorboard]'")
        from torch.utils.tensorboard import SummaryWriter

        # resumed at step s: the events of steps 1..s are the checkpoint's, training goes on at s + 1
        after_existing_files(trainer.run_dir / TENSORBOARD)
        self.writer = SummaryWriter(str(trainer.run_dir / TENSORBOARD), purge_step=trainer.step + 1 if trainer.step
                                    else None)
        self.probes = next((cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback)), None)
        if self.probes is not None and self.probes.last_step == trainer.step:  # step 0, probed just before
            self.write_probes(trainer.step)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, trainer.step)
        if self.probes is not None and self.probes.last_step == trainer.step:
            self.write_probes(trainer.step)

    def write_probes(self, step: int) -> None:
        for key, value in probe_scalars(self.probes.history[-1]).items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_image(HEATMAP, position_loss_heatmap(self.probes.history), step, dataformats="HWC")

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        self.writer.close()
