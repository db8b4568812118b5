"""Where a store lives: a local folder or an fsspec URL, and the few file operations the
writer needs beyond Zarr (delete a subtree, make a subtree durable)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Location"]


@dataclass(frozen=True)
class Location:
    """A store's address. `url` is what the user gave (a path or a URL)."""

    url: str

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def path(self) -> Path:
        """The local folder (only for local stores)."""
        return Path(self.url.removeprefix("file://")).expanduser().absolute()

    def __str__(self) -> str:
        return str(self.path) if self.is_local else self.url

    def zarr_store(self, *, read_only: bool = False):
        """A Zarr store object for this location."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            if not read_only:
                self.path.mkdir(parents=True, exist_ok=True)
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only)

    def _fs(self):
        import fsspec.core

        return fsspec.core.url_to_fs(self.url)

    def has(self, key: str) -> bool:
        """Whether the object `key` (relative, `/`-separated) exists."""
        if self.is_local:
            return (self.path / key).is_file()
        fs, root = self._fs()
        return fs.isfile(f"{root.rstrip('/')}/{key}")

    def exists(self) -> bool:
        if self.is_local:
            return self.path.exists()
        fs, root = self._fs()
        return fs.exists(root)

    def is_empty_dir(self) -> bool:
        if self.is_local:
            return self.path.is_dir() and not any(self.path.iterdir())
        fs, root = self._fs()
        return fs.isdir(root) and not fs.ls(root)

    def remove(self, sub: str = "") -> None:
        """Delete `sub` (a folder or object below the store; everything when empty)."""
        if self.is_local:
            import shutil

            target = self.path / sub if sub else self.path
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            return
        fs, root = self._fs()
        target = f"{root.rstrip('/')}/{sub}" if sub else root
        if fs.exists(target):
            fs.rm(target, recursive=True)

    def sync(self, sub: str) -> None:
        """Make every file below `sub` durable (fsync files, then folders) on local disks.

        Object stores need nothing: an object is durable once its upload returned.
        """
        if not self.is_local:
            return
        top = self.path / sub
        for folder, _, files in os.walk(top, topdown=False):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def disk_usage(self) -> tuple[int, int]:
        """(bytes, files) of everything below the store."""
        if self.is_local:
            sizes = [p.stat().st_size for p in self.path.rglob("*") if p.is_file()]
            return sum(sizes), len(sizes)
        fs, root = self._fs()
        sizes = [info["size"] for info in fs.find(root, detail=True).values()]
        return sum(sizes), len(sizes)
