"""One output shard: a WebDataset tar and its stats file, each written whole or not at all.

`SHARDS_DIR/shard-000000.tar` holds, per packed file in pack order, the members
`<key>.<jpg|png|webp>` (the image), `<key>.cls` (its class id as decimal text, with labels)
and `<key>.json` (`{"path": relative path, "width", "height", "format", "converted"[,
"class"]}`). Members carry fixed metadata (mtime 0, mode 0644, no owner), so packing the
same files twice gives the same bytes. `SHARDS_DIR/shard-000000_stats.json` (as img2dataset
names them) says what became of every file given to the shard; it is written after the tar,
so a shard counts as done when its stats file is there.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gtok.data.samples import NO_LABEL
from gtok.outputs import AtomicFile, naming, write_atomically
from gtok.safeload import LIST_BYTES, load_json

__all__ = ["ShardStats", "ShardWriter", "reason_kind", "shard_name", "stats_name"]


def shard_name(index: int, prefix: str = "shard") -> str:
    """`shard-000000.tar` for index 0 (`prefix` names other series: `val-000000.tar`)."""
    return f"{prefix}-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"shard-{index:06d}_stats.json"


def reason_kind(reason: str) -> str:
    """The fixed part of a skip reason, to count by: `"truncated or corrupt image data (...)"`
    -> `"truncated or corrupt image data"`, `"not an image: ..."` -> `"not an image"`."""
    return reason.split(" (", 1)[0].split(":", 1)[0].strip()


@dataclass
class ShardStats:
    """What became of the files given to one shard. files == count + skipped."""

    shard: str
    files: int = 0  # entries of the input folder assigned to this shard
    count: int = 0  # samples written
    skipped: int = 0
    converted: int = 0  # re-encoded (see `gtok.pack.check`), not stored as they were
    image_bytes: int = 0  # sum of the stored image members
    bytes: int = 0  # size of the tar file
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)  # reason_kind -> files
    skipped_files: list[dict] = field(default_factory=list)  # {"path", "key", "reason"}

    def add(self, image_bytes: int, converted: bool) -> None:
        """Count a file written as a sample of `image_bytes` bytes."""
        self.files += 1
        self.count += 1
        self.converted += int(converted)
        self.image_bytes += image_bytes

    def skip(self, path: str, key: str, reason: str) -> None:
        """Count a file not written, with the reason."""
        self.files += 1
        self.skipped += 1
        self.skipped_files.append({"path": path, "key": key, "reason": reason})
        kind = reason_kind(reason)
        self.reasons[kind] = self.reasons.get(kind, 0) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> ShardStats:
        return cls(**load_json(path, LIST_BYTES))

    def write(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_atomically(path, text.encode())


class ShardWriter:
    """Writes samples into `folder/shard_name(index, prefix)` under a temporary name
    (`gtok.outputs.AtomicFile`); `close` renames it into place and returns its size in bytes."""

    def __init__(self, folder: Path, index: int, prefix: str = "shard") -> None:
        self.path = folder / shard_name(index, prefix)
        # committed by `close` or discarded by `abort`, which the caller calls in a try/except
        self._file = AtomicFile(self.path)
        self._tar = tarfile.TarFile(fileobj=self._file.handle, mode="w", format=tarfile.PAX_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        with naming(self.path):
            self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, ext: str, image: bytes, label: int, meta: dict) -> None:
        """One sample: the image bytes, the label (unless `NO_LABEL`) and the metadata."""
        self._add(f"{key}.{ext}", image)
        if label != NO_LABEL:
            self._add(f"{key}.cls", str(label).encode())
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())

    def close(self) -> int:
        with naming(self.path):  # a failure here: `abort` drops the file
            self._tar.close()
        return self._file.commit().stat().st_size

    def abort(self) -> None:
        """Drop the unfinished tar (an interrupted run leaves nothing under the final name)."""
        with contextlib.suppress(OSError):  # flushing it may fail as the write did: it goes
            self._tar.close()
        self._file.discard()
