"""Samples of one WebDataset tar, in tar order, with every problem reported instead of raised.

A sample is the run of consecutive members that share a key: the member path up to the first
dot of its file name (`a/b.seg.png` -> key `a/b`, extension `seg.png`), as WebDataset and
img2dataset write them. Directory and link members are structure, not data, and are passed
over; every other member belongs to a sample.

Nothing here raises for bad data. `read_tar` yields `RawSample`s and, when the tar cannot be
read to its end, one final `TarProblem`. A tar that stops without its end-of-archive block
(the writer died, or a copy was cut short) or with garbage where a header should be is a
problem too, and then the sample being read when it stopped is reported as incomplete
rather than guessed complete. Python's `tarfile` would otherwise end such a tar silently.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["RawSample", "TarProblem", "read_tar", "split_member_name"]

_BLOCK = 512


@dataclass
class RawSample:
    """One sample: its key and its members' bytes by lower-case extension (`"jpg"`, `"cls"`).

    `problem` is set (and the sample must be skipped with it as the reason) when the sample
    could not be read whole.
    """

    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class TarProblem:
    """The tar could not be read to its end; `reason` says why and where."""

    reason: str


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member path: the key runs up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _ended_cleanly(fileobj, offset: int) -> bool:
    """Whether a zero block (the end-of-archive marker) sits at `offset`."""
    fileobj.seek(offset)
    return fileobj.read(_BLOCK) == bytes(_BLOCK)


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of each file member; data None for a member cut short, then ReadError."""
    while (member := tar.next()) is not None:
        if not member.isfile():
            continue
        handle = tar.extractfile(member)
        try:
            data = handle.read() if handle is not None else b""
        except tarfile.ReadError:
            data = None
        if data is None or len(data) != member.size:
            yield member.name, None
            raise tarfile.ReadError("unexpected end of data")
        yield member.name, data


def _group(tar: tarfile.TarFile) -> Iterator[RawSample]:
    """Consecutive members with one key -> one sample; a cut sample is yielded, then re-raised."""
    seen: set[str] = set()
    current: RawSample | None = None
    try:
        for name, data in _members(tar):
            key, ext = split_member_name(name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = RawSample(key)
                if key in seen:
                    current.problem = "duplicate key: it already appeared in this tar"
                seen.add(key)
            if data is None:
                current.problem = "incomplete: the tar is cut inside this sample"
            else:
                current.files.setdefault(ext, data)
    except tarfile.ReadError:
        if current is not None:
            current.problem = current.problem or "incomplete: the tar is cut inside this sample"
            yield current
        raise
    if current is not None:
        yield current


def read_tar(url: str) -> Iterator[RawSample | TarProblem]:
    """Yield the samples of the tar at `url` (a path or fsspec URL) in tar order.

    A key that comes back after other keys (not consecutive) is yielded again as its own
    sample with `problem` set, since keys must be unique within a shard.
    """
    import fsspec

    pending: RawSample | None = None  # held back until we know the tar goes on past it
    problem: str | None = None
    try:
        with fsspec.open(url, "rb") as fileobj, tarfile.open(fileobj=fileobj, mode="r:") as tar:
            try:
                for sample in _group(tar):
                    if pending is not None:
                        yield pending
                    pending = sample
                if not _ended_cleanly(fileobj, tar.offset):
                    problem = "tar is truncated or corrupt: no end-of-archive block"
            except tarfile.ReadError as exc:
                problem = f"tar is truncated or corrupt ({exc})"
    except tarfile.ReadError as exc:
        problem = f"not a readable tar ({exc})"
    except OSError as exc:
        problem = f"cannot read the tar ({exc})"
    if pending is not None:
        if problem is not None and pending.problem is None:
            pending.problem = "incomplete: the tar ends inside or right after this sample"
        yield pending
    if problem is not None:
        yield TarProblem(problem)
