"""The exception types for mistakes a user can fix (bad path, wrong model, bad argument value).

The CLI prints their message as one red sentence and exits 1; library callers catch them like
any other exception. Programming errors stay ordinary exceptions (ValueError, TypeError, ...).

`version_refusal` words the refusal of a file or folder of another format version (a token
store, a model directory, a pack folder) the same way for all of them.
"""

from gtok._version import __version__

__all__ = ["UPGRADE", "ArgumentError", "GtokError", "version_refusal"]

UPGRADE = "upgrade gtok (pip install -U gtok)"  # the next step for a format newer than ours


class GtokError(Exception):
    """A user-facing error: the message is one sentence that says what to do."""


class ArgumentError(GtokError):
    """A bad argument value, named in the message as Python calls it (`batch_size must be at
    least 1, got 0.`; a value to pass as `device='cpu'`). `arguments` lists the names the
    message uses, so that a front end can name them its own way: the CLI says `--batch-size`
    and `--device cpu` (`gtok.cli._flags`)."""

    def __init__(self, message: str, *arguments: str) -> None:
        super().__init__(message)
        self.arguments = arguments


def version_refusal(
    what: str, version: object, reads: int, writer: object, *, newer: str, other: str
) -> str:
    """The sentence refusing `what`, whose recorded format version `version` (any JSON value)
    is not `reads`, the one this gtok reads; `writer` is the recorded gtok version that wrote
    it. It ends with `newer` (a next step starting with `UPGRADE`) when `version` is a larger
    int, else with `other` (older, or not a number: use the gtok that wrote it, or redo it)."""
    wrote = f"gtok {writer[:40]}" if isinstance(writer, str) else "an unknown gtok"
    is_newer = isinstance(version, int) and not isinstance(version, bool) and version > reads
    return (
        f"{what} has format version {version!r}, written by {wrote}; this gtok "
        f"({__version__}) reads format version {reads}: {newer if is_newer else other}."
    )
