"""Which files a folder of images holds, in a fixed order, with their keys and labels.

- Every regular file at any depth is an entry, in the order of its path's components
  (`sorted` on the tuple of folder and file names), so the same folder always packs the same
  way. Whether it is an image is decided later, when it is read.
- Names starting with `.` (hidden files and folders such as `.DS_Store` or `.git`) are not
  walked; they are counted and listed in the summary, not packed.
- Symbolic links to files are read as files; links to folders are not followed, and they,
  broken links and other non-regular files become entries skipped with the reason.
- A folder to leave out (the output folder, when it lies inside the input) is not walked.
- With `labels`, the class of a file is its first-level sub-folder; class ids are the
  sorted names of the (non-hidden) first-level sub-folders numbered from 0, as torchvision's
  `ImageFolder` numbers them. A file directly in the folder then has no class and is an
  entry skipped with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gtok.data.samples import NO_LABEL
from gtok.pack.keys import KeyMaker

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


def _walk(root: Path, relative: tuple[str, ...], skip: Path | None, out: list, hidden: list):
    """Append (relative parts, problem or None) of every entry under root/relative."""
    folder = root.joinpath(*relative)
    with os.scandir(folder) as listing:
        children = sorted(listing, key=lambda d: d.name)
    for child in children:
        parts = (*relative, child.name)
        if child.name.startswith("."):
            hidden.append("/".join(parts))
        elif child.is_symlink() and child.is_dir():
            out.append((parts, "symbolic link to a folder: not followed"))
        elif child.is_dir(follow_symlinks=False):
            if skip is None or Path(child.path).resolve() != skip:
                _walk(root, parts, skip, out, hidden)
        elif child.is_file():
            out.append((parts, None))
        elif child.is_symlink():
            out.append((parts, "broken symbolic link"))
        else:
            out.append((parts, "not a regular file (a device, socket or pipe)"))


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
