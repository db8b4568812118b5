"""Fast row gathers from the sharded row arrays of a local store, without zarr-python.

zarr-python spends ~0.1-0.2 ms of Python and thread hand-offs per inner chunk, so a batch of
256 random rows (256 chunks) reads at ~1-5 thousand rows/s. The store's row arrays have one
fixed layout (`schema`: Zarr v3 `sharding_indexed` shards of `SHARD_ROWS` rows, inner chunks
of `CHUNK_ROWS` rows encoded `bytes` little-endian + `zstd`, the shard index at the end), so
a reader can follow the sharding spec (ZEP 2) directly: read each shard's index once
(`n` little-endian uint64 (offset, nbytes) pairs + a crc32c), then `pread` and decompress
only the inner chunks a batch needs.

Chunks are bounded: the shard index must point inside the file, and each chunk's zstd
header must declare exactly one chunk's bytes (`zstdguard.check_frame`) before it is
decompressed; anything else raises `CorruptChunk`.

A shard's index is read from the open file it indexes, and kept only while that file is
the same (inode, size, modification time): `gtok encode --append` rewrites the last, partly
filled shard file (its old rows unchanged), and a reader that opened the store before reads
those rows from the new file with the new file's index.

`RowReader.open` returns None for any array not in exactly that layout (or not on a local
disk), and `TokenStore` then reads through zarr; tests check both give the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gtok.store.zstdguard import CorruptChunk, check_frame

__all__ = ["RowReader"]

_MISSING = np.uint64(2**64 - 1)
_INNER: list[dict[str, Any]] = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd"},
]
_INDEX: list[dict[str, Any]] = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "crc32c"},
]


def _same_codecs(found: list[Any], expected: list[dict]) -> bool:
    if len(found) != len(expected):
        return False
    for have, want in zip(found, expected, strict=True):
        if have.get("name") != want["name"]:
            return False
        config = have.get("configuration") or {}
        if any(config.get(k) != v for k, v in want.get("configuration", {}).items()):
            return False
    return True


class RowReader:
    """Rows of one local row-sharded array (see the module docstring)."""

    def __init__(
        self, folder: Path, shape, dtype: np.dtype, shard_rows: int, chunk_rows: int, fill
    ) -> None:
        self.folder = folder
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shard_rows = shard_rows
        self.chunk_rows = chunk_rows
        self.fill = fill
        self.per_shard = shard_rows // chunk_rows
        self._indexes: dict[int, tuple[tuple[int, int, int], np.ndarray]] = {}

    @classmethod
    def open(cls, folder: Path, array) -> RowReader | None:
        """A reader for zarr `array` stored in local `folder`, or None if its layout differs."""
        meta = array.metadata.to_dict()
        if meta.get("zarr_format") != 3 or len(meta.get("codecs", ())) != 1:
            return None
        sharding = meta["codecs"][0]
        config = sharding.get("configuration", {})
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        inner = list(config.get("chunk_shape", ()))
        key_encoding = meta["chunk_key_encoding"]
        rest = list(meta["shape"][1:])
        if (
            sharding.get("name") != "sharding_indexed"
            or config.get("index_location", "end") != "end"
            or not _same_codecs(list(config.get("codecs", ())), _INNER)
            or not _same_codecs(list(config.get("index_codecs", ())), _INDEX)
            or key_encoding.get("name") != "default"
            or key_encoding.get("configuration", {}).get("separator", "/") != "/"
            or list(grid[1:]) != rest
            or inner[1:] != rest
            or grid[0] % inner[0]
            or array.dtype.kind not in "iuf"
        ):
            return None
        return cls(folder, meta["shape"], array.dtype, grid[0], inner[0], array.fill_value)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_indexes": {}}

    def _shard_path(self, shard: int) -> Path:
        return self.folder.joinpath("c", str(shard), *["0"] * (len(self.shape) - 1))

    def _open_shard(self, shard: int) -> tuple[int | None, np.ndarray | None]:
        """(an open handle, the [per_shard, 2] (offset, nbytes) index of its inner chunks) of
        the shard's file; (None, None) when there is no file. The caller closes the handle."""
        path = self._shard_path(shard)
        try:
            handle = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None, None
        try:
            status = os.fstat(handle)
            identity = (status.st_ino, status.st_size, status.st_mtime_ns)
            cached = self._indexes.get(shard)
            if cached is None or cached[0] != identity:
                cached = (identity, self._read_index(handle, status.st_size, path))
                self._indexes[shard] = cached
        except BaseException:
            os.close(handle)
            raise
        return handle, cached[1]

    def _read_index(self, handle: int, file_bytes: int, path: Path) -> np.ndarray:
        """The index at the end of the open shard file `handle` of `file_bytes` bytes."""
        size = 16 * self.per_shard + 4
        data_bytes = file_bytes - size
        if data_bytes < 0:
            raise CorruptChunk(f"{path} is shorter than its shard index")
        raw = os.pread(handle, size, data_bytes)
        index = np.frombuffer(raw[:-4], "<u8").reshape(self.per_shard, 2)
        present = index[:, 0] != _MISSING
        ends = index[present, 0].astype(object) + index[present, 1].astype(object)
        if len(ends) and max(ends) > data_bytes:
            raise CorruptChunk(f"the shard index of {path} points past the end of its data")
        return index

    def _chunk(self, handle: int | None, entry: np.ndarray | None) -> np.ndarray:
        shape = (self.chunk_rows, *self.shape[1:])
        if handle is None or entry is None or entry[0] == _MISSING:
            return np.full(shape, self.fill, self.dtype)
        from numcodecs.zstd import decompress

        data = os.pread(handle, int(entry[1]), int(entry[0]))
        check_frame(data, int(np.prod(shape)) * self.dtype.itemsize)
        return np.frombuffer(decompress(data), self.dtype).reshape(shape)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted, unique, in range) as an array [len(rows), ...]."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not len(rows):
            return out
        chunks = rows // self.chunk_rows
        starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        opened: dict[int, tuple[int | None, np.ndarray | None]] = {}
        try:
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                chunk = int(chunks[start])
                shard, slot = divmod(chunk, self.per_shard)
                if shard not in opened:
                    opened[shard] = self._open_shard(shard)
                handle, index = opened[shard]
                entry = index[slot] if index is not None else None
                block = self._chunk(handle, entry)
                out[start:end] = block[rows[start:end] - chunk * self.chunk_rows]
        finally:
            for handle, _ in opened.values():
                if handle is not None:
                    os.close(handle)
        return out
