"""Sample keys <-> file paths under an output folder, reversibly and safely.

A store key is "<shard file name>/<sample key>" and the sample key may itself hold `/`
(WebDataset keys are member paths). `gtok decode` writes the reconstruction of key K to
`OUT_DIR/<key_path(K)>.png`: every `/` of the key becomes a sub-folder, so
`shard-0001.tar/000042` -> `OUT_DIR/shard-0001.tar/000042.png`, and `gtok eval
--reconstructed OUT_DIR` maps the files back with `path_key`.

Each component is kept as is except for what a file system cannot hold or would misread:
`%`, `\\`, `:`, `*`, `?`, `"`, `<`, `>`, `|` and control characters are written as `%XX`
(ASCII hex, as in URLs); a leading `.` (so "." and "..", and hidden names) is written `%2E`
and an empty component (from `a//b`) a lone `%`. A folder component ending in `.png` or
`.cls` (any case) has its last dot written `%2E`, so that no folder ever has the name of a
file (key `a` is `a.png`, key `a.png/b` is `a%2Epng/b.png`); and a last component ending in
`.gaussians` has that dot written `%2E`, because `<key>.gaussians.png` is the Gaussians
picture of key `<key>`. Keys never leave `OUT_DIR` and the mapping is one-to-one.

A path that a file system may refuse (a component over `MAX_NAME_BYTES` bytes with its
suffix, or over `MAX_PATH_BYTES` bytes in all) is replaced by `hashed_path(key)`,
`%hashed/<sha256 of the key>`, which the writer records in `%hashed/keys.json`
(`read_index`): no key maps into `%hashed`, as `%` followed by `h` is never an escape.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from gtok.errors import GtokError
from gtok.safeload import LIST_BYTES, Unreadable, load_json

__all__ = [
    "GAUSSIANS_SUFFIX",
    "HASHED_DIR",
    "INDEX_FILE",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "RECON_SUFFIX",
    "fits",
    "hashed_path",
    "index_document",
    "key_path",
    "path_key",
    "read_index",
]

RECON_SUFFIX = ".png"
GAUSSIANS_SUFFIX = ".gaussians.png"
MAX_NAME_BYTES = 255  # longest file name most file systems take
MAX_PATH_BYTES = 1024  # longest relative path written (Linux takes 4096 with the folder's)
HASHED_DIR = "%hashed"
INDEX_FILE = "keys.json"  # in HASHED_DIR: key -> hashed path
INDEX_FORMAT = "gtok-decode-keys"
_EMPTY = "%"
_DOT = "%2E"
_UNSAFE = re.compile(r'[%\\:*?"<>|\x00-\x1f\x7f]')
_FILE_ENDINGS = (".png", ".cls")  # what file names (and decode tar members) end with
_HASHED = re.compile(re.escape(HASHED_DIR) + "/[0-9a-f]{64}")


def _escape(component: str) -> str:
    if component == "":
        return _EMPTY
    escaped = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", component)
    return _DOT + escaped[1:] if escaped.startswith(".") else escaped


def _escape_last_dot(component: str) -> str:
    dot = component.rindex(".")
    return component[:dot] + _DOT + component[dot + 1 :]


def key_path(key: str) -> PurePosixPath:
    """The relative path (without suffix) that stands for `key` (see the module doc)."""
    parts = [_escape(c) for c in key.split("/")]
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(_FILE_ENDINGS):
            parts[i] = _escape_last_dot(part)
    if parts[-1].lower().endswith(".gaussians"):
        parts[-1] = _escape_last_dot(parts[-1])
    return PurePosixPath(*parts)


def fits(path: PurePosixPath) -> bool:
    """Whether `path` (from `key_path`) with the longest suffix is safe to create: every
    component at most `MAX_NAME_BYTES` bytes (the writer's temporary names are short and
    fixed in length, `gtok.outputs.create_temporary`) and the whole at most
    `MAX_PATH_BYTES`; False for text that is not UTF-8 (a lone surrogate)."""
    names = [*path.parts[:-1], f"{path.name}{GAUSSIANS_SUFFIX}"]
    try:
        return (
            all(len(n.encode()) <= MAX_NAME_BYTES for n in names)
            and len(str(path).encode()) + len(GAUSSIANS_SUFFIX) <= MAX_PATH_BYTES
        )
    except UnicodeEncodeError:
        return False


def hashed_path(key: str) -> PurePosixPath:
    """`%hashed/<sha256 hex of the key's UTF-8>`: where a key whose path does not fit goes."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return PurePosixPath(HASHED_DIR, digest)


def path_key(relative: PurePosixPath | str) -> str:
    """The key of a relative path made by `key_path` (suffix already removed)."""
    parts = PurePosixPath(relative).parts
    return "/".join("" if p == _EMPTY else unquote(p) for p in parts)


def index_document(hashed: dict[str, str]) -> dict:
    """The `%hashed/keys.json` document of `hashed` (key -> relative path without suffix)."""
    return {"format": INDEX_FORMAT, "keys": hashed}


def read_index(folder: str | os.PathLike) -> dict[str, str]:
    """key -> relative path (without suffix) of the hashed keys recorded in `folder`."""
    path = Path(folder) / HASHED_DIR / INDEX_FILE
    if not path.exists():
        return {}
    try:
        document = load_json(path, LIST_BYTES)
        keys = document["keys"] if document.get("format") == INDEX_FORMAT else None
    except Unreadable as exc:
        raise GtokError(f"{path} {exc.reason}; decode into a new folder.") from exc
    except (TypeError, KeyError, AttributeError) as exc:
        raise GtokError(f"cannot read {path} ({exc}); decode into a new folder.") from exc
    if not isinstance(keys, dict) or not all(
        isinstance(v, str) and _HASHED.fullmatch(v) for v in keys.values()
    ):
        raise GtokError(f"{path} is not a gtok decode key index; decode into a new folder.")
    return keys
