"""Progress for a log file: when stderr is not a terminal (Slurm, `nohup ... 2> log`), a long
job prints one plain line per task at least every `interval` seconds instead of drawing a bar:

    encode 3/10 shards: 1,234/5,000 img (25%), 41.2 img/s, elapsed 0:00:30, eta ~2 min

The rate is the average since the task was added; a task of unknown total shows its count
and rate only. Lines come from the task's updates and, while nothing advances, from a timer
thread; once any line was printed, stopping prints a last one per task.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta

from rich.console import Console
from rich.progress import Progress, Task, TaskID

from gtok.errors import GtokError

__all__ = [
    "DEFAULT_INTERVAL",
    "INTERVAL_ENV",
    "PlainProgress",
    "human_duration",
    "interval_from_env",
    "plain_line",
]

INTERVAL_ENV = "GTOK_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between two lines of a task


def interval_from_env() -> float:
    """Seconds between progress lines: `$GTOK_PROGRESS_INTERVAL`, default 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise GtokError(f"{INTERVAL_ENV} is {text!r}; set it to a number of seconds above 0.")
    return value


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def human_duration(seconds: float) -> str:
    """An estimated duration as a person says it, in one unit: "~45 s", "~12 min", "~36 h",
    "~3.5 days"; "0 s" for nothing left."""
    if seconds < 0.5:
        return "0 s"
    if seconds < 90:
        return f"~{round(seconds)} s"
    if seconds < 90 * 60:
        return f"~{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"~{round(seconds / 3600)} h"
    return f"~{seconds / 86400:.1f} days"


def plain_line(task: Task, unit: str, done: float, seconds: float) -> str:
    """One line for `task`, which advanced by `done` units in `seconds` since it was added."""
    completed, total = int(task.completed), task.total
    count = f"{completed:,}/{int(total):,} {unit}" if total else f"{completed:,} {unit}"
    if total:
        count += f" ({min(completed / total, 1):.0%})"
    rate = done / seconds if seconds > 0 else 0.0
    parts = [count, f"{rate:,.1f} {unit}/s", f"elapsed {_duration(seconds)}"]
    if total and rate > 0:
        parts.append(f"eta {human_duration(max(total - completed, 0) / rate)}")
    return f"{task.description}: {', '.join(parts)}"


class PlainProgress(Progress):
    """A rich `Progress` that draws nothing and, while started (`with`), prints `plain_line`
    for each task at most every `interval` seconds of its clock `get_time`."""

    def __init__(
        self,
        unit: str,
        console: Console,
        interval: float,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(console=console, disable=True, get_time=get_time)
        self.unit, self.interval = unit, interval
        self._timer = get_time is None  # a timer thread only on the real clock
        self._baseline: dict[TaskID, tuple[float, float]] = {}  # task -> (time, completed)
        self._last: dict[TaskID, float] = {}  # task -> time of its last line
        self._running = False
        self._printed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        now = self.get_time()
        self._baseline[task_id] = (now, self._task(task_id).completed)
        self._last[task_id] = now
        return task_id

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._tick(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tick(task_id)

    def start(self) -> None:
        self._running = True
        if self._timer:
            self._wake.clear()
            self._thread = threading.Thread(target=self._ticker, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._thread is not None:
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._printed:
            for task in self.tasks:
                self._print(task.id, self.get_time())

    def _task(self, task_id: TaskID) -> Task:
        return next(task for task in self.tasks if task.id == task_id)

    def _ticker(self) -> None:
        while not self._wake.wait(min(self.interval, 1.0)):
            for task in self.tasks:
                self._tick(task.id)

    def _tick(self, task_id: TaskID) -> None:
        now = self.get_time()
        with self._lock:
            due = self._running and now - self._last[task_id] >= self.interval
            if due:
                self._last[task_id] = now
        if due:
            self._print(task_id, now)

    def _print(self, task_id: TaskID, now: float) -> None:
        started, first = self._baseline[task_id]
        task = self._task(task_id)
        line = plain_line(task, self.unit, task.completed - first, now - started)
        self.console.print(line, soft_wrap=True, markup=False, highlight=False)
        self._printed = True
