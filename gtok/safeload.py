"""Bounded reads of the files a user or a dataset hands gtok: `--config` and `--keys @FILE`,
model `config.json`, `pack.json` and pack stats, img2dataset `_stats.json`, lock files,
`%hashed/keys.json`, `.json` sidecars of samples, a training run's records, the image files
given to `gtok pack`.

- A file is read up to a limit in bytes, never further: `/dev/zero`, a FIFO or a
  multi-gigabyte file gets one sentence naming it and the limit, not an exhausted memory.
- JSON and TOML may nest arrays, objects and tables at most `MAX_DEPTH` deep. Python's `json`
  and `tomllib` parse recursively, so a document nested 10^5 deep raises `RecursionError`;
  that, and any parsed document deeper than `MAX_DEPTH` (the same limit whatever the
  caller's stack), is refused with one sentence. A TOML key of n dotted parts costs
  `tomllib` time and memory in n^2 (10^4 parts: 3 s and 400 MB; a 1 MiB file holds
  5 * 10^5), so the parts of TOML keys are counted before parsing.

Every refusal is an `Unreadable` (a `GtokError`); a missing or unreadable file is one too
when read with `load_json`, while `read_limited` leaves `OSError`s to its caller.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from typing import Any, BinaryIO

from gtok.errors import GtokError

__all__ = [
    "LIST_BYTES",
    "LOCK_BYTES",
    "MAX_DEPTH",
    "SETTINGS_BYTES",
    "TooDeep",
    "Unreadable",
    "load_json",
    "parse_json",
    "parse_toml",
    "read_limited",
]

SETTINGS_BYTES = 1 << 20  # --config, model config.json, pack.json, stats files, train.json
LIST_BYTES = 64 << 20  # --keys @FILE, %hashed/keys.json, a pack shard's list of skipped files
LOCK_BYTES = 64 << 10  # a lock file holds a record of about 200 bytes
MAX_DEPTH = 64  # nesting of arrays/objects/tables; gtok's own files nest at most 4 deep


class Unreadable(GtokError):
    """A file gtok will not read: too large, not UTF-8, not valid JSON or TOML, nested too
    deep, or not there. `reason` is the phrase after the file's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} {reason}.")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple:  # raised in a worker process, it arrives whole
        return type(self), (self.name, self.reason)


def _size(limit: int) -> str:
    """`limit` bytes as the largest whole binary unit (64 KiB, 1 MiB)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if limit >= 1 << shift and limit % (1 << shift) == 0:
            return f"{limit >> shift} {unit}"
    return f"{limit} bytes"


def read_limited(source: str | os.PathLike | BinaryIO, limit: int, name: str = "") -> bytes:
    """The bytes of `source` (a path, or a binary file object read from where it stands),
    at most `limit` of them: a longer source is an `Unreadable` naming `name` (default: the
    path). Reads `limit + 1` bytes at most, so endless sources end too. `OSError`s (missing
    file, permission) propagate."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as handle:
            return read_limited(handle, limit, name or str(source))
    data = source.read(limit + 1)
    if len(data) > limit:
        raise Unreadable(name, f"is larger than {_size(limit)}, the most gtok reads of it")
    return data


def _decode_text(data: bytes, name: str) -> str:
    """`data` as UTF-8 text, or an `Unreadable` naming `name` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(name, f"is not UTF-8 text (byte {exc.start})") from exc


def _too_deep(document: Any) -> bool:
    """Whether `document` nests lists/dicts more than `MAX_DEPTH` deep (without recursion)."""
    pending = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth == MAX_DEPTH:
                return True
            pending.extend((item, depth + 1) for item in value)
    return False


class TooDeep(Unreadable):
    """A JSON or TOML document nested more than `MAX_DEPTH` deep."""


def _too_deep_error(name: str) -> TooDeep:
    return TooDeep(name, f"nests arrays or tables more than {MAX_DEPTH} deep")


def parse_json(data: bytes | str, name: str) -> Any:
    """The JSON document `data` (UTF-8 bytes or text) from `name`, nested at most
    `MAX_DEPTH` deep; anything else is an `Unreadable` naming `name`."""
    text = _decode_text(data, name) if isinstance(data, bytes) else data
    try:
        document = json.loads(text)
    except RecursionError:
        raise _too_deep_error(name) from None
    except ValueError as exc:
        raise Unreadable(name, f"is not valid JSON ({exc})") from exc
    if _too_deep(document):
        raise _too_deep_error(name)
    return document


# TOML's four kinds of strings (a multi-line one may end with up to two more quotes of its
# own) and its comments: what `_dotted_parts` skips
_TOML_STRINGS_AND_COMMENTS = re.compile(
    r'"""(?:\\.|[^"\\]|"(?!""))*"""(?:""|")?'
    r"|'''(?:[^']|'(?!''))*'''(?:''|')?"
    r'|"(?:\\.|[^"\\\n])*"'
    r"|'[^'\n]*'"
    r"|#[^\n]*",
    re.DOTALL,
)
# what ends a key: its `=`, a table header's brackets, an inline table's braces and commas
_TOML_KEY_ENDS = re.compile(r"[=\n,{}\[\]]")


def _dotted_parts(text: str) -> int:
    """The most parts of any dotted key in the TOML `text` (an upper bound: a float or a
    time between two key ends counts as a key of two parts)."""
    code = _TOML_STRINGS_AND_COMMENTS.sub("s", text)
    return 1 + max(piece.count(".") for piece in _TOML_KEY_ENDS.split(code))


def parse_toml(text: str, name: str) -> dict[str, Any]:
    """The TOML document `text` from `name`, nested at most `MAX_DEPTH` deep; anything else
    is an `Unreadable` naming `name`."""
    if _dotted_parts(text) > MAX_DEPTH:
        raise _too_deep_error(name)
    try:
        document = tomllib.loads(text)
    except RecursionError:
        raise _too_deep_error(name) from None
    except tomllib.TOMLDecodeError as exc:
        raise Unreadable(name, f"is not valid TOML ({exc})") from exc
    if _too_deep(document):
        raise _too_deep_error(name)
    return document


def load_json(path: str | os.PathLike, limit: int) -> Any:
    """The JSON document in the file at `path`, of at most `limit` bytes (`parse_json`);
    a missing or unreadable file is an `Unreadable` too."""
    try:
        data = read_limited(path, limit)
    except OSError as exc:
        raise Unreadable(str(path), f"cannot be read ({exc.strerror or exc})") from exc
    return parse_json(data, str(path))
