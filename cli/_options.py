"""Checks of option values that several commands share, made before any work starts, and the
one-line ending of an interrupted resumable command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from gtok.console import console
from gtok.safeload import Unreadable, read_limited

__all__ = ["INTERRUPTED", "read_text_file", "resumable"]

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells use


def read_text_file(path: Path, what: str, limit: int) -> str:
    """The UTF-8 text of `path`, of at most `limit` bytes; an unreadable, larger or binary
    file is a usage error naming `what`."""
    try:
        data = read_limited(path, limit)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read the {what} {path}: {exc.strerror}.") from exc
    except Unreadable as exc:
        raise typer.BadParameter(f"the {what} {exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"the {what} {path} is not UTF-8 text (byte {exc.start}); give a text file."
        ) from exc


@contextmanager
def resumable() -> Iterator[None]:
    """Ctrl-C inside ends the command with one line saying how to resume, exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume.", soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
