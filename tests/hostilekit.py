"""Run `gtok` as a user would on hostile input and check that it fails the way gtok promises.

The promise (docs/reliability.md): a user mistake or a bad input ends with exactly one
`error:` line on stderr and exit code 1 (2 for a usage error), never a Python traceback;
nothing is written outside the output folder; no temporary files are left behind; memory
stays bounded (checked by running the command under an address-space limit, so a regression
fails the test instead of taking the machine down).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["GTOK", "assert_no_temp_files", "assert_one_error", "run_gtok", "start_gtok"]

REPO = Path(__file__).resolve().parents[1]
GTOK = [sys.executable, "-c", "from gtok.cli.main import main; main()"]

# Taichi reserves 1 GiB of address space for its host memory pool and torch maps its
# libraries: a limit below ~3 GiB stops gtok before it reads any input.
DEFAULT_MEMORY_LIMIT = 4 << 30

TEMP_MARKERS = (".tmp", ".partial", ".part")


def run_gtok(
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    timeout: float = 300,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """`gtok ARGS...` in a subprocess (text output captured), under `memory_limit` bytes of
    address space (None: no limit) and, when given, `file_size_limit` bytes per written file
    (RLIMIT_FSIZE with SIGXFSZ ignored: a write past it fails with EFBIG, as on a full disk;
    it limits every file the process writes, so give it a private GTOK_KERNEL_CACHE)."""

    def limit() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [*GTOK, *map(str, args)],
        cwd=cwd or REPO,
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def start_gtok(*args: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`gtok ARGS...` started in a subprocess that runs on while the test goes on (text output
    to pipes: read them with `communicate()`), for a second gtok to meet it at work."""
    return subprocess.Popen(
        [*GTOK, *map(str, args)],
        cwd=REPO,
        env=_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    """The test process's environment for a gtok subprocess, plus `env`, without `-v`."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        **(env or {}),
    }
    environment.pop("GTOK_VERBOSE", None)
    return environment


def assert_one_error(
    result: subprocess.CompletedProcess, *, exit_code: int = 1, contains: str | None = None
) -> str:
    """Assert `result` failed with `exit_code`, one `error:` line on stderr and no traceback;
    returns that line."""
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == exit_code, f"exit {result.returncode}, wanted {exit_code}{detail}"
    assert "Traceback" not in result.stderr, detail
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if exit_code == 2:  # Click's usage errors: one "Error: ..." line after the usage
        errors = [line for line in result.stderr.splitlines() if "Error" in line] or errors
    assert len(errors) == 1, f"wanted one error line{detail}"
    if contains is not None:
        assert contains in result.stderr, f"{contains!r} not in stderr{detail}"
    return errors[0]


def assert_no_temp_files(*folders: str | os.PathLike, markers: Iterable[str] = TEMP_MARKERS):
    """Assert that no file under `folders` looks like an abandoned temporary file."""
    leftovers = [
        path
        for folder in folders
        if Path(folder).exists()
        for path in Path(folder).rglob("*")
        if any(marker in path.name for marker in markers)
    ]
    assert not leftovers, f"temporary files left behind: {leftovers}"
