"""Bounded zstd decompression: a stored chunk may not inflate past what its shape allows.

A zstd frame declares its decompressed size in its header, and decompressors allocate that
much before they look at the data: a 100 KB chunk can claim (and hold) gigabytes of zeros.
Every chunk a gtok store holds is written by zarr-python in one piece, so its header
declares the size; readers check it against the chunk's shape before decompressing:

- `check_frame(data, limit)`: the frame must declare at most `limit` bytes;
- `chunk_limit(shape, dtype)`: the most bytes a chunk of that shape decodes to (rows x row
  bytes, or `schema.MAX_STRING_BYTES` per element for variable-length strings);
- `gtok.store.zstdcodec.BoundedZstdCodec`: zarr's zstd codec with that check.
"""

from __future__ import annotations

import math

import numpy as np

from gtok.store import schema

__all__ = ["CorruptChunk", "check_frame", "chunk_limit", "frame_content_size"]

_MAGIC = b"\x28\xb5\x2f\xfd"  # zstd frame magic number, little-endian 0xFD2FB528
_DICT_ID_BYTES = (0, 1, 2, 4)


class CorruptChunk(ValueError):
    """A stored chunk that is not a zstd frame of an allowed size."""


def frame_content_size(data: bytes | memoryview | np.ndarray) -> int | None:
    """The decompressed size a zstd frame header declares (RFC 8878, 3.1.1.1), or None when
    `data` is not a zstd frame or its header declares no size."""
    view = data.data if isinstance(data, np.ndarray) else memoryview(data)
    head = bytes(view.cast("B")[:18])
    if len(head) < 5 or head[:4] != _MAGIC:
        return None
    descriptor = head[4]
    single_segment = (descriptor >> 5) & 1
    field_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + _DICT_ID_BYTES[descriptor & 3]
    if field_bytes == 0 or len(head) < start + field_bytes:
        return None
    value = int.from_bytes(head[start : start + field_bytes], "little")
    return value + 256 if field_bytes == 2 else value


def check_frame(data: bytes | memoryview | np.ndarray, limit: int) -> None:
    """A `CorruptChunk` unless `data` is a zstd frame declaring at most `limit` bytes."""
    size = frame_content_size(data)
    if size is None:
        raise CorruptChunk("a chunk is not a zstd frame of known size")
    if size > limit:
        raise CorruptChunk(f"a chunk claims {size:,} bytes where at most {limit:,} fit")


def chunk_limit(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Most bytes a chunk of `shape` elements of `dtype` decodes to (strings: vlen-utf8,
    a 4-byte count plus per element a 4-byte length and its bytes)."""
    elements = math.prod(shape)
    if dtype.kind in "OT":  # variable-length strings
        return 4 + elements * (4 + schema.MAX_STRING_BYTES)
    return elements * dtype.itemsize
