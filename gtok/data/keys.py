"""Sample keys for packed images: derived from relative paths, path-safe and unique.

A file's key is its relative path without the last extension, with every character of every
path component other than ASCII letters, digits, `_` and `-` written `_` (so no dots: a
WebDataset reader takes a member's key up to the first dot of its file name), each
component cut to `MAX_COMPONENT` characters. `cats/Kitty 01.final.jpg` -> `cats/Kitty_01_final`.
Keys keep the folders as `/`, which `gtok decode` turns back into sub-folders.

Two files whose keys would be equal, also when compared ignoring case (a case-insensitive
file system would mix their reconstructions up), get `_2`, `_3`, ... appended in file
order: `a.jpg` -> `a`, `a.png` -> `a_2`.
"""

from __future__ import annotations

import re

__all__ = ["MAX_COMPONENT", "KeyMaker", "base_key"]

MAX_COMPONENT = 200  # characters per key component (file names hold 255 bytes)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _component(text: str) -> str:
    return _UNSAFE.sub("_", text)[:MAX_COMPONENT] or "_"


def base_key(relative: str) -> str:
    """The key of the relative POSIX path `relative` before making it unique."""
    *folders, name = relative.split("/")
    stem, dot, _ = name.rpartition(".")
    stem = stem if dot and stem else name  # ".jpg" or "README" keep their whole name
    return "/".join(_component(part) for part in (*folders, stem))


class KeyMaker:
    """Hands out unique keys for relative paths, given in file order."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def key(self, relative: str) -> str:
        """A key for `relative` that no earlier call returned (see the module doc)."""
        base = candidate = base_key(relative)
        n = 1
        while candidate.lower() in self._taken:
            n += 1
            candidate = f"{base}_{n}"
        self._taken.add(candidate.lower())
        return candidate
