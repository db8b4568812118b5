"""Which files a folder of images holds, in a fixed order, with their keys and labels: what
`gtok pack` packs, and what `gtok encode` reads from an image folder (`gtok.data.folderio`).

- Every regular file at any depth is an entry, in the order of its path's components
  (`sorted` on the tuple of folder and file names), so the same folder always packs the same
  way. Whether it is an image is decided later, when it is read.
- Names starting with `.` (hidden files and folders such as `.DS_Store` or `.git`) are not
  walked; they are counted and listed in the summary, not packed.
- Symbolic links to files are read as files; links to folders are not followed, and they,
  broken links, link loops (`a -> b -> a`, `a -> a`), sub-folders that cannot be listed and
  other non-regular files become entries skipped with the reason.
- A folder to leave out (the output folder, when it lies inside the input) is not walked.
- With `labels`, the class of a file is its first-level sub-folder; class ids are the
  sorted names of the (non-hidden) first-level sub-folders numbered from 0, as torchvision's
  `ImageFolder` numbers them. A file directly in the folder then has no class and is an
  entry skipped with that reason.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gtok.data.keys import KeyMaker
from gtok.data.tario import NO_LABEL

__all__ = ["NO_CLASS", "Entry", "Scan", "scan_folder"]

NO_CLASS = "not in a class sub-folder (with --labels, a file's first-level folder is its class)"


@dataclass(frozen=True)
class Entry:
    """One file of the folder: its relative POSIX path, key and label (`NO_LABEL` without
    labels), and `problem`, the reason to skip it, when that is known without reading it."""

    path: str
    key: str
    label: int = NO_LABEL
    problem: str | None = None


@dataclass
class Scan:
    """The entries of a folder in pack order, its classes (name -> id) and what was left out."""

    root: Path
    entries: list[Entry]
    classes: dict[str, int] | None
    hidden: list[str] = field(default_factory=list)  # relative paths not walked

    def fingerprint(self) -> str:
        """sha256 over every entry's path, key and label: equal for equal scans."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(json.dumps([e.path, e.key, e.label]).encode() + b"\n")
        return digest.hexdigest()


_FOLDER, _FILE = "folder", "file"


def _kind(child: os.DirEntry) -> str:
    """`_FOLDER` (walk it), `_FILE` (an entry to read) or the reason to skip the entry."""
    try:
        if child.is_symlink() and child.is_dir():
            return "symbolic link to a folder: not followed"
        if child.is_dir(follow_symlinks=False):
            return _FOLDER
        if child.is_file():
            return _FILE
    except OSError as exc:  # ELOOP: a link loop; anything else the entry's own problem
        if exc.errno == errno.ELOOP:
            return "symbolic link loop: not followed"
        return f"unreadable entry ({exc.strerror or exc})"
    if child.is_symlink():
        return "broken symbolic link"
    return "not a regular file (a device, socket or pipe)"


def _walk(root: Path, relative: tuple[str, ...], skip: Path | None, out: list, hidden: list):
    """Append (relative parts, problem or None) of every entry under root/relative."""
    with os.scandir(root.joinpath(*relative)) as listing:
        children = sorted(listing, key=lambda d: d.name)
    for child in children:
        parts = (*relative, child.name)
        if child.name.startswith("."):
            hidden.append("/".join(parts))
            continue
        kind = _kind(child)
        if kind == _FOLDER:
            if skip is None or Path(child.path).resolve() != skip:
                _walk_folder(root, parts, skip, out, hidden)
        else:
            out.append((parts, None if kind == _FILE else kind))


def _walk_folder(root: Path, parts: tuple[str, ...], skip: Path | None, out: list, hidden: list):
    """`_walk` a sub-folder; one that cannot be listed becomes an entry skipped with why."""
    try:
        _walk(root, parts, skip, out, hidden)
    except OSError as exc:
        out.append((parts, f"unreadable folder ({exc.strerror or exc})"))


def scan_folder(root: str | os.PathLike, *, labels: bool = False, skip: Path | None = None) -> Scan:
    """Every entry of the folder `root` in pack order (see the module doc); `skip`: a folder
    (resolved path) not to walk."""
    root = Path(root)
    found: list[tuple[tuple[str, ...], str | None]] = []
    hidden: list[str] = []
    _walk(root, (), skip, found, hidden)
    found.sort(key=lambda item: item[0])
    classes = None
    if labels:
        names = sorted(
            d.name
            for d in os.scandir(root)
            if d.is_dir(follow_symlinks=False)
            and not d.name.startswith(".")
            and (skip is None or Path(d.path).resolve() != skip)
        )
        classes = {name: i for i, name in enumerate(names)}
    keys = KeyMaker()
    entries = []
    for parts, problem in found:
        path = "/".join(parts)
        label = NO_LABEL
        if classes is not None:
            if len(parts) == 1:
                problem = problem or NO_CLASS
            else:
                label = classes[parts[0]]
        entries.append(Entry(path, keys.key(path), label, problem))
    return Scan(root, entries, classes, hidden)
