"""Reading activations at the model's hook points without editing the model.

    with capture(model, "attn.0", "resid_post.1") as seen:
        model(idx)
    seen["attn.0"]        # (B, H, T, T) attention weights at depth 0

Names are `<point>.<depth>` with point one of resid_pre (what the block at that depth reads),
attn (its attention weights) and resid_post (the stream after it). Capturing attention weights
switches that depth to the explicit attention path for the duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vslm.model.gpt import GPT


def hook_names(model: GPT) -> list[str]:
    return [f"{point}.{d}" for point in model.hooks for d in range(len(model.order))]


@contextmanager
def capture(model: GPT, *names: str) -> Iterator[dict[str, torch.Tensor]]:
    seen: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            point, _, depth = name.partition(".")
            if point not in model.hooks or not depth.isdigit() or int(depth) >= len(model.order):
                raise ValueError(f"no hook point {name!r}; there are {', '.join(hook_names(model))}")
            hook = model.hooks[point][int(depth)]
            keep = lambda module, args, out, name=name: seen.__setitem__(name, out.detach())  # noqa: E731
            handles.append(hook.register_forward_hook(keep))
        yield seen
    finally:
        for h in handles:
            h.remove()
