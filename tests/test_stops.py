"""A SIGTERM's stop (`gtok.stops`) is held by `stops_held` until the block ends, and sent
again when Python drops it; a DataLoader of `gtok.data.loader` holds it while a batch comes
over from a worker, but not while it waits for one.

Each test signals its own process inside `sigterm_as_interrupt`, which turns the SIGTERM
into `Terminated` (a KeyboardInterrupt) instead of ending pytest.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

from gtok.data import loader
from gtok.stops import Terminated, sigterm_as_interrupt, stops_held


def _terminate_self() -> str:
    os.kill(os.getpid(), signal.SIGTERM)
    return "signalled"


def test_a_held_stop_is_raised_when_the_block_ends():
    ran_on = []
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        with stops_held():
            _terminate_self()
            ran_on.append("the held block")
        ran_on.append("after it")
    assert ran_on == ["the held block"]


def test_nested_holds_raise_the_stop_when_the_outermost_ends():
    ran_on = []
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        with stops_held():
            with stops_held():
                _terminate_self()
            ran_on.append("the outer block")
        ran_on.append("after it")
    assert ran_on == ["the outer block"]


def test_a_stop_outside_a_hold_is_raised_at_once():
    ran_on = []
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        with stops_held():
            ran_on.append("a block that ended")
        _terminate_self()
        ran_on.append("after the signal")
    assert ran_on == ["a block that ended"]


def test_an_error_that_ends_a_hold_with_a_stop_pending_becomes_the_stop():
    with sigterm_as_interrupt(), pytest.raises(Terminated) as stopped, stops_held():
        _terminate_self()
        raise EOFError("the worker's end is gone")
    assert isinstance(stopped.value.__cause__, EOFError)


def test_a_hold_in_another_thread_does_not_hold_the_main_threads_stop():
    held, stopped = threading.Event(), threading.Event()

    def hold_until_stopped() -> None:
        with stops_held():
            held.set()
            stopped.wait(10)

    other = threading.Thread(target=hold_until_stopped)
    other.start()
    try:
        held.wait(10)
        with sigterm_as_interrupt(), pytest.raises(Terminated):
            _terminate_self()
            time.sleep(10)  # the stop ends this at once
    finally:
        stopped.set()
        other.join()


class _Collected:
    """An object to run a weakref callback for when it goes."""


def test_a_stop_that_a_weakref_callback_dropped_is_raised_again(capfd):
    collected = _Collected()
    callback = weakref.ref(collected, lambda _: _terminate_self())
    ran_on = []
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        del collected  # runs the callback, whose Terminated Python drops
        ran_on.append("after the callback")
        time.sleep(10)  # the stop, sent again, ends this
    assert ran_on == ["after the callback"] and callback() is None
    assert "Terminated" not in capfd.readouterr().err


def _mark_whole() -> str:
    RECEIVED.append("whole")
    return "marked"


class _TerminateOnArrival:
    """Unpickled in the main process, it sends that process a SIGTERM."""

    def __reduce__(self):
        return (_terminate_self, ())


class _MarkWhole:
    """Unpickled in the main process, it appends "whole" to `RECEIVED`: the pickled objects
    before it came over."""

    def __reduce__(self):
        return (_mark_whole, ())


RECEIVED: list[str] = []


class _SignalledBatch(IterableDataset):
    """One item whose transfer to the main process is signalled half-way: the SIGTERM, a
    tensor (shared through a file descriptor), then the mark that it all came over."""

    def __iter__(self) -> Iterator[tuple]:
        yield (_TerminateOnArrival(), torch.arange(1000), _MarkWhole())


@pytest.mark.subprocess
def test_a_sigterm_while_a_batch_comes_over_stops_once_it_is_in(capfd):
    RECEIVED.clear()
    data = loader(_SignalledBatch(), workers=1)
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        for _ in data:
            pass
    assert RECEIVED == ["whole"]
    for worker in data.worker_processes:  # shut down when the iterator went
        worker.join(10)
    assert [worker.exitcode for worker in data.worker_processes] == [0]
    assert "Traceback" not in capfd.readouterr().err


class _SecondItemOnGo(IterableDataset):
    """An item at once, then another when the file `go` exists (or after 30 s)."""

    def __init__(self, go: Path):
        self.go = go

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield torch.zeros(1)
        deadline = time.monotonic() + 30
        while not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield torch.ones(1)


@pytest.mark.subprocess
def test_a_sigterm_while_waiting_for_a_batch_stops_at_once(tmp_path):
    data = loader(_SecondItemOnGo(tmp_path / "go"), workers=1)
    batches = iter(data)
    next(batches)  # the worker is up
    began = time.monotonic()
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        threading.Timer(0.2, _terminate_self).start()
        next(batches)
    assert time.monotonic() - began < 5
    (tmp_path / "go").touch()  # let the worker end with its item
    del batches
    [worker] = data.worker_processes
    worker.join(10)
    assert worker.exitcode == 0
