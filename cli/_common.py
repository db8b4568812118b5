"""Conventions every command shares: errors, `--json`, `--config`, option aliases.

- A `GtokError` (or a Taichi `ArchError`) raised anywhere below a command becomes one red
  sentence on stderr and exit code 1, and so does an `OSError` of a refused write (full disk,
  read-only or write-protected output, file size limit) that names its file
  (`gtok.outputs.describe_write_failure`); usage errors exit 2 as Click does; `gtok -v` (or
  `GTOK_VERBOSE=1`) shows the traceback instead.
- `--json` prints exactly one JSON document on stdout and nothing else there.
- `--config FILE.toml` fills the command's defaults. Precedence: flag > environment
  variable (`GTOK_<COMMAND>_<OPTION>`, e.g. `GTOK_ENCODE_BATCH_SIZE`) > config file > default.
  The file holds option names as keys, at top level or under a `[<command>]` table.
"""

from __future__ import annotations

import json
import sys
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli._options import read_text_file
from gtok.console import console
from gtok.errors import GtokError
from gtok.outputs import describe_write_failure
from kernels.runtime import ArchError

__all__ = ["ConfigOption", "GtokGroup", "JsonFlag", "fail", "new_app", "print_json", "state"]

USER_ERRORS = (GtokError, ArchError)


class _State:
    verbose = False


state = _State()


def fail(message: str) -> None:
    """Stop the command with one red sentence on stderr and exit code 1."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(1)


class GtokGroup(TyperGroup):
    """The root command group: a user error becomes one red line and exit 1, unless `-v`."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if state.verbose:
                raise
            fail(str(exc))
        except OSError as exc:
            message = describe_write_failure(exc)
            if message is None or state.verbose:
                raise
            fail(message)


def new_app(**kwargs: Any) -> typer.Typer:
    """A Typer app with gtok's conventions (the root app, or a command group under it)."""
    return typer.Typer(
        cls=GtokGroup,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "GTOK"},
        **kwargs,
    )


def print_json(document: Any) -> None:
    """Print one JSON document on stdout (paths and other objects as strings)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    if value is None:
        return None
    try:
        data = tomllib.loads(read_text_file(value, "config file"))
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{value} is not valid TOML: {exc}.") from exc
    section = data.get(ctx.info_name, data)
    settings = {k.replace("-", "_"): v for k, v in section.items() if not isinstance(v, dict)}
    known = {p.name for p in ctx.command.params if p.name != param.name}
    if unknown := sorted(set(settings) - known):
        raise typer.BadParameter(
            f"{value} sets {', '.join(unknown)}, which `gtok {ctx.info_name}` does not take "
            f"(it takes: {', '.join(sorted(known))})."
        )
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


PrecisionOption = Annotated[
    Precision,
    typer.Option(help="fp32, or bf16 for mixed precision (fast on GPUs; also runs on CPUs)."),
]

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file of option defaults (flags and GTOK_* variables override it).",
        is_eager=True,
        callback=_load_config,
        dir_okay=False,
    ),
]
