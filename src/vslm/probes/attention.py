"""Per-head statistics of the attention weights: how much weight a query hands out, how spread it is,
and how often it lands on the first token (RESEARCH.md section 3, attention normalisations).
"""

from __future__ import annotations

import numpy as np
import torch

from vslm.model.attention import window_mask
from vslm.model.gpt import GPT
from vslm.model.hooks import capture
from vslm.probes.divergence import entropy

SINK_THRESHOLD = 0.3  # a query is a sink query when its weight on token 0 exceeds this


@torch.no_grad()
def attention_stats(model: GPT, idx: torch.Tensor) -> list[dict]:
    """Attention statistics on idx (B, T), one dict per depth, each value a (H,) float64 array (one
    entry per head of the block at that depth) averaged over the batch and the queries:

      row_sum:        mean of sum_j a[i, j], the total weight of query i (1 for softmax and ssmax; less
                      for softmax1, Z^(1 - gamma) for power, anything for sigmoid);
      entropy:        mean over all queries of the entropy of the row normalised to sum to 1,
                      H(a[i, :] / sum_j a[i, j]) (nats; query 0 sees one key, entropy 0);
      entropy_ratio:  mean over queries with n_i >= 2 visible keys (position >= 1, within the window) of
                      that entropy / log n_i: 1 = uniform over what the query can see, 0 = one key;
                      nan where no query sees two keys;
      sink_fraction:  fraction of queries at positions i >= 1 whose raw weight a[i, 0] on token 0 exceeds
                      0.3 (past a sliding window token 0 is invisible, weight 0);
      entropy_slope:  the least-squares slope of that entropy (mean over the batch, per query) against
                      log n_i over the queries with n_i >= 2: RESEARCH.md's "attention entropy against
                      log(position)". 1 = the weights spread as n grows, as uniform ones do (attention
                      fading, what SSMax's log n scaling is meant to stop); 0 = as focused at any length;
                      nan where every such query sees the same number of keys (a window of 2);

    plus `block`, the unique block run at that depth (shared blocks appear at several depths).
    """
    names = [f"attn.{d}" for d in range(len(model.order))]
    with capture(model, *names) as seen:
        model(idx)
    T = idx.shape[1]
    stats = []
    for depth, name in enumerate(names):
        weights = seen[name].double()  # (B, H, T, T), zero on keys a query cannot see
        keys = window_mask(T, model.specs[model.order[depth]].window, weights.device).sum(-1).double()  # (T,) n_i
        row_sum = weights.sum(-1)  # (B, H, T)
        rows = weights / row_sum.clamp_min(torch.finfo(weights.dtype).tiny)[..., None]  # each row sums to 1
        spread = entropy(rows)  # (B, H, T)
        wide = keys >= 2
        stats.append({
            "block": model.order[depth],
            "row_sum": _per_head(row_sum),
            "entropy": _per_head(spread),
            "entropy_ratio": _per_head(spread[..., wide] / keys[wide].log()),
            "sink_fraction": _per_head((weights[..., 1:, 0] > SINK_THRESHOLD).double()),
            "entropy_slope": _slope(keys[wide].log(), spread[..., wide].mean(0)),
        })
    return stats


def _slope(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(n,) and (H, n) -> (H,): each row's least-squares slope on x; nan where x does not vary (a window of
    2 gives every query log 2: its mean is off by a rounding, so compare the values, not the variance)."""
    if x.numel() < 2 or bool(x.max() == x.min()):
        return np.full(y.shape[0], np.nan)
    dx = x - x.mean()
    var = (dx * dx).sum()
    return (((y - y.mean(-1, keepdim=True)) * dx).sum(-1) / var).cpu().numpy()


def _per_head(x: torch.Tensor) -> np.ndarray:
    """(B, H, queries) -> (H,) mean over the batch and the queries."""
    return x.mean(dim=(0, 2)).cpu().numpy()
