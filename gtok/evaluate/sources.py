"""Where evaluation images come from: reference shards, and reconstructions to pair with them.

- `reference_batches`: the originals, decoded and centre-cropped by `gtok.data` exactly as
  `gtok encode` does it (`EncodeStream`, spawn workers), with every sample that cannot be
  used recorded with its reason, up to `limit` usable images.
- Reconstructors turn a batch of originals into reconstructions, matched by key:
  `ModelReconstructor` runs a tokenizer (encode, then decode the tokens);
  `FolderReconstructor` reads `<key path>.png` files (what `gtok decode` writes, or any
  images laid out the same way); `StoreReconstructor` decodes a token store's rows with the
  store's model. A key without a usable reconstruction is recorded with the reason and left
  out of the scores.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import torch

from gtok.data import (
    EncodeStream,
    Preprocess,
    ShardChunk,
    expand_shards,
    loader,
    to_model_input,
)
from gtok.data.images import ImageRejected, decode_rgb
from gtok.decode import GAUSSIANS_SUFFIX, RECON_SUFFIX, decode_batch, path_key, uint8_images
from gtok.encode.model import EncodingModel
from gtok.errors import GtokError
from gtok.store import TokenStore

__all__ = [
    "FolderReconstructor",
    "ModelReconstructor",
    "Reconstruction",
    "Reconstructor",
    "ReferenceBatch",
    "StoreReconstructor",
    "folder_image_size",
    "in_shard_order",
    "reference_batches",
]


@dataclass
class ReferenceBatch:
    """Usable originals (keys "<shard name>/<sample key>", uint8 [B, 3, S, S]) and the samples
    of the same stretch that could not be used: (key, reason); key "<shard>/" for a damaged
    tar."""

    keys: list[str]
    images: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)


def reference_batches(
    shards: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    *,
    batch_size: int,
    workers: int = 0,
    limit: int | None = None,
) -> Iterator[ReferenceBatch]:
    """Batches of at most `batch_size` originals from `shards`, in input order (shards by
    name, samples in tar order, whatever the number of `workers`), stopping after `limit`
    usable images."""
    refs = expand_shards(shards)
    stream = EncodeStream(refs, preprocess, batch_size)
    seen = 0
    chunks = loader(stream, workers=min(workers, len(refs)))
    for chunk in in_shard_order(chunks):
        name = refs[chunk.shard].name
        skipped = [(f"{name}/{s.key}", s.reason) for s in chunk.skipped]
        if chunk.end is not None and chunk.end.problem:
            skipped.append((f"{name}/", chunk.end.problem))
        take = len(chunk.keys) if limit is None else min(len(chunk.keys), limit - seen)
        images = chunk.images[:take].permute(0, 3, 1, 2).contiguous()  # [b, 3, S, S]
        yield ReferenceBatch([f"{name}/{k}" for k in chunk.keys[:take]], images, skipped)
        seen += take
        if limit is not None and seen >= limit:
            return


def in_shard_order(chunks: Iterable[ShardChunk]) -> Iterator[ShardChunk]:
    """The chunks of a DataLoader over `EncodeStream` in shard order.

    With W workers the loader interleaves the workers' chunks (worker w reads shards w,
    w + W, ...); putting them back in shard order makes `limit` and the report grid pick the
    same images whatever the worker count. Chunks of later shards wait here until every
    earlier shard has ended (about one shard per other worker).
    """
    pending: dict[int, deque[ShardChunk]] = {}
    current = 0
    for chunk in chunks:
        pending.setdefault(chunk.shard, deque()).append(chunk)
        while pending.get(current):
            ready = pending[current].popleft()
            yield ready
            if ready.end is not None:
                del pending[current]
                current += 1


@dataclass
class Reconstruction:
    """Reconstructions of the originals at positions `kept` of a batch.

    images: uint8 [k, 3, S, S]; indices [k, G] and geometry [k, G, 5] when there are tokens;
    missing: (key, reason) of the originals without a usable reconstruction.
    """

    kept: list[int]
    images: torch.Tensor
    indices: torch.Tensor | None = None
    geometry: torch.Tensor | None = None
    missing: list[tuple[str, str]] = field(default_factory=list)


class Reconstructor(Protocol):
    name: str  # what the results call it (a model path, a folder, a store)
    codebook_size: int | None  # None: no tokens
    has_geometry: bool
    map_size: int | None  # side of the rendered map, for drawing Gaussians
    model: EncodingModel | None

    def reconstruct(self, keys: list[str], originals: torch.Tensor) -> Reconstruction: ...


class ModelReconstructor:
    """A tokenizer's reconstruction: decode(encode(image)), quantized to uint8."""

    def __init__(self, model: EncodingModel) -> None:
        self.model = model
        self.name = str(model.path)
        self.codebook_size = model.config.codebook_size
        self.has_geometry = model.config.kind == "gaussian"
        self.map_size = model.config.map_size

    def reconstruct(self, keys: list[str], originals: torch.Tensor) -> Reconstruction:
        x = to_model_input(originals.permute(0, 2, 3, 1).to(self.model.device))
        with torch.inference_mode():
            tokens = self.model.encode(x)
            images = self.model.tokenizer.decode(tokens)
        geometry = None if tokens.geometry is None else tokens.geometry.cpu()
        return Reconstruction(
            list(range(len(keys))), uint8_images(images), tokens.indices.cpu(), geometry
        )


def _folder_index(folder: Path) -> dict[str, Path]:
    index = {}
    for path in sorted(folder.rglob(f"*{RECON_SUFFIX}")):
        name = path.name
        if name.endswith(GAUSSIANS_SUFFIX) or name.startswith("."):
            continue
        relative = path.relative_to(folder).as_posix()[: -len(RECON_SUFFIX)]
        index[path_key(PurePosixPath(relative))] = path
    return index


def folder_image_size(folder: str | os.PathLike) -> int:
    """Side of the first reconstruction in `folder` (what the originals are cropped to)."""
    index = _folder_index(Path(folder))
    if not index:
        raise GtokError(f"{folder} holds no {RECON_SUFFIX} reconstructions.")
    first = next(iter(index.values()))
    image = decode_rgb(first.read_bytes())
    if image.width != image.height:
        raise GtokError(f"{first} is {image.width}x{image.height}, not square; pass --size.")
    return image.width


class FolderReconstructor:
    """Reconstructions stored as `<folder>/<key path>.png` (`gtok.decode.keys`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GtokError(f"{folder} is not a folder of reconstructions or a token store.")
        self.index = _folder_index(self.folder)
        if not self.index:
            raise GtokError(f"{folder} holds no {RECON_SUFFIX} reconstructions.")
        self.name = str(folder)
        self.codebook_size = None
        self.has_geometry = False
        self.map_size = None
        self.model = None
        self.matched: set[str] = set()

    def reconstruct(self, keys: list[str], originals: torch.Tensor) -> Reconstruction:
        size = tuple(originals.shape[-2:])
        kept, images, missing = [], [], []
        for i, key in enumerate(keys):
            path = self.index.get(key)
            if path is None:
                missing.append((key, f"no reconstruction in {self.folder}"))
                continue
            self.matched.add(key)
            try:
                image = decode_rgb(path.read_bytes())
            except (ImageRejected, OSError) as exc:
                missing.append((key, f"reconstruction {path}: {exc}"))
                continue
            if (image.height, image.width) != size:
                missing.append(
                    (key, f"reconstruction {path} is {image.width}x{image.height}, "
                     f"the original crop {size[1]}x{size[0]}")
                )  # fmt: skip
                continue
            kept.append(i)
            images.append(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        stacked = torch.stack(images) if images else torch.empty((0, 3, *size), dtype=torch.uint8)
        return Reconstruction(kept, stacked, missing=missing)

    def unmatched(self) -> int:
        """Reconstructions whose key was not among the originals scored."""
        return len(self.index) - len(self.matched)


class StoreReconstructor:
    """A token store's tokens for the originals' keys, decoded by the store's model."""

    def __init__(self, store: TokenStore, model: EncodingModel) -> None:
        self.store = store
        self.model = model
        self.name = store.path
        self.codebook_size = store.codebook_size
        self.has_geometry = model.config.kind == "gaussian"
        self.map_size = model.config.map_size
        self.reader = TokenStore(store.path, format="torch", fields=store.fields)
        self.matched: set[str] = set()

    def reconstruct(self, keys: list[str], originals: torch.Tensor) -> Reconstruction:
        kept, rows, missing = [], [], []
        for i, key in enumerate(keys):
            try:
                rows.append(self.store.index(key))
            except KeyError:
                missing.append((key, f"not in {self.store.path}"))
                continue
            kept.append(i)
            self.matched.add(key)
        if not rows:
            empty = torch.empty((0, 3, *originals.shape[-2:]), dtype=torch.uint8)
            return Reconstruction([], empty, missing=missing)
        batch = self.reader.batch(np.array(rows, dtype=np.int64))
        images = uint8_images(decode_batch(self.model, batch))
        return Reconstruction(kept, images, batch["indices"], batch.get("geometry"), missing)

    def unmatched(self) -> int:
        return len(self.store) - len(self.matched)
