"""Where gtok talks to people: one rich console on stderr and one progress-bar factory.

Results go to stdout (printed by the CLI); everything here goes to stderr so that
`gtok ... --json | jq` stays clean. Progress is a bar on a terminal, plain lines at least every
30 s (`$GTOK_PROGRESS_INTERVAL`) when stderr is a log file (`gtok.plainprogress`), and
nothing after `set_quiet(True)` (the CLI's `-q`).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from gtok.plainprogress import PlainProgress, human_duration, interval_from_env

__all__ = ["console", "is_quiet", "progress", "set_quiet"]

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) progress bars and informational messages."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


class RateColumn(ProgressColumn):
    """Items per second, e.g. `412.3 img/s`."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


class RemainingColumn(ProgressColumn):
    """The estimated time left as a person reads it (`human_duration`: "eta ~36 h")."""

    max_refresh = 0.5  # seconds: an estimate that changes ten times a second cannot be read

    def render(self, task: Task) -> Text:
        left = task.time_remaining
        shown = "?" if left is None else human_duration(left)
        return Text(f"eta {shown}", style="progress.remaining")


def progress(
    unit: str = "img", *extra: ProgressColumn, get_time: Callable[[], float] | None = None
) -> Progress:
    """A progress bar with count, rate in `unit`/s, elapsed time and ETA (on a log file: the
    same as a plain line every `$GTOK_PROGRESS_INTERVAL` seconds, see `PlainProgress`).

    Use as a context manager: `with progress() as p: t = p.add_task("encode", total=n)`.
    Extra columns (e.g. a `TextColumn("{task.fields[loss]}")`) go after the rate.
    `get_time`: the clock in seconds (default `time.monotonic`).
    """
    if not _quiet and not console.is_terminal:
        return PlainProgress(unit, console, interval_from_env(), get_time=get_time)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        *extra,
        TimeElapsedColumn(),
        RemainingColumn(),
        console=console,
        disable=_quiet,
        transient=False,
        get_time=get_time,
    )
