"""Writing output files: whole or not at all, and failures that name the file they hit.

A full disk, a read-only or write-protected folder or a file size limit are not bugs but the
state of the user's machine. Every gtok command that writes files writes them through
`write_atomically` (temporary name, rename; the temporary file removed when the write
fails) or inside `naming(path)`, so that such an `OSError` carries the path it concerns.
`describe_write_failure` turns it into the one sentence the CLI prints; any other exception
stays a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WRITE_FAILURES", "describe_write_failure", "naming", "write_atomically"]

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


def describe_write_failure(exc: BaseException) -> str | None:
    """One sentence for an `OSError` of `WRITE_FAILURES` that names its file (else None), e.g.
    "cannot write /x/y: No space left on device; free space or choose another output."."""
    if not isinstance(exc, OSError) or exc.filename is None:
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


def write_atomically(path: str | os.PathLike, data: bytes, tmp: str | os.PathLike) -> Path:
    """Create or replace `path` with `data`: written to `tmp` (same folder), then renamed.

    On failure `tmp` is removed and the `OSError` names `path` (see `naming`).
    """
    path, tmp = Path(path), Path(tmp)
    with naming(path):
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path
