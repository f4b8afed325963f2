"""TensorBoard event files, so a run can be watched live: `tensorboard --logdir runs/`.

Scalars: every logged metric (loss, lr, grad_norm, tokens_per_s, val_loss, val_bpb, weight
diagnostics) and, at probe steps, the ICL score, M1/M2/M3 and the induction losses. Images: the
position-loss heat map over training so far (probe steps down, positions across) at each probe step.
On resume, events past the checkpoint's step are dropped (purge_step) and written anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vslm.errors import VSLMError
from vslm.train.callbacks import Callback
from vslm.train.probing import ProbeCallback

if TYPE_CHECKING:
    from vslm.train.trainer import Trainer

TENSORBOARD = "tensorboard"
ROW_PIXELS = 8  # each probe step is a band this many pixels high in the heat map


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def heatmap_image(rows: list[list[float]]) -> np.ndarray:
    """(H, W, 3) uint8 viridis image of a steps x positions matrix, each row ROW_PIXELS high."""
    from matplotlib import colormaps

    matrix = np.array(rows, dtype=float)
    lo, hi = np.nanmin(matrix), np.nanmax(matrix)
    scaled = (matrix - lo) / (hi - lo) if hi > lo else np.zeros_like(matrix)
    rgb = colormaps["viridis"](np.nan_to_num(scaled))[..., :3]  # (steps, positions, 3)
    return (np.repeat(rgb, ROW_PIXELS, axis=0) * 255).astype(np.uint8)


class TensorBoardLog(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        if not tensorboard_available():
            raise VSLMError("logging.tensorboard = true needs the tensorboard package: pip install 'vslm[tensorboard]'")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(trainer.run_dir / TENSORBOARD), purge_step=trainer.step or None)
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
        last = self.probes.history[-1]
        for key in ("M1", "M2", "M3", "entropy"):
            self.writer.add_scalar(f"probe/{key}", last["distribution"][key], step)
        for key in ("loss_first", "loss_second"):
            self.writer.add_scalar(f"probe/induction_{key}", last["induction"][key], step)
        if last["icl_score"] is not None:
            self.writer.add_scalar(f"probe/icl_score_{last['icl_label']}", last["icl_score"], step)
        rows = [p["position_loss"] for p in self.probes.history]
        self.writer.add_image("probe/position_loss_heatmap", heatmap_image(rows), step, dataformats="HWC")

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        self.writer.close()
