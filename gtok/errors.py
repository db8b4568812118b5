"""The exception types for mistakes a user can fix (bad path, wrong model, bad argument value).

The CLI prints their message as one red sentence and exits 1; library callers catch them like
any other exception. Programming errors stay ordinary exceptions (ValueError, TypeError, ...).
"""

__all__ = ["ArgumentError", "GtokError"]


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
