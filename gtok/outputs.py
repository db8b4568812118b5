"""Writing output files: whole or not at all, never through a planted link, and failures that
name the file they hit.

Every file gtok writes goes through `AtomicFile` (or `write_atomically`, its one-call form):
the bytes go to a new temporary file in the target's folder, which is then renamed over the
target. The temporary file is created by `create_temporary` under a random name
(`.gtok-<16 hex digits>.tmp`) with `O_CREAT | O_EXCL | O_NOFOLLOW`, so it is never a file or
symbolic link that was there before: a link planted in the output folder is never written
through. A failed write removes the temporary file; a writer killed with SIGKILL leaves it,
and `remove_temporaries` deletes such leftovers where gtok knows that no other writer runs.
With `durable`, the data and the rename are fsynced (training states survive a power cut).

A full disk, a read-only or write-protected folder or a file size limit are not bugs but the
state of the user's machine: the `OSError` of such a write names the target file (not the
temporary one; `naming` does this for writes outside `AtomicFile`), and
`describe_write_failure` turns it into the one sentence the CLI prints; any other exception
stays a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = [
    "WRITE_FAILURES",
    "AtomicFile",
    "create_temporary",
    "describe_write_failure",
    "is_temporary",
    "naming",
    "remove_temporaries",
    "write_atomically",
]

_NO_SPACE = "free space or choose another output"
_NOT_WRITABLE = "choose an output folder you can write to"
# errno of a write the machine refused -> what the user can do about it
WRITE_FAILURES = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: _NO_SPACE,
    errno.EFBIG: "free space, raise the file size limit (ulimit -f) or choose another output",
    errno.EROFS: _NOT_WRITABLE,
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
}

_TEMPORARY = re.compile(r"\.gtok-[0-9a-f]{16}\.tmp")
# a new file only: fails on any existing name, a symbolic link (dangling or not) included
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def describe_write_failure(exc: BaseException) -> str | None:
    """One sentence for an `OSError` of `WRITE_FAILURES` that names its file (else None), e.g.
    "cannot write /x/y: No space left on device; free space or choose another output."."""
    if not isinstance(exc, OSError) or exc.filename is None or exc.errno is None:
        return None
    advice = WRITE_FAILURES.get(exc.errno)
    if advice is None:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    return f"cannot write {os.fsdecode(exc.filename)}: {reason}; {advice}."


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an `OSError` of `WRITE_FAILURES` raised inside without a file name (a failed
    `write()` names none) the name `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in WRITE_FAILURES:
            exc.filename = os.fspath(path)
        raise


def is_temporary(name: str) -> bool:
    """Whether the file name `name` is one `create_temporary` makes."""
    return _TEMPORARY.fullmatch(name) is not None


def create_temporary(path: str | os.PathLike) -> tuple[Path, int]:
    """A new, empty file in the folder of `path`, to be renamed to `path` once written: its
    path (a random `is_temporary` name) and a write-only descriptor of it, which the caller
    closes. Created exclusively (`O_EXCL | O_NOFOLLOW`): a name that exists, as a file or a
    link, is never opened; another random name is tried instead. Permissions as a plain
    `open(..., "w")` gives (0o666 less the umask). An `OSError` names `path`."""
    folder = Path(path).parent
    while True:
        temporary = folder / f".gtok-{secrets.token_hex(8)}.tmp"
        try:
            return temporary, os.open(temporary, _EXCLUSIVE, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            exc.filename = os.fspath(path)
            raise


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file that replaces `path` whole or not at all: `handle` writes to a new temporary
    file beside it (`create_temporary`); `commit` renames that over `path`, `discard` deletes
    it. With `durable`, `commit` fsyncs the data and then the folder, so the new file survives
    a power cut once it returns. Every `OSError` names `path`.

    As a context manager it gives `handle` and commits when the block ends, or discards when
    the block raises (an `OSError` of the block then names `path` too)::

        with AtomicFile(path) as handle:
            handle.write(data)
    """

    def __init__(self, path: str | os.PathLike, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        with naming(self.path):
            self.temporary, fd = create_temporary(self.path)
        self.handle: BinaryIO = os.fdopen(fd, "wb")

    def _name_target(self, exc: OSError) -> None:
        """Make `exc` name `path` where it names the temporary file or, a failed `write()`
        of `WRITE_FAILURES`, no file."""
        named = exc.filename is not None and os.fsdecode(exc.filename) == str(self.temporary)
        if named or (exc.filename is None and exc.errno in WRITE_FAILURES):
            exc.filename, exc.filename2 = os.fspath(self.path), None

    def commit(self) -> Path:
        """Finish the file and rename it to `path` (the temporary file is gone either way)."""
        try:
            self.handle.flush()
            if self.durable:
                os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temporary, self.path)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                self._name_target(exc)
            raise
        if self.durable:
            _fsync_folder(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Drop the temporary file; `path` stays as it was."""
        with contextlib.suppress(OSError):  # closing flushes, which may fail as a write did
            self.handle.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> BinaryIO:
        return self.handle

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError):
            self._name_target(exc)


def write_atomically(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    """Create or replace `path` with `data` (`AtomicFile`); returns `path`."""
    with AtomicFile(path, durable=durable) as handle:
        handle.write(data)
    return Path(path)


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writers left directly in `folder` (regular files
    with an `is_temporary` name; links are left alone); returns them. Call it only where no
    other writer can be at work in `folder`, since its temporary files look the same."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stale = [
        Path(entry.path)
        for entry in entries
        if is_temporary(entry.name) and entry.is_file(follow_symlinks=False)
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
