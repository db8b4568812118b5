"""Sample keys <-> file paths under an output folder, reversibly and safely.

A store key is "<shard file name>/<sample key>" and the sample key may itself hold `/`
(WebDataset keys are member paths). `gtok decode` writes the reconstruction of key K to
`OUT_DIR/<key_path(K)>.png`: every `/` of the key becomes a sub-folder, so
`shard-0001.tar/000042` -> `OUT_DIR/shard-0001.tar/000042.png`, and `gtok eval
--reconstructed OUT_DIR` maps the files back with `path_key`.

Each component is kept as is except for what a file system cannot hold or would misread:
`%`, `\\`, `:`, `*`, `?`, `"`, `<`, `>`, `|` and control characters are written as `%XX`
(ASCII hex, as in URLs); a component "." or ".." is written `%2E` / `%2E%2E`, an empty one
(from `a//b`) as a lone `%`; and a last component ending in `.gaussians` has that dot written
`%2E`, because `<key>.gaussians.png` is the Gaussians picture of key `<key>`. Keys never
leave `OUT_DIR` and the mapping is one-to-one.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote

__all__ = ["GAUSSIANS_SUFFIX", "MAX_NAME_BYTES", "RECON_SUFFIX", "key_path", "path_key"]

RECON_SUFFIX = ".png"
GAUSSIANS_SUFFIX = ".gaussians.png"
MAX_NAME_BYTES = 255  # longest file name most file systems take
_EMPTY = "%"
_UNSAFE = re.compile(r'[%\\:*?"<>|\x00-\x1f\x7f]')


def _escape(component: str) -> str:
    if component == "":
        return _EMPTY
    if component in (".", ".."):
        return "%2E" * len(component)
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", component)


def key_path(key: str) -> PurePosixPath:
    """The relative path (without suffix) that stands for `key`; ValueError when a component
    would be longer than a file name can be."""
    parts = [_escape(c) for c in key.split("/")]
    if parts[-1].endswith(".gaussians"):
        parts[-1] = parts[-1][: -len(".gaussians")] + "%2Egaussians"
    longest = max(parts, key=lambda p: len(p.encode()))
    if len(longest.encode()) + len(GAUSSIANS_SUFFIX) > MAX_NAME_BYTES:
        raise ValueError(
            f"key {key!r} has a part too long for a file name ({len(longest.encode())} bytes)"
        )
    return PurePosixPath(*parts)


def path_key(relative: PurePosixPath | str) -> str:
    """The key of a relative path made by `key_path` (suffix already removed)."""
    parts = PurePosixPath(relative).parts
    return "/".join("" if p == _EMPTY else unquote(p) for p in parts)
