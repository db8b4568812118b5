"""Training and validation images from WebDataset shards, reproducible and resumable.

Training (`TrainStream`): every process (rank) reads `streams` independent endless streams,
one per DataLoader worker (spawn start method), or one inline when there are no workers.
A stream is a sequence of *draws*: draw k of stream s on rank r picks a shard at random
with replacement (resampled shards) from the rank's shards, decodes it in tar order with
`gtok.data.samples.decode_shard`, and passes the samples through a shuffle buffer. Every
random choice is seeded by its position: the shard by (seed, rank, s, k), the shuffle by
(seed, rank, s, k), each sample's random-resized crop and flip by (seed, rank, s, k, tar
index), its colour jitter (`gtok.train.colour`, off by default) by another key of the same
place. So a stream position is just (draw, items emitted from that draw), and a resumed
run replays exactly the batches the uninterrupted run would have seen: step t's batch comes
from stream t mod streams, and each stream restarts from its recorded position.

Ranks split the data: with at least as many shards as ranks, rank r reads every
world-th shard from r; with fewer, all ranks read all shards with their own seeds.

Samples that cannot be used (unreadable image, corrupt tar) never stop training: each one
becomes a `SkipRecord` (shard, key, reason) that travels with the next batch. A key of ""
means the tar itself (it is truncated or corrupt after the samples before it).

Validation (`val_batches`): the validation shards in order, resize + centre crop, the first
`limit` images, image i on rank i mod world.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gtok.data.images import decode_rgb
from gtok.data.samples import (
    Decoded,
    ShardEnd,
    Skipped,
    center_prepare,
    decode_shard,
    image_member,
)
from gtok.data.shards import ShardRef
from gtok.data.sources import count_source
from gtok.data.stream import loader
from gtok.data.stream import to_model_input as pixels_to_input
from gtok.data.tario import RawSample
from gtok.data.transforms import Preprocess, center_crop, random_resized_crop
from gtok.train.colour import ColourJitter

__all__ = [
    "SkipRecord",
    "StreamSpec",
    "TrainBatch",
    "TrainStream",
    "count_samples",
    "rank_shards",
    "stream_batches",
    "to_model_input",
    "train_loader",
    "val_batches",
]

SkipRecord = tuple[str, str, str]  # (shard file name, sample key or "" for the tar, reason)


def to_model_input(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [-1, 1] on `device` (0 -> -1, 255 -> 1):
    `gtok.data.to_model_input` after the move to `device`."""
    return pixels_to_input(pixels.to(device, non_blocking=True))


def rank_shards(shards: Sequence[ShardRef], rank: int, world: int) -> tuple[ShardRef, ...]:
    """The shards rank `rank` of `world` trains on (every world-th, or all when too few)."""
    if len(shards) >= world:
        return tuple(shards[rank::world])
    return tuple(shards)


@dataclass(frozen=True)
class StreamSpec:
    """What a rank's training streams read and how (pickled into each worker).

    image_size: side S of the crops (pixels). crop_scale: area range of the random crop.
    augment: random-resized-crop + horizontal flip; else resize + centre crop.
    shuffle_buffer: samples held for shuffling within a draw.
    colour: hue / saturation / grayscale jitter after the crop (default: off).
    """

    shards: tuple[ShardRef, ...]
    image_size: int
    batch_size: int
    seed: int
    rank: int
    augment: bool
    crop_scale: tuple[float, float] = (0.08, 1.0)
    shuffle_buffer: int = 1000
    colour: ColourJitter = field(default_factory=ColourJitter)

    def describe(self) -> str:
        """The training preprocessing in words (recorded in the run)."""
        size = self.image_size
        if self.augment:
            words = (
                f"random-resized-crop to {size}x{size} (area {self.crop_scale[0]}-"
                f"{self.crop_scale[1]}, aspect 3/4-4/3, PIL bicubic) + horizontal flip p=0.5"
            )
        else:
            words = f"shorter side resized to {size} (PIL bicubic) + centre crop {size}x{size}"
        return words + (f" + {self.colour.describe()}" if self.colour.active else "")


@dataclass
class TrainBatch:
    """One batch of one stream. pixels: uint8 [B, S, S, 3] (None with `error`);
    position: the stream's (draw, offset) after this batch; skipped: samples passed over
    since the previous batch of this stream; error: the stream cannot produce images."""

    pixels: torch.Tensor | None
    stream: int
    position: tuple[int, int]
    skipped: list[SkipRecord]
    error: str | None = None

    def pin_memory(self) -> TrainBatch:
        """Called by a DataLoader with pin_memory=True (CUDA): page-lock the pixels."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


@dataclass(frozen=True)
class _RandomPrepare:
    """decode -> random-resized crop + flip (or centre crop) -> colour jitter, each seeded
    by the sample's place."""

    spec: StreamSpec
    stream: int
    draw: int

    def __call__(self, raw: RawSample, index: int) -> Decoded:
        img = decode_rgb(image_member(raw))
        size = self.spec.image_size
        if self.spec.augment:
            rng = np.random.default_rng(
                [self.spec.seed, self.spec.rank, self.stream, self.draw, 2, index]
            )
            img = random_resized_crop(img, size, rng, scale=self.spec.crop_scale)
        else:
            img = center_crop(img, size)[0]
        pixels = np.asarray(img, dtype=np.uint8)
        if self.spec.colour.active:
            place = [self.spec.seed, self.spec.rank, self.stream, self.draw, 3, index]
            pixels = self.spec.colour(pixels, np.random.default_rng(place))
        return Decoded(raw.key, pixels, -1)


def _draw_shard(spec: StreamSpec, stream: int, draw: int) -> ShardRef:
    rng = np.random.default_rng([spec.seed, spec.rank, stream, draw, 0])
    return spec.shards[int(rng.integers(len(spec.shards)))]


def _draw_items(spec: StreamSpec, stream: int, draw: int) -> Iterator[Decoded | Skipped]:
    """Items of one draw: its shard's samples through a seeded shuffle buffer."""
    shard = _draw_shard(spec, stream, draw)
    rng = np.random.default_rng([spec.seed, spec.rank, stream, draw, 1])
    buffer: list[Decoded | Skipped] = []
    for item in decode_shard(shard, _RandomPrepare(spec, stream, draw)):
        if isinstance(item, ShardEnd):
            if item.problem is not None:
                buffer.append(Skipped("", item.problem))
            continue
        buffer.append(item)
        if len(buffer) >= spec.shuffle_buffer:
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: np.random.Generator):
    j = int(rng.integers(len(buffer)))
    buffer[j], buffer[-1] = buffer[-1], buffer[j]
    return buffer.pop()


def stream_batches(
    spec: StreamSpec, stream: int, draw: int = 0, offset: int = 0
) -> Iterator[TrainBatch]:
    """Endless batches of one stream, starting at position (draw, offset)."""
    pixels: list[np.ndarray] = []
    skipped: list[SkipRecord] = []
    barren = 0  # consecutive draws without a usable image
    limit = max(8, 2 * len(spec.shards))
    while True:
        shard = _draw_shard(spec, stream, draw)
        found = False
        for emitted, item in enumerate(_draw_items(spec, stream, draw)):
            found = found or isinstance(item, Decoded)
            if emitted < offset:
                continue  # already consumed before a resume
            offset = emitted + 1
            if isinstance(item, Skipped):
                skipped.append((shard.name, item.key, item.reason))
                continue
            pixels.append(item.image)
            if len(pixels) == spec.batch_size:
                batch = torch.from_numpy(np.stack(pixels))
                yield TrainBatch(batch, stream, (draw, offset), skipped)
                pixels, skipped = [], []
        barren = 0 if found else barren + 1
        if barren >= limit:
            message = (
                f"{barren} shard draws in a row gave no usable image (the last was "
                f"{shard.name}); check the training shards"
            )
            yield TrainBatch(None, stream, (draw, offset), skipped, error=message)
            return
        draw, offset = draw + 1, 0


class TrainStream(IterableDataset):
    """The training batches of one rank. Worker w of the DataLoader serves stream
    (w + first_stream) mod streams, starting at `positions[stream]`; with `first_stream`
    = step mod streams, batch t of the run comes from stream t mod streams."""

    def __init__(
        self, spec: StreamSpec, positions: Sequence[tuple[int, int]], first_stream: int = 0
    ) -> None:
        super().__init__()
        self.spec = spec
        self.positions = [tuple(p) for p in positions]
        self.first_stream = first_stream

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != len(self.positions):
            raise ValueError(f"{workers} workers for {len(self.positions)} streams")
        stream = (worker + self.first_stream) % workers
        return stream_batches(self.spec, stream, *self.positions[stream])


def train_loader(
    spec: StreamSpec,
    positions: Sequence[tuple[int, int]],
    first_stream: int,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `TrainStream`: `workers` spawn workers, one per stream, or the
    single stream read inline when `workers` is 0."""
    if len(positions) != max(1, workers):
        raise ValueError(f"{len(positions)} stream positions for {workers} workers")
    dataset = TrainStream(spec, positions, first_stream)
    if workers == 0:
        return DataLoader(dataset, batch_size=None)
    return loader(  # spawn workers that leave Ctrl-C and SIGTERM to the training loop
        dataset,
        workers=workers,
        persistent_workers=True,
        prefetch_factor=4,
        pin_memory=pin_memory,
    )


def val_batches(
    shards: Sequence[ShardRef],
    image_size: int,
    batch_size: int,
    limit: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor | None, list[SkipRecord]]]:
    """Validation batches (uint8 [b, S, S, 3] or None, samples skipped since the last
    batch): the first `limit` usable images of the shards in order, resized +
    centre-cropped, those with index = rank mod world. Only the last item may have None
    pixels (skip records after the last image)."""
    prepare = center_prepare(Preprocess(image_size))
    pixels: list[np.ndarray] = []
    skipped: list[SkipRecord] = []
    seen = 0
    for shard in shards:
        for item in decode_shard(shard, prepare):
            if isinstance(item, ShardEnd):
                if item.problem is not None:
                    skipped.append((shard.name, "", item.problem))
                continue
            if isinstance(item, Skipped):
                skipped.append((shard.name, item.key, item.reason))
                continue
            seen += 1
            if (seen - 1) % world == rank:
                pixels.append(item.image)
            if len(pixels) == batch_size or seen == limit:
                if pixels:
                    yield torch.from_numpy(np.stack(pixels)), skipped
                pixels, skipped = [], []
            if seen == limit:
                return
    if pixels or skipped:
        yield (torch.from_numpy(np.stack(pixels)) if pixels else None), skipped


def count_samples(shards: Sequence[ShardRef]) -> int:
    """Number of samples in the shards, from tar headers and Parquet footers
    (`gtok.data.sources.count_source`)."""
    return sum(count_source(shard) for shard in shards)
