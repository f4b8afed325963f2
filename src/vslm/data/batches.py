"""Batches of training windows, and the fixed validation set.

Training windows are drawn at random offsets by a seeded `torch.Generator`; its state is the data
position, saved in every checkpoint, so a resumed run draws exactly the windows the uninterrupted
run would have. With `doc_aligned`, windows start where documents start.

Under data parallelism every process draws the same global batch and keeps its own rows
(`shard = (rank, world)`: rows rank, rank + world, ...): the ranks read disjoint rows of the batch
one process would read, and their generators stay in step, so one saved state resumes them all.
"""

from __future__ import annotations

import numpy as np
import torch

from vslm.errors import VSLMError


def _gather(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """(B, length) int64 windows tokens[s : s + length] for each start s."""
    index = starts[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(tokens[index].astype(np.int64))


class WindowSampler:
    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int,
                 doc_starts: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)):
        if len(tokens) <= context:
            raise VSLMError(f"the training split has {len(tokens)} tokens, fewer than model.context + 1; "
                            "give more text or a shorter context")
        rank, world = shard
        if batch_size % world:
            raise VSLMError(f"train.batch_size {batch_size} (the global batch) is not divisible by the "
                            f"{world} processes")
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.rank, self.world = rank, world
        self.shard = shard  # its batches are this rank's rows already (the trainer shards other sources)
        self.generator = torch.Generator().manual_seed(seed)
        self.doc_starts = None
        if doc_starts is not None:
            usable = doc_starts[doc_starts < len(tokens) - context]
            self.doc_starts = usable if len(usable) > 1 else None  # one document: plain random windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (B / world, T) int64: this rank's rows of the global batch."""
        T, B = self.context, self.batch_size
        if self.doc_starts is None:
            starts = torch.randint(len(self.tokens) - T, (B,), generator=self.generator).numpy()
        else:
            pick = torch.randint(len(self.doc_starts), (B,), generator=self.generator).numpy()
            starts = self.doc_starts[pick]
        starts = starts[self.rank :: self.world]
        window = _gather(self.tokens, starts, T + 1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def fixed_windows(tokens: np.ndarray, context: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same `count` windows every time (seeded offsets), as inputs and targets (count, T).

    When the split is too short for `count` distinct offsets, every offset is used once."""
    span = len(tokens) - context
    if span <= 0:
        raise VSLMError(f"the validation split has {len(tokens)} tokens, fewer than model.context + 1; "
                        "give more text, a larger data.val_fraction or a shorter context")
    if span <= count:
        starts = np.arange(span)
    else:
        starts = torch.randint(span, (count,), generator=torch.Generator().manual_seed(seed)).numpy()
    window = _gather(tokens, starts, context + 1)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()
