"""A SIGTERM's stop (`gtok.stops`) is held by `stops_held` until the block ends.

Each test signals its own process inside `sigterm_as_interrupt`, which turns the SIGTERM
into `Terminated` (a KeyboardInterrupt) instead of ending pytest.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

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
