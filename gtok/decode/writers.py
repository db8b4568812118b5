"""Where `gtok decode` puts reconstructions: a folder of PNGs, or WebDataset tar shards.

Both take one sample at a time (`write(key, png, gaussians_png, label, text)`) and never leave a
half-written file under its final name (each file, or each tar, is written under a temporary
name and renamed when complete).

- `PngFolder`: `OUT/<key path>.png` and, with Gaussians, `OUT/<key path>.gaussians.png`,
  where `<key path>` is `gtok.decode.keys.key_path(key)` (each `/` of the key a sub-folder).
- `WdsShards`: `OUT/recon-000000.tar`, ... of `shard_size` samples each; a sample's members
  are `<key path>.png`, `<key path>.gaussians.png` and `<key path>.cls` (its label, when
  the store has one), plus the `text` members: `<key path>.txt` (the caption, when the
  store has captions) and `<key path>.json` (the store's `meta/<field>` values as one JSON
  object of strings), with every `.` of the key's last part written `%2E` so that WebDataset
  readers (key = member path up to the first dot of the file name) read the key back.
  `PngFolder` writes no text.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Protocol

from gtok.decode.keys import GAUSSIANS_SUFFIX, RECON_SUFFIX, key_path

__all__ = ["PngFolder", "SampleWriter", "WdsShards", "wds_key_path"]

SHARD_PATTERN = "recon-{:06d}.tar"


class SampleWriter(Protocol):
    def write(
        self,
        key: str,
        png: bytes,
        gaussians_png: bytes | None,
        label: int,
        text: dict[str, bytes] | None = None,
    ) -> None:
        """One sample; `text`: extension -> bytes of further members ("txt", "json")."""
        ...

    def close(self) -> list[Path]:
        """Finish writing; returns every file written."""
        ...


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class PngFolder:
    """Reconstructions as PNG files in a folder tree (see the module doc)."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def write(
        self,
        key: str,
        png: bytes,
        gaussians_png: bytes | None,
        label: int,
        text: dict[str, bytes] | None = None,
    ) -> None:
        stem = self.out / key_path(key)
        recon = stem.with_name(stem.name + RECON_SUFFIX)
        _atomic_write(recon, png)
        self.files.append(recon)
        if gaussians_png is not None:
            picture = stem.with_name(stem.name + GAUSSIANS_SUFFIX)
            _atomic_write(picture, gaussians_png)
            self.files.append(picture)

    def close(self) -> list[Path]:
        return list(self.files)


def wds_key_path(key: str) -> str:
    """The member-name stem of `key` in a decode tar: `key_path` with the last part's dots
    written `%2E`."""
    path = key_path(key)
    return str(path.with_name(path.name.replace(".", "%2E")))


class WdsShards:
    """Reconstructions as WebDataset tar shards of `shard_size` samples (see the module doc)."""

    def __init__(self, out: str | os.PathLike, shard_size: int = 10000) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.files: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._in_shard = 0

    def _add(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # reproducible tars: same tokens, same bytes
        self._tar.addfile(info, io.BytesIO(data))

    def write(
        self,
        key: str,
        png: bytes,
        gaussians_png: bytes | None,
        label: int,
        text: dict[str, bytes] | None = None,
    ) -> None:
        if self._tar is None:
            final = self.out / SHARD_PATTERN.format(len(self.files))
            self._tmp = final.with_name(f".{final.name}.tmp")
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        stem = wds_key_path(key)
        self._add(stem + RECON_SUFFIX, png)
        if gaussians_png is not None:
            self._add(stem + GAUSSIANS_SUFFIX, gaussians_png)
        if label >= 0:
            self._add(f"{stem}.cls", str(label).encode())
        for ext, data in (text or {}).items():
            self._add(f"{stem}.{ext}", data)
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        final = self._tmp.with_name(self._tmp.name[1 : -len(".tmp")])
        os.replace(self._tmp, final)
        self.files.append(final)
        self._tar, self._tmp, self._in_shard = None, None, 0

    def close(self) -> list[Path]:
        if self._tar is not None:
            self._finish_shard()
        return list(self.files)
