"""Which slice of the input shards this process encodes: flags, torchrun or Slurm.

Precedence: `--shard-id/--num-shards` (both or neither), then torchrun's `RANK` /
`WORLD_SIZE`, then Slurm's `SLURM_PROCID` / `SLURM_NTASKS`, else the whole list (0 of 1).
No process talks to another: each takes every `num_shards`-th input shard from `shard_id`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gtok.errors import ArgumentError, GtokError

__all__ = ["WorkerSlice", "worker_slice"]

_ENVIRONMENTS = (("RANK", "WORLD_SIZE", "torchrun"), ("SLURM_PROCID", "SLURM_NTASKS", "Slurm"))


@dataclass(frozen=True)
class WorkerSlice:
    """This process is worker `shard_id` of `num_shards`; `source` says who decided that."""

    shard_id: int = 0
    num_shards: int = 1
    source: str = "single process"

    @property
    def parallel(self) -> bool:
        return self.num_shards > 1


def _check(shard_id: int, num_shards: int, source: str, *arguments: str) -> WorkerSlice:
    """The slice, checked; `arguments`: the names in `source` of the arguments it came from."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ArgumentError(
            f"shard id {shard_id} of {num_shards} (from {source}) is not valid; the id must be "
            "in [0, num_shards).",
            *arguments,
        )
    return WorkerSlice(shard_id, num_shards, source)


def worker_slice(
    shard_id: int | None = None,
    num_shards: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerSlice:
    """Resolve this process's slice (see the module docstring for the precedence)."""
    if (shard_id is None) != (num_shards is None):
        raise ArgumentError(
            "Give shard_id and num_shards together, or neither.", "shard_id", "num_shards"
        )
    if shard_id is not None and num_shards is not None:
        return _check(shard_id, num_shards, "shard_id/num_shards", "shard_id", "num_shards")
    environ = os.environ if environ is None else environ
    for rank_var, size_var, name in _ENVIRONMENTS:
        if rank_var in environ and size_var in environ:
            try:
                rank, size = int(environ[rank_var]), int(environ[size_var])
            except ValueError:
                raise GtokError(
                    f"{rank_var}={environ[rank_var]!r} / {size_var}={environ[size_var]!r} are "
                    "not integers."
                ) from None
            return _check(rank, size, f"{name} {rank_var}/{size_var}")
    return WorkerSlice()
