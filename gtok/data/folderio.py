"""A folder of image files as one input shard: its samples as `RawSample`s like a tar's, with
the keys, order and skip rules of `gtok pack` (`gtok.data.scan`), so that packing is optional.

Every file the scan lists is a sample, in the scan's order and with its key: an entry the
scan already rejects (a broken link, a link to a folder, ...) gets the scan's reason; a file
is read whole, at most `max_member_bytes` of it (`read_image_file`: an empty, unreadable or
larger file gets the reason `gtok pack` gives), and its bytes go under `png`, `webp` or `jpg`
by their first bytes (`gtok.data.images.member_ext`), so the decoder then accepts or rejects
it as it does a packed file. Each sample also has a `json` member `{"path": <relative path>}`
(`--metadata-fields path`). Without `gtok pack --labels` there are no class labels.

The folder counts as one shard (for resume, fingerprints, `gtok verify`): its fingerprint
(`folder_fingerprint`) is the total size of its files and a hash of their sorted relative
paths, sizes and modification times, so adding, removing, replacing or touching a file
makes it another input.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from gtok.data.images import member_ext
from gtok.data.scan import scan_folder
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES, RawSample, TarProblem
from gtok.safeload import Unreadable, read_limited

__all__ = ["folder_fingerprint", "read_folder", "read_image_file"]


def read_image_file(path: str | os.PathLike, limit: int) -> tuple[bytes | None, str | None]:
    """(the bytes of the file at `path`, None), or (None, why it is skipped): unreadable,
    larger than `limit` bytes, or empty."""
    try:
        data = read_limited(path, limit)
    except OSError as exc:
        return None, f"unreadable file ({exc.strerror or exc})"
    except Unreadable as exc:
        return None, f"file {exc.reason}"
    if not data:
        return None, "empty file (0 bytes)"
    return data, None


def read_folder(
    root: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[RawSample | TarProblem]:
    """Yield the samples of the image folder `root` in `gtok pack` order (module doc); a
    `TarProblem` when the folder cannot be listed."""
    try:
        scan = scan_folder(root)
    except OSError as exc:
        yield TarProblem(f"cannot list the folder ({exc.strerror or exc})")
        return
    for entry in scan.entries:
        sample = RawSample(entry.key, problem=entry.problem)
        if entry.problem is None:
            data, sample.problem = read_image_file(Path(root, entry.path), max_member_bytes)
            if data is not None:
                sample.files[member_ext(data)] = data
                sample.files["json"] = json.dumps({"path": entry.path}).encode()
        yield sample


def folder_fingerprint(root: str) -> tuple[int, str]:
    """(total bytes, sha256 hex digest) of the image folder `root` (module doc)."""
    digest = hashlib.sha256()
    total = 0
    for entry in scan_folder(root).entries:
        try:
            stat = os.stat(Path(root, entry.path))
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # a broken link: its name still counts
            size, mtime = 0, 0
        total += size
        digest.update(json.dumps([entry.path, size, mtime]).encode() + b"\n")
    return total, digest.hexdigest()
