"""Encode on Ray (`gtok encode --distributor ray`): one Ray task per input shard.

Each task runs `encode_shards(..., shard_name=<its shard>)`, the code path of a hand-run
parallel worker: it writes that shard's part of the store (or nothing when the part is
already complete, so a rerun resumes), holding the part's lock while it writes. A task that
raises or whose process dies is retried up to `retries` times; the driver (this process)
shows one progress line for the whole job, finalizes the store once every shard is
encoded, and otherwise raises one `GtokError` naming a failed shard and its error, keeping
the finished parts.

Tasks load the model from its directory (nothing is pickled but paths and settings), so the
model directory, the shards and the store must be reachable under the same paths (or URLs)
from every node. Ray is an optional extra (`pip install 'gtok[ray]'`), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gtok.console import console, is_quiet, progress, set_quiet
from gtok.data import expand_shards
from gtok.encode.model import resolve_model
from gtok.encode.run import EncodeSummary, encode_shards
from gtok.errors import ArgumentError, GtokError
from gtok.store import finalize_store

__all__ = ["DEFAULT_RETRIES", "RAY_MISSING", "encode_on_ray"]

DEFAULT_RETRIES = 2
RAY_MISSING = "encoding on Ray needs Ray: pip install 'gtok[ray]'"
# encode_shards arguments the driver decides, not the caller
_DRIVER_ONLY = ("workers", "shard_id", "num_shards", "shard_name")
_ADDED_UP = (  # the counts of `EncodeSummary` that a job's tasks add up to
    "shards_already_done",
    "shards_encoded",
    "samples_read",
    "encoded",
    "skipped",
    "damaged_shards",
    "upscaled",
)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GtokError(f"{RAY_MISSING}.") from None
    return ray


def _encode_one(specs: list[str], out: str, model: str, name: str, settings: dict) -> Any:
    """The Ray task: encode input shard `name` of `specs` into the store's part (decoding in
    this process: Ray runs one task per CPU); returns its `EncodeSummary`."""
    set_quiet(True)  # the driver shows the job's one progress line
    return encode_shards(specs, out, model, shard_name=name, workers=0, **settings)


@dataclass
class _Failure:
    shard: str
    error: str


def _reason(error: BaseException) -> str:
    """The task's own exception as one line (Ray wraps it), else Ray's first line."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, GtokError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _start(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect to the Ray cluster at `address`, or start a local instance with `num_cpus`
    CPUs (None: all); False when this process is already connected (it is then reused).
    The tasks' stdout and stderr go to Ray's log files only (/tmp/ray/session_latest/logs)."""
    if ray.is_initialized():
        return False
    # the tasks' output stays in Ray's logs: stdout is the CLI's result (--json)
    quiet = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
    if address is not None:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
            raise ArgumentError(
                f"could not connect to the Ray cluster at {address} ({_first_line(exc)}); check "
                "the `address` and that the cluster is up.",
                "address",
            ) from exc
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
    return True


def _total(summaries: list[EncodeSummary], out: str, model: str, shards: int) -> EncodeSummary:
    """The job's summary: the tasks' counts added up."""
    first = summaries[0] if summaries else None
    total = EncodeSummary(
        store=first.store if first else out,
        model=first.model if first else model,
        weights_sha256=first.weights_sha256 if first else "",
        worker={"source": "ray", "tasks": shards},
        shards_total=shards,
        shards_mine=shards,
        shards_already_done=0,
        shards_encoded=0,
    )
    for s in summaries:
        for name in _ADDED_UP:
            setattr(total, name, getattr(total, name) + getattr(s, name))
        total.skipped_examples += s.skipped_examples[: 10 - len(total.skipped_examples)]
    return total


def _wait_all(ray, pending: dict, shards: int) -> tuple[list[EncodeSummary], list[_Failure]]:
    """Wait for every task (object ref -> shard name), one progress line for them all."""
    done: list[EncodeSummary] = []
    failed: list[_Failure] = []
    with progress("shard") as bar:
        task = bar.add_task(f"encode on Ray, {shards} shards", total=shards)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                done.append(ray.get(ready[0]))
            except ray.exceptions.RayError as error:
                failed.append(_Failure(name, _reason(error)))
            bar.advance(task, 1)
    return done, failed


def encode_on_ray(
    shards: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike | None,
    *,
    address: str | None = None,
    retries: int = DEFAULT_RETRIES,
    num_cpus: int | None = None,
    **settings: Any,
) -> EncodeSummary:
    """Encode `shards` into the store `out` with one Ray task per input shard, then finalize.

    shards, model: as for `encode_shards` (the model is resolved here once, then every task
    loads it from that directory). address: a Ray cluster to connect to (`ray.init(address=
    ...)`, e.g. "ray://head:10001" or "auto"); None: start a local Ray instance with
    `num_cpus` CPUs (None: all cores), shut down at the end. A process already connected to
    Ray (`ray.init` called before) runs the tasks there. retries: how many times a failed
    shard task is run again. settings: the other keyword arguments of `encode_shards`
    (batch_size, device, resize, metadata_fields, append, ...), the same for every task.
    Raises `GtokError` naming a shard that still failed after its retries (the finished
    shards stay in the store: calling again resumes).
    """
    if retries < 0:
        raise ArgumentError(f"retries must be at least 0, got {retries}.", "retries")
    if settings.get("overwrite"):
        raise ArgumentError(
            "overwrite=True is not supported on Ray; delete the store first.", "overwrite"
        )
    if fixed := [k for k in _DRIVER_ONLY if settings.get(k) is not None]:
        raise GtokError(
            f"{fixed[0]} is decided per task on Ray (one task per shard); leave it out."
        )
    ray = _import_ray()
    specs = [os.fspath(s) for s in shards]
    names = [r.name for r in expand_shards(specs)]  # refuses bad input before Ray starts
    model_dir = str(resolve_model(model).resolve())
    started = time.perf_counter()
    own = _start(ray, address, num_cpus)
    try:
        task = ray.remote(_encode_one).options(
            num_cpus=1, max_retries=retries, retry_exceptions=True
        )
        pending = {task.remote(specs, os.fspath(out), model_dir, n, settings): n for n in names}
        with contextlib.redirect_stdout(sys.stderr):  # Ray's notes (a worker died, ...)
            summaries, failed = _wait_all(ray, pending, len(names))
    finally:
        if own:
            ray.shutdown()
    if failed:
        first = failed[0]
        raise GtokError(
            f"{len(failed)} of {len(names)} shards failed after {retries + 1} attempts each, "
            f"e.g. {first.shard}: {first.error} (the {len(summaries)} finished shards are kept "
            f"in {os.fspath(out)}; run the same command again to resume)."
        )
    summary = _total(summaries, os.fspath(out), model_dir, len(names))
    summary.store_counts = finalize_store(os.fspath(out))
    summary.finalized = True
    summary.seconds = time.perf_counter() - started
    summary.images_per_second = summary.encoded / summary.seconds if summary.seconds else 0.0
    if summary.skipped and not is_quiet():
        console.print(
            f"[yellow]{summary.skipped} samples skipped[/] (reasons in the store: "
            f"gtok info {summary.store})"
        )
    return summary
