"""SIGTERM (Slurm, Kubernetes, `timeout`) taken as a Ctrl-C, and moments it must not cut.

`sigterm_as_interrupt` makes the first SIGTERM raise `Terminated` in the main thread at once,
wherever it is, as Ctrl-C raises KeyboardInterrupt. `stops_held` holds that stop while its
block runs and raises it when the block ends: `gtok.data.stream` receives each batch from a
DataLoader worker inside it, since a batch's tensors come over as file descriptors, and a
transfer cut short leaves the worker's end to print a `ConnectionResetError` traceback.
Ctrl-C is not held: Python's own handler raises KeyboardInterrupt wherever the main thread is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Terminated", "sigterm_as_interrupt", "stops_held"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like the KeyboardInterrupt of a Ctrl-C, so that
    whatever a Ctrl-C finishes, saves or releases (`with` blocks: store locks, temporary
    files, DataLoader workers) is finished, saved or released the same way."""


@dataclass
class _Hold:
    """The main thread's `stops_held` blocks: how many are open (depth), and whether a
    SIGTERM came in one of them (pending)."""

    depth: int = 0
    pending: bool = False


_hold = _Hold()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, the first SIGTERM raises `Terminated` in the main thread (at the end of the
    outermost `stops_held` block, if one is open); later ones are ignored, so that they
    cannot cut the clean-up short (`timeout` sends two; SIGKILL still ends the process).
    Outside the main thread, nothing changes."""

    def stop(signum: int, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _hold.depth:
            _hold.pending = True
            return
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: only it may set handlers
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold the stop of a SIGTERM (`sigterm_as_interrupt`) that comes while the block runs
    and raise its `Terminated` when the block ends, after the outermost one when nested. If
    the block raises while a stop is held, `Terminated` is raised from that exception (the
    stop is what was asked for). In other threads than the main one, which signals never
    interrupt, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _hold.depth += 1
    try:
        yield
    except BaseException as exc:
        if _release():
            raise Terminated from exc
        raise
    if _release():
        raise Terminated


def _release() -> bool:
    """Close the innermost `stops_held` block: whether a held stop is due now."""
    _hold.depth -= 1
    due = not _hold.depth and _hold.pending
    if due:
        _hold.pending = False
    return due
