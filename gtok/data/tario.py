"""Samples of one WebDataset tar, in tar order, with every problem reported instead of raised.

A sample is the run of consecutive members that share a key: the member path up to the first
dot of its file name (`a/b.seg.png` -> key `a/b`, extension `seg.png`), as WebDataset and
img2dataset write them. Directory and link members are structure, not data, and are passed
over; every other member belongs to a sample. A sample with two members of one extension
(`a.jpg` twice, or `a.jpg` and `a.JPG`) is reported with the reason `duplicate member NAME`,
as WebDataset refuses it, rather than one of them being dropped unseen.

Nothing here raises for bad data. `read_tar` yields `RawSample`s and, when the tar cannot be
read to its end, one final `TarProblem`. A tar that stops without its end-of-archive block
(the writer died, or a copy was cut short) or with garbage where a header should be is a
problem too, and then the sample being read when it stopped is reported as incomplete
rather than guessed complete. Python's `tarfile` would otherwise end such a tar silently.

Memory stays bounded by `max_member_bytes`, whatever the headers claim: a member larger than
that (a sparse member that unpacks to gigabytes, a PAX `size` of 10^12) is not read: its
sample gets the reason and the reading goes on past it. No single read from the tar is
larger either, so a PAX or GNU long-name header that claims to be huge ends the tar as
corrupt instead of being read whole.

Names are bytes in a tar. `escape_name` turns them into text that is always valid UTF-8 (so
keys can be stored) and that `unescape_name` turns back into the same bytes: valid UTF-8
stays as it is, each byte that is not valid UTF-8 becomes `%XX` (upper-case hex), and a `%`
that is followed by two hex digits becomes `%25`. Only names holding such a `%` (`a%20b`)
get other keys than gtok versions before this escaping gave them.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TypedDict, cast

from gtok.data.magic import HEAD_BYTES, sniff

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "MAX_TEXT_BYTES",
    "NO_LABEL",
    "RawSample",
    "TarProblem",
    "escape_name",
    "member_name",
    "open_tar",
    "read_tar",
    "split_member_name",
    "unescape_name",
    "utf8_text",
]

NO_LABEL = -1  # the label of a sample without a `.cls` member
DEFAULT_MAX_MEMBER_BYTES = 256 << 20  # far above any real image, far below any machine's memory
MAX_TEXT_BYTES = 4096  # longest caption or metadata value (UTF-8 bytes) a sample may carry

_BLOCK = 512
_CUT = "incomplete: the tar is cut inside this sample"
_TO_ESCAPE = re.compile("%(?=[0-9A-Fa-f]{2})|[\udc80-\udcff]")
_ESCAPED = re.compile("%([0-9A-Fa-f]{2})")


class _Encoding(TypedDict):
    """How a member name's bytes become its str and back."""

    encoding: str
    errors: str


_ENCODING: _Encoding = {"encoding": "utf-8", "errors": "surrogateescape"}


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


def _escape_one(match: re.Match) -> str:
    char = match.group()
    return "%25" if char == "%" else f"%{ord(char) - 0xDC00:02X}"


def escape_name(raw: bytes) -> str:
    """A tar member name's bytes as valid UTF-8 text that `unescape_name` reverses (module doc)."""
    return _TO_ESCAPE.sub(_escape_one, raw.decode(**_ENCODING))


def _unescape_one(match: re.Match) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)


def unescape_name(text: str) -> bytes:
    """The bytes `escape_name` made `text` from."""
    return _ESCAPED.sub(_unescape_one, text).encode(**_ENCODING)


def utf8_text(text: str) -> str:
    """`text` (a path) with the bytes of a path that are not UTF-8 written `\\xff`, so that it
    can be stored; for showing, not reversible like `escape_name`."""
    return text.encode(**_ENCODING).decode("utf-8", "backslashreplace")


def member_name(member: tarfile.TarInfo) -> str:
    """The escaped name of a member of a tar opened with `open_tar`."""
    return escape_name(member.name.encode(**_ENCODING))


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member path: the key runs up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _over(limit: int) -> str:
    return f"over the limit of {limit} bytes per member (--max-member-bytes)"


class _BoundedReads:
    """A binary file whose reads are at most `limit` bytes (rounded up to whole tar blocks);
    a larger one raises `tarfile.ReadError` instead of allocating what a header claims."""

    def __init__(self, fileobj, limit: int) -> None:
        self.fileobj = fileobj
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > -(-self.limit // _BLOCK) * _BLOCK:
            raise tarfile.ReadError(f"a tar header claims {size} bytes, {_over(self.limit)}")
        return self.fileobj.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fileobj.seek(offset, whence)

    def tell(self) -> int:
        return self.fileobj.tell()

    def seekable(self) -> bool:
        return True


def open_tar(fileobj, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> tarfile.TarFile:
    """`tarfile` reading the seekable binary `fileobj` with reads of at most `max_member_bytes`
    and member names decoded so that `member_name` can escape them. A compressed file
    (gzip, bzip2, xz, zstd: `gtok.data.magic`) raises a `tarfile.ReadError` that says so."""
    start = fileobj.tell()
    try:
        bounded = cast(IO[bytes], _BoundedReads(fileobj, max_member_bytes))  # tarfile only reads
        return tarfile.open(fileobj=bounded, mode="r:", **_ENCODING)
    except tarfile.ReadError as exc:
        fileobj.seek(start)
        magic = sniff(fileobj.read(HEAD_BYTES))
        if magic is None or magic.decompress is None:
            raise
        raise tarfile.ReadError(
            f"it is {magic.name}-compressed; gtok reads uncompressed tars: decompress it with "
            f"{magic.decompress}"
        ) from exc


def _ended_cleanly(fileobj, offset: int) -> bool:
    """Whether a zero block (the end-of-archive marker) sits at `offset`."""
    fileobj.seek(offset)
    return fileobj.read(_BLOCK) == bytes(_BLOCK)


def _members(tar: tarfile.TarFile, limit: int) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(escaped name, data, problem) of each file member. A member over `limit` bytes is not
    read: data None and the reason. A member cut short: data None, `_CUT`, then ReadError."""
    while (member := tar.next()) is not None:
        if not member.isfile():
            continue
        name = member_name(member)
        if member.size > limit:
            yield name, None, f"member {name} is {member.size} bytes, {_over(limit)}"
            continue
        handle = tar.extractfile(member)
        data: bytes | None
        try:
            data = handle.read() if handle is not None else b""
        except tarfile.ReadError:
            data = None
        if data is None or len(data) != member.size:
            yield name, None, _CUT
            raise tarfile.ReadError("unexpected end of data")
        yield name, data, None


def _group(tar: tarfile.TarFile, limit: int) -> Iterator[RawSample]:
    """Consecutive members with one key -> one sample; a cut sample is yielded, then re-raised."""
    seen: set[str] = set()
    current: RawSample | None = None
    try:
        for name, data, problem in _members(tar, limit):
            key, ext = split_member_name(name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = RawSample(key)
                if key in seen:
                    current.problem = "duplicate key: it already appeared in this tar"
                seen.add(key)
            if problem is not None:
                current.problem = problem
            elif ext in current.files:
                twice = f"duplicate member {name}: the sample already has a .{ext} member"
                current.problem = current.problem or twice
            else:
                assert data is not None  # _members gives no data only with a problem
                current.files[ext] = data
    except tarfile.ReadError:
        if current is not None:
            current.problem = current.problem or _CUT
            yield current
        raise
    if current is not None:
        yield current


def read_tar(
    url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[RawSample | TarProblem]:
    """Yield the samples of the tar at `url` (a path or fsspec URL) in tar order.

    A key that comes back after other keys (not consecutive) is yielded again as its own
    sample with `problem` set, since keys must be unique within a shard. A sample with a
    member over `max_member_bytes` has `problem` set and that member is never read.
    """
    import fsspec

    pending: RawSample | None = None  # held back until we know the tar goes on past it
    problem: str | None = None
    try:
        with fsspec.open(url, "rb") as fileobj, open_tar(fileobj, max_member_bytes) as tar:
            try:
                for sample in _group(tar, max_member_bytes):
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
