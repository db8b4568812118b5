"""Files a command reads because an option names them (`--config FILE`, `--keys @FILE`)."""

from __future__ import annotations

from pathlib import Path

import typer

from gtok.safeload import Unreadable, read_limited

__all__ = ["read_text_file"]


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
