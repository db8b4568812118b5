"""`gtok --help`, `gtok --version` and `gtok CMD --help` start fast:
the CLI imports torch, Taichi and Zarr only when a command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gtok.cli.main import app

HEAVY = ("torch", "taichi", "zarr")
COMMANDS = sorted(command.name for command in app.registered_commands)
GTOK = [sys.executable, "-c", "from gtok.cli.main import main; main()"]


def _imported_heavy(*argv: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after `gtok ARGV` (run in-process with
    its exit caught), after checking that it exits 0."""
    code = (
        "import sys\nfrom gtok.cli.main import main\n"
        f"sys.argv = ['gtok', *{list(argv)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.rsplit("heavy:", 1)[1].strip().split(",") if name]


@pytest.mark.subprocess
def test_importing_the_cli_imports_no_torch_or_taichi():
    assert _imported_heavy("--version") == []


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name in COMMANDS]])
def test_help_of_every_command_needs_no_torch(argv):
    assert _imported_heavy(*argv) == []


def test_every_command_is_checked():
    assert {"encode", "train", "eval", "env", "pack", "demo"} <= set(COMMANDS)


@pytest.mark.subprocess
def test_the_version_is_printed():
    out = subprocess.run([*GTOK, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gtok ")
