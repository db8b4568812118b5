"""Writing files so that a kill at any moment leaves either the old file or the new one.

Each write goes to a hidden temporary file in the same folder, is flushed and fsynced, and
then `os.replace`s the target (atomic on POSIX); the folder is fsynced so the rename itself
survives a power cut. A killed writer leaves only a temporary file, which `remove_stale`
deletes at the next start.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["TEMP_MARK", "atomic_torch_save", "atomic_write", "atomic_write_bytes", "remove_stale"]

TEMP_MARK = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield tmp, handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write failed
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Create or replace `path` with what `write(handle)` writes to a binary handle."""
    path = Path(path)
    with _temporary(path) as (_, handle):
        write(handle)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Create or replace `path` with `data`."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path`, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed writers left in `folder`; returns them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
