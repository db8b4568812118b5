"""The one exception type for mistakes a user can fix (bad path, wrong model, bad flag value).

The CLI prints its message as one red sentence and exits 1; library callers catch it like any
other exception. Programming errors stay ordinary exceptions (ValueError, TypeError, ...).

`version_refusal` words the refusal of a file or folder of another format version (a token
store, a model directory, a pack folder) the same way for all of them.
"""

from gtok._version import __version__

__all__ = ["UPGRADE", "GtokError", "version_refusal"]

UPGRADE = "upgrade gtok (pip install -U gtok)"  # the next step for a format newer than ours


class GtokError(Exception):
    """A user-facing error: the message is one sentence that says what to do."""


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
