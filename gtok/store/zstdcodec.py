"""`BoundedZstdCodec`: zarr's zstd codec, refusing a chunk that claims more bytes than its
shape holds (`zstdguard`). Readers open a store's arrays inside `bounded_zstd()`; zarr's own
codec stays the default everywhere else in the process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from gtok.store.zstdguard import check_frame, chunk_limit

__all__ = ["BoundedZstdCodec", "bounded_zstd"]


class BoundedZstdCodec(ZstdCodec):
    """zarr's zstd codec that checks each chunk's declared size before decompressing it."""

    def _decode_sync(self, chunk_bytes, chunk_spec):
        dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
        check_frame(chunk_bytes.as_numpy_array(), chunk_limit(tuple(chunk_spec.shape), dtype))
        return super()._decode_sync(chunk_bytes, chunk_spec)


_NAME = f"{BoundedZstdCodec.__module__}.{BoundedZstdCodec.__qualname__}"
zarr.registry.register_codec("zstd", BoundedZstdCodec)


@contextlib.contextmanager
def bounded_zstd() -> Iterator[None]:
    """Arrays opened (their metadata parsed) inside decode zstd with `BoundedZstdCodec`;
    zarr's own codec stays the default everywhere else."""
    with zarr.config.set({"codecs.zstd": _NAME}):
        yield
