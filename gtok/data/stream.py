"""Picklable iterable datasets over tar shards, for `torch.utils.data.DataLoader`.

Both split their shards across DataLoader workers (shard i goes to worker i mod W), hold no
open files or Zarr handles between iterations, and so work with `spawn` workers, which gtok
uses everywhere (`multiprocessing_context="spawn"`: forked workers hang once Taichi started
and Zarr's event loop does not survive a fork). See `loader()`.

- `EncodeStream`: what `gtok encode` reads. Items are `ShardChunk`s: up to `batch_size`
  consecutive samples of one shard as uint8 pixels, plus the skipped samples among them; a
  chunk never spans two shards, so the model always sees the same batches for a shard
  however the work is split or resumed, and the shard's last chunk carries its `ShardEnd`.
  Every `batch_size` skipped samples come as a chunk of their own (no pixels), so progress
  moves on through a stretch of unusable samples.
- `ImageDataset`: one sample at a time for training and evaluation, centre crop or seeded
  random-resized-crop + flip, with optional rank/world-size splitting and shard shuffling.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
import random
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gtok.console import console, is_quiet
from gtok.data.images import decode_rgb
from gtok.data.samples import (
    Decoded,
    ShardEnd,
    Skipped,
    center_prepare,
    decode_shard,
    image_member,
    parse_label,
    with_text,
)
from gtok.data.shards import ShardRef
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES, RawSample
from gtok.data.transforms import Preprocess, random_resized_crop, sample_rng
from gtok.errors import GtokError
from gtok.stops import stops_held

__all__ = [
    "EncodeStream",
    "ImageDataset",
    "ShardChunk",
    "loader",
    "to_model_input",
    "worker_death_as_error",
]


def _worker_slice() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [B, S, S, 3] -> contiguous float32 [B, 3, S, S] in [-1, 1], same device."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)


@dataclass
class ShardChunk:
    """Consecutive samples of one shard.

    shard: index of the shard in the stream's list. images: uint8 [b, S, S, 3] (b may be 0);
    keys, labels: per image (labels int32 [b], -1 = no `.cls`); captions: per image its
    `.txt` or None; meta: per image its metadata fields (`EncodeStream.metadata_fields`);
    skipped: samples of this stretch that could not be used; upscaled: how many images were
    smaller than the resize target; end: set on the shard's last chunk.
    """

    shard: int
    images: torch.Tensor
    keys: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    captions: list[str | None] = field(default_factory=list)
    meta: list[tuple[str, ...]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    upscaled: int = 0
    end: ShardEnd | None = None

    def pin_memory(self) -> ShardChunk:
        """Called by a DataLoader with `pin_memory=True`: page-lock the pixels for fast H2D."""
        self.images = self.images.pin_memory()
        return self


class EncodeStream(IterableDataset):
    """Decoded, centre-cropped samples of `shards`, as `ShardChunk`s of at most `batch_size`,
    with their `.txt` captions and the `metadata_fields` of their `.json`; samples with a
    member over `max_member_bytes` are skipped without reading it."""

    def __init__(
        self,
        shards: Sequence[ShardRef],
        preprocess: Preprocess,
        batch_size: int,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        metadata_fields: Sequence[str] = (),
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.shards = list(shards)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.max_member_bytes = max_member_bytes
        self.metadata_fields = tuple(metadata_fields)

    def _empty(self) -> torch.Tensor:
        size = self.preprocess.image_size
        return torch.empty((0, size, size, 3), dtype=torch.uint8)

    def _chunk(self, index: int, decoded: list[Decoded], skipped: list[Skipped]) -> ShardChunk:
        images = (
            torch.from_numpy(np.stack([d.image for d in decoded])) if decoded else self._empty()
        )
        return ShardChunk(
            shard=index,
            images=images,
            keys=[d.key for d in decoded],
            labels=np.array([d.label for d in decoded], dtype=np.int32),
            captions=[d.caption for d in decoded],
            meta=[d.meta for d in decoded],
            skipped=skipped,
            upscaled=sum(d.upscaled for d in decoded),
        )

    def shard_chunks(self, index: int) -> Iterator[ShardChunk]:
        """The chunks of shard `index` alone (what one worker yields for it)."""
        prepare = with_text(center_prepare(self.preprocess), self.metadata_fields)
        decoded: list[Decoded] = []
        skipped: list[Skipped] = []
        for item in decode_shard(self.shards[index], prepare, self.max_member_bytes):
            if isinstance(item, ShardEnd):
                chunk = self._chunk(index, decoded, skipped)
                chunk.end = item
                yield chunk
                return
            if isinstance(item, Skipped):
                skipped.append(item)
                if len(skipped) == self.batch_size:  # progress, while the batch is unchanged
                    yield self._chunk(index, [], skipped)
                    skipped = []
                continue
            decoded.append(item)
            if len(decoded) == self.batch_size:
                yield self._chunk(index, decoded, skipped)
                decoded, skipped = [], []

    def __iter__(self) -> Iterator[ShardChunk]:
        worker, workers = _worker_slice()
        for index in range(worker, len(self.shards), workers):
            yield from self.shard_chunks(index)


class ImageDataset(IterableDataset):
    """Images from tar shards for training and evaluation; one dict per usable sample.

    Item: {"image": float32 [3, S, S] in [-1, 1], "label": int (-1 = none),
    "key": "<shard name>/<sample key>"}.

    augment=False: resize + centre crop as `preprocess` says (what encode does).
    augment=True: `random_resized_crop` to S + horizontal flip, seeded by
    (seed, epoch, shard index, sample index), so crops do not depend on worker count.
    Shards are split across `rank`/`world_size` first, then DataLoader workers; with
    `shuffle`, the shard order is permuted per epoch and samples pass through a seeded buffer
    of `shuffle_buffer`. Call `set_epoch` before each epoch. Unusable samples are skipped and
    reported on stderr (one line each) and counted in `skipped` of the worker's copy.
    """

    def __init__(
        self,
        shards: Sequence[ShardRef],
        preprocess: Preprocess,
        *,
        augment: bool = False,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.shards = list(shards)
        self.preprocess = preprocess
        self.augment = augment
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        worker, workers = _worker_slice()
        return order[self.rank :: self.world_size][worker::workers]

    def _prepare(self, index: int):
        if not self.augment:
            return center_prepare(self.preprocess)
        size, seed, epoch = self.preprocess.image_size, self.seed, self.epoch
        settings = self.preprocess

        def prepare(raw: RawSample, sample: int) -> Decoded:
            label = parse_label(raw)
            img = decode_rgb(
                image_member(raw), max_pixels=settings.max_pixels, background=settings.background
            )
            crop = random_resized_crop(img, size, sample_rng(seed, epoch, index, sample))
            return Decoded(raw.key, np.array(crop, dtype=np.uint8), label)

        return prepare

    def _samples(self) -> Iterator[dict]:
        for index in self._my_shards():
            shard = self.shards[index]
            for item in decode_shard(shard, self._prepare(index)):
                if isinstance(item, Decoded):
                    yield {
                        "image": to_tensor_from_array(item.image),
                        "label": item.label,
                        "key": f"{shard.name}/{item.key}",
                    }
                elif isinstance(item, Skipped):
                    self.skipped += 1
                    _report(f"{shard.name}/{item.key}: {item.reason}")
                elif item.problem:
                    _report(f"{shard.name}: {item.problem}")

    def __iter__(self) -> Iterator[dict]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from self._samples()
            return
        worker, _ = _worker_slice()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        buffer: list[dict] = []
        for sample in self._samples():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            slot = rng.randrange(len(buffer))
            buffer[slot], sample = sample, buffer[slot]
            yield sample
        rng.shuffle(buffer)
        yield from buffer


def _report(message: str) -> None:
    if not is_quiet():
        console.print(f"[yellow]skipped[/] {message}", soft_wrap=True)


def to_tensor_from_array(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [S, S, 3] -> float32 [3, S, S] in [-1, 1] (same numbers as `to_tensor`)."""
    return to_model_input(torch.from_numpy(np.ascontiguousarray(pixels))[None])[0]


_STOPS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; the SIGTERM of timeout, Slurm, Kubernetes


class _SpawnLoader(DataLoader):
    """A DataLoader whose worker processes ignore SIGINT and SIGTERM.

    Ctrl-C reaches the whole process group; a worker still importing torch (a spawned one
    takes seconds) would print a traceback of its own. SIGTERM from `timeout` or Slurm
    reaches it too, and a worker it killed would end the main process with "DataLoader
    worker ... is killed" instead of its clean stop (or, in training, before the step is
    saved). The main process alone turns either into its stop, and its loader then shuts the
    workers down (it tells them to exit; its SIGTERM, for a worker that did not, is ignored
    then, and such a worker ends after its item). Signal dispositions can only be changed
    from the main thread; elsewhere the workers keep the default. A SIGTERM that comes while
    the main thread receives a batch stops it once the batch is in (`_WholeBatches`).
    """

    def _get_iterator(self):
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super()._get_iterator()
        # SIG_IGN is inherited by spawned children, until torch sets its own SIGTERM handler
        # in them (`_ignore_stops` then ignores it again)
        previous = {stop: signal.signal(stop, signal.SIG_IGN) for stop in _STOPS}
        try:
            iterator = super()._get_iterator()  # starts the workers
        finally:
            for stop, handler in previous.items():
                signal.signal(stop, handler)
        # the queue the main thread receives batches from; with `pin_memory`, torch's
        # pin-memory thread receives them instead, and no signal interrupts it
        received = iterator._data_queue  # type: ignore[attr-defined]
        if isinstance(received, multiprocessing.queues.Queue):
            iterator._data_queue = _WholeBatches(received)  # type: ignore[attr-defined]
        return iterator

    def __iter__(self):
        """Iterate, keeping the worker processes it starts in `worker_processes`."""
        before = set(multiprocessing.active_children())
        iterator = super().__iter__()
        self.worker_processes = [p for p in multiprocessing.active_children() if p not in before]
        return iterator


class _WholeBatches:
    """The queue of batches from a DataLoader's worker processes, read so that a SIGTERM
    stops the wait for a batch at once but never cuts the transfer of one (`stops_held`).

    A batch's tensors come over as file descriptors, each fetched from the worker's
    `multiprocessing.resource_sharer` while the batch is unpickled; a stop raised there
    cuts that connection, and the worker prints its `ConnectionResetError` traceback.
    """

    def __init__(self, batches: multiprocessing.queues.Queue):
        self.batches = batches

    def get(self, timeout: float | None = None) -> object:
        """The next message, as `multiprocessing.Queue.get(timeout=timeout)` gives it:
        raises `queue.Empty` if none came within `timeout` seconds (None: no limit)."""
        if not self.batches._reader.poll(timeout):  # type: ignore[attr-defined]
            raise queue.Empty
        with stops_held():
            return self.batches.get(timeout=timeout)


def _ignore_stops(worker_id: int) -> None:
    """A worker's `worker_init_fn`: ignore Ctrl-C and SIGTERM (torch's own handler, set just
    before, lets a SIGTERM that the main process did not send kill the worker)."""
    for stop in _STOPS:
        signal.signal(stop, signal.SIG_IGN)


_DEATH_GRACE_S = 5.0  # how long a worker whose connection broke may take to be seen dead
# torch's words for a worker process that died: from its SIGCHLD handler ("is killed by
# signal: Killed.") and from its queue's liveness check ("exited unexpectedly ...")
_WORKER_DIED = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? [^)]*\) "
    r"(?:is killed by signal: (?P<signal>[^.]+)|exited unexpectedly(?: with exit code "
    r"(?P<code>-?\d+))?)"
)
_KILLED = "was killed (SIGKILL), most likely by the out-of-memory killer"


def _how_worker_died(exc: RuntimeError) -> str | None:
    """What torch's error says happened to a DataLoader worker; None for other errors."""
    match = _WORKER_DIED.match(str(exc))
    if match is None:
        return None
    if match["signal"] == "Killed":
        return _KILLED
    if match["signal"]:
        return f"was killed by a signal ({match['signal']})"
    if match["code"]:
        return f"exited unexpectedly (exit code {match['code']})"
    return "exited unexpectedly, most likely killed by the out-of-memory killer"


def _how_process_ended(code: int) -> str:
    """What a worker's `exitcode` says happened to it (negative: the signal that ended it)."""
    if code == -signal.SIGKILL:
        return _KILLED
    if code < 0:
        return f"was killed by a signal ({signal.Signals(-code).name})"
    return f"exited unexpectedly (exit code {code})"


def _dead_worker(processes: Sequence[multiprocessing.process.BaseProcess]) -> str | None:
    """After a connection error: what happened to a worker among `processes` that ended,
    else None. A worker killed while a chunk's tensor came over breaks the connection before
    it is seen gone, so each is asked again until `_DEATH_GRACE_S` seconds have passed."""
    deadline = time.monotonic() + _DEATH_GRACE_S
    while True:
        try:
            ended = [p.exitcode for p in processes if p.exitcode is not None]
            if ended:
                return _how_process_ended(ended[0])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        except RuntimeError as died:  # torch's SIGCHLD handler noticed it meanwhile
            return _how_worker_died(died)


@contextmanager
def worker_death_as_error(data: DataLoader, next_step: str) -> Iterator[None]:
    """Turn the error torch raises when a worker process of `data` (a `loader()`) dies while
    the block runs (the OOM killer's SIGKILL, a crash) into one `GtokError` sentence that
    ends with `next_step`. Another connection error in the block is raised as it is, after up
    to `_DEATH_GRACE_S` seconds of looking for a dead worker."""
    try:
        yield
    except (RuntimeError, ConnectionError, EOFError) as exc:
        if isinstance(exc, RuntimeError):
            how = _how_worker_died(exc)
        else:
            how = _dead_worker(getattr(data, "worker_processes", []))
        if how is None:
            raise
        raise GtokError(f"a data-loading worker process {how}; {next_step}") from exc


def loader(dataset: IterableDataset, *, workers: int, batch_size: int | None = None, **kw):
    """A DataLoader over `dataset` with `spawn` workers (none when `workers` is 0) that leave
    Ctrl-C and SIGTERM to the main process; `kw` go to the DataLoader (and win)."""
    extra = {"multiprocessing_context": "spawn", "persistent_workers": False} if workers else {}
    if workers:
        extra["worker_init_fn"] = _ignore_stops
    return _SpawnLoader(dataset, batch_size=batch_size, num_workers=workers, **{**extra, **kw})
