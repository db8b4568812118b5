"""How a command ends when it is stopped: Ctrl-C, or SIGTERM (Slurm, Kubernetes, `timeout`),
which every command takes as a Ctrl-C (`gtok.stops.sigterm_as_interrupt`); the exit codes of
both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from gtok.console import console
from gtok.stops import Terminated

__all__ = [
    "INTERRUPTED",
    "RESUME",
    "TERMINATED",
    "resumable",
    "stop_terminated",
]

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells use
TERMINATED = 143  # ... stopped by SIGTERM (128 + SIGTERM), as a process killed by it reports
RESUME = "rerun the same command to resume"  # what a stopped resumable command says to do


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
