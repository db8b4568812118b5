"""SIGTERM (Slurm, Kubernetes, `timeout`) taken as a Ctrl-C, and moments it must not cut.

`sigterm_as_interrupt` makes the first SIGTERM raise `Terminated` in the main thread at once,
wherever it is, as Ctrl-C raises KeyboardInterrupt. `stops_held` holds that stop while its
block runs and raises it when the block ends: `gtok.data.stream` receives each batch from a
DataLoader worker inside it, since a batch's tensors come over as file descriptors, and a
transfer cut short leaves the worker's end to print a `ConnectionResetError` traceback.
Ctrl-C is not held: Python's own handler raises KeyboardInterrupt wherever the main thread is.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sys import UnraisableHookArgs

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
    A `Terminated` that Python drops, having raised it in a `__del__` or a weakref callback
    (garbage collection runs those anywhere), is sent again, for the main thread to raise
    wherever it is next. Outside the main thread, nothing changes."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if _runs_in(frame, send_again.__code__):  # dropped again: the next one, then
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _hold.depth:
            _hold.pending = True
            return
        raise Terminated

    def send_again(unraisable: UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            previous_hook(unraisable)
            return
        _send_until_taken(stop)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: only it may set handlers
        yield
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, send_again
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)


_SEND_AGAIN_S = 0.01  # how often a dropped stop's SIGTERM is sent again until it is taken


def _send_until_taken(stop: Callable[[int, FrameType | None], None]) -> None:
    """Make `stop` the SIGTERM handler again and, from another thread, SIGTERM this process
    every `_SEND_AGAIN_S` seconds while it is (it sets SIG_IGN when it takes one)."""

    def send() -> None:
        while signal.getsignal(signal.SIGTERM) is stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(_SEND_AGAIN_S)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=send, daemon=True).start()


def _runs_in(frame: FrameType | None, code: CodeType) -> bool:
    """Whether `code` is running in `frame` or a frame that called it."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


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
