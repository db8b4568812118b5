"""Where `gtok decode` puts reconstructions: a folder of PNGs, or WebDataset tar shards.

Both take one sample at a time (`write(key, png, gaussians_png, label, text)`) and never leave a
half-written file under its final name (each file, or each tar, is written under a new
temporary name and renamed when complete: `gtok.outputs.AtomicFile`, which never writes
through a link planted in the folder; `abort` removes what a failed run was writing). A
sample that cannot be written where its key says (a name the file system refuses) raises
`SampleNotWritten` and leaves none of its files; a write the machine refuses (full disk,
read-only folder: `gtok.outputs.WRITE_FAILURES`) raises its `OSError`, naming the file.

- `PngFolder`: `OUT/<key path>.png` and, with Gaussians, `OUT/<key path>.gaussians.png`,
  where `<key path>` is `gtok.decode.keys.key_path(key)` (each `/` of the key a sub-folder),
  or `hashed_path(key)` for a key whose path does not fit a file system (or differs from an
  earlier key's only in case), recorded in `OUT/%hashed/keys.json`.
- `WdsShards`: `OUT/recon-000000.tar`, ... of `shard_size` samples each; a sample's members
  are `<key path>.png`, `<key path>.gaussians.png` and `<key path>.cls` (its label, when
  the store has one), plus the `text` members: `<key path>.txt` (the caption, when the
  store has captions) and `<key path>.json` (the store's `meta/<field>` values as one JSON
  object of strings), with every `.` of the key's last part written `%2E` so that WebDataset
  readers (key = member path up to the first dot of the file name) read the key back. No
  folder of a member path ends in `.png` or `.cls`, so no member is both a file and a folder.
  `PngFolder` writes no text.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from gtok.decode.keys import (
    GAUSSIANS_SUFFIX,
    HASHED_DIR,
    INDEX_FILE,
    RECON_SUFFIX,
    fits,
    hashed_path,
    index_document,
    key_path,
    read_index,
)
from gtok.outputs import WRITE_FAILURES, AtomicFile, naming, write_atomically

__all__ = ["PngFolder", "SampleNotWritten", "SampleWriter", "WdsShards", "wds_key_path"]

SHARD_PATTERN = "recon-{:06d}.tar"


class SampleNotWritten(Exception):
    """One sample could not be written; the message is the reason."""


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

    def abort(self) -> None:
        """Stop after a failure: remove unfinished files, keep (and index) finished ones."""
        ...


class PngFolder:
    """Reconstructions as PNG files in a folder tree (see the module doc)."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        with naming(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.hashed = read_index(self.out)  # key -> hashed path, this run's and earlier ones
        self._indexed = dict(self.hashed)
        self._taken: dict[str, str] = {}  # case-folded path -> key, in this run

    def _stem(self, key: str) -> PurePosixPath:
        if key in self.hashed:  # hashed by an earlier run: stay there
            return PurePosixPath(self.hashed[key])
        path = key_path(key)
        if fits(path) and self._taken.setdefault(str(path).casefold(), key) == key:
            return path
        path = hashed_path(key)
        self.hashed[key] = str(path)
        return path

    def write(
        self,
        key: str,
        png: bytes,
        gaussians_png: bytes | None,
        label: int,
        text: dict[str, bytes] | None = None,
    ) -> None:
        stem = self.out / self._stem(key)
        files = [(stem.with_name(stem.name + RECON_SUFFIX), png)]
        if gaussians_png is not None:
            files.append((stem.with_name(stem.name + GAUSSIANS_SUFFIX), gaussians_png))
        done: list[Path] = []
        try:
            for path, data in files:
                with naming(path):
                    path.parent.mkdir(parents=True, exist_ok=True)
                done.append(write_atomically(path, data))
        except OSError as exc:
            for written in done:
                written.unlink(missing_ok=True)
            if exc.errno in WRITE_FAILURES:
                raise
            reason = f"cannot write {exc.filename or path}: {exc.strerror or exc}"
            raise SampleNotWritten(reason) from exc
        self.files += done

    def _write_index(self) -> None:
        if self.hashed == self._indexed:
            return
        path = self.out / HASHED_DIR / INDEX_FILE
        path.parent.mkdir(exist_ok=True)
        text = json.dumps(index_document(self.hashed), indent=1) + "\n"
        write_atomically(path, text.encode())
        self._indexed = dict(self.hashed)

    def close(self) -> list[Path]:
        self._write_index()
        return list(self.files)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # the first failure is the one to report
            self._write_index()  # the files already written stay findable


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
        with naming(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.files: list[Path] = []
        self._file: AtomicFile | None = None  # the shard being written, and its tar
        self._tar: tarfile.TarFile | None = None
        self._path = self.out / SHARD_PATTERN.format(0)  # the shard being written
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
        if self._file is None:
            self._path = self.out / SHARD_PATTERN.format(len(self.files))
            self._file = AtomicFile(self._path)
            self._tar = tarfile.TarFile(
                fileobj=self._file.handle, mode="w", format=tarfile.PAX_FORMAT
            )
        stem = wds_key_path(key)
        with naming(self._path):
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
        assert self._tar is not None and self._file is not None
        with naming(self._path):  # a failure here: `abort` drops the file
            self._tar.close()
        self.files.append(self._file.commit())
        self._file, self._tar, self._in_shard = None, None, 0

    def close(self) -> list[Path]:
        if self._file is not None:
            self._finish_shard()
        return list(self.files)

    def abort(self) -> None:
        if self._file is None:
            return
        if self._tar is not None:
            with contextlib.suppress(OSError):  # flushes what it can; the file goes anyway
                self._tar.close()
        self._file.discard()
        self._file, self._tar, self._in_shard = None, None, 0
