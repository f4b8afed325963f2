"""Entropy, Kullback-Leibler and Jensen-Shannon divergences of distributions along the last dim.

All in nats, with 0 log 0 = 0: a zero-probability outcome of p adds nothing to H(p) or KL(p || q),
and KL(p || q) is infinite where q is zero but p is not (no smoothing is applied here).
"""

from __future__ import annotations

import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_v p_v log p_v: (..., V) -> (...)."""
    return -torch.special.xlogy(p, p).sum(-1)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v): (..., V), (..., V) -> (...), broadcasting."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2: symmetric, in [0, ln 2]."""
    m = (p + q) / 2
    return (kl(p, m) + kl(q, m)) / 2
