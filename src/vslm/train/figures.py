"""What the live trackers (TensorBoard, W&B, MLflow) show of the probes: the scalars of a probe step
and the position-loss heat map over training so far (probe steps down, positions across)."""

from __future__ import annotations

import numpy as np

ROW_PIXELS = 8  # each probe step is a band this many pixels high in the heat map
HEATMAP = "probe/position_loss_heatmap"


def heatmap_image(rows: list[list[float]]) -> np.ndarray:
    """(H, W, 3) uint8 viridis image of a steps x positions matrix, each row ROW_PIXELS high."""
    from matplotlib import colormaps

    matrix = np.array(rows, dtype=float)
    lo, hi = np.nanmin(matrix), np.nanmax(matrix)
    scaled = (matrix - lo) / (hi - lo) if hi > lo else np.zeros_like(matrix)
    rgb = colormaps["viridis"](np.nan_to_num(scaled))[..., :3]  # (steps, positions, 3)
    return (np.repeat(rgb, ROW_PIXELS, axis=0) * 255).astype(np.uint8)


def probe_scalars(record: dict) -> dict[str, float]:
    """The scalars of one probes.jsonl record: `probe/M1` ... `probe/entropy`, the induction losses and
    the ICL score (when the run has one). A value that is not finite (null in the record: a diverging run)
    is left out."""
    out = {f"probe/{key}": record["distribution"][key] for key in ("M1", "M2", "M3", "entropy")}
    out.update({f"probe/induction_{key}": record["induction"][key] for key in ("loss_first", "loss_second")})
    out[f"probe/icl_score_{record['icl_label']}"] = record["icl_score"]
    return {key: value for key, value in out.items() if value is not None}


def position_loss_heatmap(history: list[dict]) -> np.ndarray:
    """The heat map image of the probe records so far."""
    return heatmap_image([p["position_loss"] for p in history])
