"""Where a store lives: a local folder or an fsspec URL, and the few file operations the
writer needs beyond Zarr (delete a subtree, make a subtree durable, create a small file only
if it does not exist yet, read one back (at most `LOCK_BYTES`), list a folder)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gtok.outputs import create_temporary
from gtok.safeload import LOCK_BYTES, read_limited

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
        fs, _ = self._fs()
        return fs.isfile(self._key(key))

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

    def _key(self, key: str) -> str:
        """The fsspec path of `key` (non-local stores only)."""
        return f"{self._fs()[1].rstrip('/')}/{key}"

    def names(self, sub: str = "") -> list[str]:
        """The names directly below `sub` (the store itself when empty); [] when absent."""
        if self.is_local:
            folder = self.path / sub
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        fs, _ = self._fs()
        target = self._key(sub).rstrip("/")
        if not fs.isdir(target):
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(target, detail=False))

    def read(self, key: str) -> bytes | None:
        """The bytes of the small object `key` (a lock file), or None when there is none; one
        of more than `LOCK_BYTES` is an `Unreadable` naming it."""
        name = f"{self}/{key}"
        try:
            if self.is_local:
                return read_limited(self.path / key, LOCK_BYTES, name)
            fs, _ = self._fs()
            with fs.open(self._key(key), "rb") as file:
                return read_limited(file, LOCK_BYTES, name)
        except FileNotFoundError:
            return None

    def create(self, key: str, data: bytes) -> bool:
        """Write the object `key` only if it does not exist yet; whether this call made it.

        Local disks: the bytes go to a temporary file that is hard-linked to `key` (atomic,
        and never visible half-written, also on NFS). fsspec: open mode "xb" where the
        filesystem supports it, else check-then-write, which two writers can both pass.
        """
        if self.is_local:
            return _create_local(self.path / key, data)
        fs, _ = self._fs()
        path = self._key(key)
        try:
            with fs.open(path, "xb") as file:
                file.write(data)
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError):  # no exclusive create on this filesystem
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True

    def remove(self, sub: str = "") -> None:
        """Delete `sub` (a folder or object below the store; everything when empty)."""
        if self.is_local:
            import shutil

            target = self.path / sub if sub else self.path
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            return
        fs, root = self._fs()
        key = self._key(sub) if sub else root
        if fs.exists(key):
            fs.rm(key, recursive=True)

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


def _create_local(target: Path, data: bytes) -> bool:
    """`Location.create` on a local disk: write a new temporary file
    (`gtok.outputs.create_temporary`), hard-link it to `target`."""
    while True:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            temporary, fd = create_temporary(target)
            break
        except FileNotFoundError:  # another process removed the folder as it emptied it
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.link(temporary, target)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True
