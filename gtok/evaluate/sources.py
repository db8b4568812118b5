"""Where evaluation images come from: reference shards, and reconstructions to pair with them.

- `reference_batches`: the originals, decoded and centre-cropped by `gtok.data` exactly as
  `gtok encode` does it (`EncodeStream`, spawn workers), with every sample that cannot be
  used recorded with its reason, up to `limit` usable images.
- Reconstructors turn a batch of originals into reconstructions, matched by key:
  `ModelReconstructor` runs a tokenizer (encode, then decode the tokens);
  `FolderReconstructor` reads `<key path>.png` files (what `gtok decode` writes, or any
  images laid out the same way; hidden files are not reconstructions), the hashed paths
  recorded in `%hashed/keys.json` and the `.png` members of `gtok decode --format wds` tars;
  `StoreReconstructor` decodes a token store's rows with the store's model. A key without a
  usable reconstruction is recorded with the reason and left out of the scores: a
  reconstruction that is not a regular file (a FIFO, a link to a device), is larger than
  `MAX_RECONSTRUCTION_BYTES` or is not a readable image.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from gtok.data import (
    EncodeStream,
    Preprocess,
    ShardChunk,
    expand_shards,
    loader,
    to_model_input,
)
from gtok.data.images import ImageRejected, decode_rgb
from gtok.data.parquetio import DEFAULT_COLUMNS, Columns
from gtok.data.tario import open_tar
from gtok.decode import (
    GAUSSIANS_SUFFIX,
    HASHED_DIR,
    RECON_SUFFIX,
    decode_batch,
    path_key,
    read_index,
    uint8_images,
)
from gtok.encode.model import EncodingModel
from gtok.errors import ArgumentError, GtokError
from gtok.store import TokenStore

__all__ = [
    "MAX_RECONSTRUCTION_BYTES",
    "FolderReconstructor",
    "ModelReconstructor",
    "Reconstruction",
    "Reconstructor",
    "ReferenceBatch",
    "StoreReconstructor",
    "folder_image_size",
    "folder_index",
    "in_shard_order",
    "read_reconstruction",
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
    columns: Columns = DEFAULT_COLUMNS,
) -> Iterator[ReferenceBatch]:
    """Batches of at most `batch_size` originals from `shards` (Parquet files read with
    `columns`), in input order (shards by name, samples in file order, whatever the number
    of `workers`), stopping after `limit` usable images."""
    refs = expand_shards(shards, columns)
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
    """A source of reconstructions (read-only members: each kind narrows their types)."""

    @property
    def name(self) -> str: ...  # what the results call it (a model path, a folder, a store)
    @property
    def codebook_size(self) -> int | None: ...  # None: no tokens
    @property
    def has_geometry(self) -> bool: ...
    @property
    def map_size(self) -> int | None: ...  # side of the rendered map, for drawing Gaussians
    @property
    def model(self) -> EncodingModel | None: ...

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


@dataclass(frozen=True)
class _TarMember:
    """A reconstruction stored as a member of a `gtok decode --format wds` tar."""

    tar: Path
    name: str
    offset: int  # of the member's data in the tar, bytes
    size: int

    def read_bytes(self) -> bytes:
        with self.tar.open("rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"


MAX_RECONSTRUCTION_BYTES = 64 << 20  # a reconstruction PNG larger than this is not read


def read_reconstruction(path: Path | _TarMember) -> Image.Image:
    """The RGB image in the reconstruction file (or decode tar member) `path`; `ImageRejected`
    with the reason when it is not a regular file, is larger than `MAX_RECONSTRUCTION_BYTES`
    or is not an image."""
    if isinstance(path, _TarMember):
        if path.size > MAX_RECONSTRUCTION_BYTES:
            raise ImageRejected(f"{path.size} bytes, more than the {MAX_RECONSTRUCTION_BYTES} read")
        try:
            return decode_rgb(path.read_bytes())
        except OSError as exc:
            raise ImageRejected(f"cannot read it: {exc.strerror}") from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except OSError as exc:
        raise ImageRejected(f"cannot open it: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected("not a regular file")
        if info.st_size > MAX_RECONSTRUCTION_BYTES:
            raise ImageRejected(
                f"{info.st_size} bytes, more than the {MAX_RECONSTRUCTION_BYTES} read"
            )
        try:
            data = handle.read(MAX_RECONSTRUCTION_BYTES + 1)
        except OSError as exc:
            raise ImageRejected(f"cannot read it: {exc.strerror}") from exc
    if len(data) > MAX_RECONSTRUCTION_BYTES:
        raise ImageRejected(f"more than the {MAX_RECONSTRUCTION_BYTES} bytes read")
    return decode_rgb(data)


def _tar_index(tar: Path) -> dict[str, _TarMember]:
    """key -> reconstruction of every `<key path>.png` member of a decode tar (not the
    `.gaussians.png` pictures); an unreadable tar is a `GtokError`."""
    index = {}
    try:
        with tar.open("rb") as fileobj, open_tar(fileobj) as archive:
            for member in archive:
                name = member.name  # as `gtok decode` wrote it (not escaped like a key)
                if not member.isfile() or not name.endswith(RECON_SUFFIX):
                    continue
                if name.endswith(GAUSSIANS_SUFFIX):
                    continue
                key = path_key(PurePosixPath(name[: -len(RECON_SUFFIX)]))
                index[key] = _TarMember(tar, name, member.offset_data, member.size)
    except (tarfile.TarError, OSError) as exc:
        raise GtokError(f"{tar} is not a readable tar of reconstructions ({exc}).") from exc
    return index


def folder_index(folder: Path) -> dict[str, Path | _TarMember]:
    """key -> reconstruction: `<key path>.png` files (`gtok decode`), then the hashed ones
    indexed, then the `.png` members of the `.tar` shards directly in `folder` (`gtok decode
    --format wds`)."""
    index: dict[str, Path | _TarMember] = {}
    for path in sorted(folder.rglob(f"*{RECON_SUFFIX}")):
        relative = path.relative_to(folder)
        if path.name.endswith(GAUSSIANS_SUFFIX) or relative.parts[0] == HASHED_DIR:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue  # hidden: temporary files, other tools' files
        index[path_key(PurePosixPath(relative.as_posix()[: -len(RECON_SUFFIX)]))] = path
    for key, stem in read_index(folder).items():
        index[key] = folder / f"{stem}{RECON_SUFFIX}"
    for tar in sorted(folder.glob("*.tar")):
        if tar.is_file() and not tar.name.startswith("."):
            index.update(_tar_index(tar))
    return index


def folder_image_size(folder: str | os.PathLike) -> int:
    """Side of the first readable reconstruction in `folder` (what the originals are cropped
    to); the unreadable ones before it are recorded as skipped when their keys come."""
    index = folder_index(Path(folder))
    if not index:
        raise GtokError(_NO_RECONSTRUCTIONS.format(folder=folder))
    problems = []
    for path in index.values():
        try:
            image = read_reconstruction(path)
        except ImageRejected as exc:
            problems.append(f"{path}: {exc}")
            continue
        if image.width != image.height:
            raise ArgumentError(
                f"{path} is {image.width}x{image.height}, not square; pass size.", "size"
            )
        return image.width
    raise GtokError(
        f"none of the {len(index)} reconstructions in {folder} is a readable image "
        f"(e.g. {problems[0]}); check the folder."
    )


_NO_RECONSTRUCTIONS = (
    "{folder} holds no reconstructions (no " + RECON_SUFFIX + " files, and no .tar shards "
    "with " + RECON_SUFFIX + " members as `gtok decode --format wds` writes them)."
)


class FolderReconstructor:
    """Reconstructions stored as `<folder>/<key path>.png` (`gtok.decode.keys`), or as the
    members of the WebDataset tars `gtok decode --format wds` writes into `folder`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GtokError(f"{folder} is not a folder of reconstructions or a token store.")
        self.index = folder_index(self.folder)
        if not self.index:
            raise GtokError(_NO_RECONSTRUCTIONS.format(folder=folder))
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
                image = read_reconstruction(path)
            except ImageRejected as exc:
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
