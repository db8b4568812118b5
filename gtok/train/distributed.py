"""The process group of a training run: one process, or `torchrun --nproc-per-node N`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when WORLD_SIZE > 1
the group starts with NCCL on CUDA and gloo on CPU. Helpers here are no-ops (or identities)
in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gtok.errors import GtokError

__all__ = ["Dist", "resolve_device", "start"]


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
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

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


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """The torch device for `requested` ("auto", "cpu", "cuda", "cuda:N")."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise GtokError(f"Unknown device {requested!r}; use auto, cpu, cuda or cuda:N.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GtokError(f"Device {requested} was asked for but CUDA is not available.")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise GtokError(f"Training runs on cpu or cuda, not {device.type}.")
    return device


def start(requested_device: str, timeout_s: float = 1800.0) -> Dist:
    """Join the process group: one already started by the caller, torchrun's (WORLD_SIZE > 1),
    or none (a single process)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
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
