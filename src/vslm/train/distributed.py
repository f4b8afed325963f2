"""torchrun / DDP set-up: which process this is, and the few collectives the training loop needs.

`torchrun --nproc-per-node N -m vslm train CONFIG` starts N copies of the one training loop.
torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads
them, joins the process group (gloo on CPU, NCCL on CUDA, one GPU per process) and returns a
`Distributed`. Without torchrun (WORLD_SIZE unset or 1) it returns the single-process one, whose
collectives do nothing, so the loop is written once for both.

What each process does (see trainer.py): every rank draws the same global batch of windows from
the same seeded sampler and keeps rows rank::world, so the global batch is the one a single
process would train on and the sampler state (the data position) is the same on all ranks; DDP
averages the gradients; logging, checkpoints and reports happen on rank 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vslm.errors import VSLMError

COLLECTIVE_TIMEOUT = timedelta(hours=1)  # the longest a rank waits for the others (gloo's default is 30 min)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process joined the group, so it leaves it at the end

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (say, building a shared cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (a new tensor; the input is left alone)."""
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.sum(t) / self.world if self.enabled else t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on one (a stop request made on rank 0 only)."""
        return self.any_of([flag], device)[0]

    def any_of(self, flags: list[bool], device: torch.device) -> list[bool]:
        """`any` of several flags in one all-reduce."""
        if not self.enabled:
            return list(flags)
        return [v > 0 for v in self.sum(torch.tensor([float(f) for f in flags], device=device)).tolist()]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's obj, in rank order, on every rank (small picklable objects: RNG states)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's obj on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(cuda: bool) -> Distributed:
    """The process group torchrun asked for (WORLD_SIZE > 1), or the single process.

    A group the caller already initialised is used as it is and left open at the end."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise VSLMError(f"process {rank} wants GPU {local_rank} but this machine has "
                            f"{torch.cuda.device_count()}; start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:  # rank 0 prepares the corpus while the others wait at a barrier: an hour, not NCCL's default 10 min
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, owns_group=owns)
