"""The one exception type for mistakes a user can fix (bad path, wrong model, bad flag value).

The CLI prints its message as one red sentence and exits 1; library callers catch it like any
other exception. Programming errors stay ordinary exceptions (ValueError, TypeError, ...).
"""

__all__ = ["GtokError"]


class GtokError(Exception):
    """A user-facing error: the message is one sentence that says what to do."""
