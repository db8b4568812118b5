"""How a command ends when it is stopped: Ctrl-C, or SIGTERM (Slurm, Kubernetes, `timeout`),
which every command takes as a Ctrl-C (`sigterm_as_interrupt`); the exit codes of both."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from gtok.console import console

__all__ = [
    "INTERRUPTED",
    "RESUME",
    "TERMINATED",
    "Terminated",
    "resumable",
    "sigterm_as_interrupt",
    "stop_terminated",
]

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells use
TERMINATED = 143  # ... stopped by SIGTERM (128 + SIGTERM), as a process killed by it reports
RESUME = "rerun the same command to resume"  # what a stopped resumable command says to do


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like the KeyboardInterrupt of a Ctrl-C, so that
    whatever a Ctrl-C finishes, saves or releases (`with` blocks: store locks, temporary
    files, DataLoader workers) is finished, saved or released the same way."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, the first SIGTERM raises `Terminated` in the main thread; later ones are
    ignored, so that they cannot cut the clean-up short (`timeout` sends two; SIGKILL still
    ends the process). Outside the main thread, nothing changes."""

    def stop(signum: int, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
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


def stop_terminated(next_step: str) -> NoReturn:
    """End a command stopped by SIGTERM: one line, "stopped by SIGTERM; `next_step`.", and
    exit code 143."""
    console.print(f"stopped by SIGTERM; {next_step}.", soft_wrap=True)
    raise typer.Exit(TERMINATED) from None


@contextmanager
def resumable() -> Iterator[None]:
    """Ctrl-C inside ends the command with one line saying how to resume, exit code 130;
    SIGTERM with that line too, exit code 143."""
    try:
        yield
    except Terminated:
        stop_terminated(RESUME)
    except KeyboardInterrupt:
        console.print(f"interrupted; {RESUME}.", soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
