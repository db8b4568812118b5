"""The process group of a training run: one process, or `torchrun --nproc-per-node N`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when WORLD_SIZE > 1
the group starts with NCCL on CUDA and gloo on CPU. Each process computes on its own GPU
(LOCAL_RANK), which `gtok.devices.select_device` makes its `cuda:0`. Helpers here are no-ops
(or identities) in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gtok.devices import select_device

__all__ = ["Dist", "start"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank of world, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process writes files and talks to the user (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        return self.any_of(flag)[0]

    def any_of(self, *flags: bool | torch.Tensor) -> list[bool]:
        """For each flag (a Python bool, or a 0-d/1-element tensor on this process's device
        that is nonzero when true), whether it is true on any rank. One all-reduce and one
        device-to-host copy for all of them, however many; none for Python bools alone in
        one process."""
        tensors = [f for f in flags if isinstance(f, torch.Tensor)]
        if not self.active and not tensors:
            return [bool(f) for f in flags]
        device = self._collective_device() if self.active else tensors[0].device
        values = torch.zeros(len(flags), device=device)  # filled on the device: no copy
        for i, flag in enumerate(flags):
            if isinstance(flag, torch.Tensor):
                values[i] = flag.reshape(()).to(device, torch.float32)
            elif flag:
                values[i] = 1.0
        if self.active:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [v > 0 for v in values.tolist()]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks (float64)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled through the process group)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def start(requested_device: str, timeout_s: float = 1800.0) -> Dist:
    """Join the process group: one already started by the caller, torchrun's (WORLD_SIZE > 1),
    or none (a single process)."""
    device = select_device(requested_device)
    if dist.is_available() and dist.is_initialized():  # the caller started the group
        return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=rank, world=world, device=device)
