"""Conventions every command shares: errors, `--json`, `--config`, option aliases.

- A `GtokError` (or a Taichi `ArchError`) raised anywhere below a command becomes one red
  sentence on stderr and exit code 1, and so does an `OSError` of a refused write (full disk,
  read-only or write-protected output, file size limit) that names its file
  (`gtok.outputs.describe_write_failure`); usage errors exit 2 as Click does; `-v` (or
  `GTOK_VERBOSE=1`) shows the traceback instead.
- The global flags `-q/--quiet`, `-v/--verbose` and `--kernel-arch` go before or after the
  command.
- `--json` prints exactly one JSON document on stdout and nothing else there.
- `--config FILE.toml` fills the command's defaults. Precedence: flag > environment
  variable (`GTOK_<COMMAND>_<OPTION>`, e.g. `GTOK_ENCODE_BATCH_SIZE`, `GTOK_DECODE_FORMAT`:
  the option's long name; `GTOK_<OPTION>` for the global flags) > config file > default.
  `--help` and `--version` are never read from the environment. The file holds option names
  as keys, at top level or under a `[<command>]` table.
"""

from __future__ import annotations

import json
import sys
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from cli._options import read_text_file
from gtok.console import console, set_quiet
from gtok.errors import GtokError
from gtok.outputs import describe_write_failure
from kernels import runtime
from kernels.runtime import ArchError

__all__ = [
    "ConfigOption",
    "GtokGroup",
    "JsonFlag",
    "fail",
    "new_app",
    "print_json",
    "state",
    "table_text",
]

USER_ERRORS = (GtokError, ArchError)
ENV_PREFIX = "GTOK"
NOT_FROM_ENV = frozenset({"help", "version"})  # options that print and exit
GLOBAL_FLAGS = ("--verbose", "--quiet", "--kernel-arch")  # GTOK_VERBOSE, GTOK_QUIET, ...


class _State:
    verbose = False


state = _State()


def _verbose(value: bool) -> None:
    if value:
        state.verbose = True


def _quiet(value: bool) -> None:
    if value:
        set_quiet(True)


class KernelArch(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    vulkan = "vulkan"
    metal = "metal"


def _kernel_arch(ctx: typer.Context, param: typer.CallbackParam, value: KernelArch | None) -> None:
    """Request the arch given on the command line (or by --config). None: not given here
    (perhaps before the command); from $GTOK_KERNEL_ARCH (Click has checked it), `runtime`
    reads it itself, and a flag on the other side of the command name keeps precedence."""
    if value is not None and ctx.get_parameter_source(param.name).name != "ENVIRONMENT":
        runtime.request_arch(value.value)


def _global_flags(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show tracebacks for errors.",
            callback=_verbose,
            expose_value=False,
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bars or messages on stderr.",
            callback=_quiet,
            expose_value=False,
        ),
    ] = False,
    kernel_arch: Annotated[
        KernelArch | None,
        typer.Option(
            "--kernel-arch",
            help="Taichi arch of the kernels: auto (CUDA tensors on cuda, CPU on cpu, MPS "
            "on metal), cpu, cuda, vulkan or metal (these two take CPU tensors through host "
            "memory, float32 only). `gtok env` lists those that start here.",
            case_sensitive=False,
            callback=_kernel_arch,
            expose_value=False,
        ),
    ] = None,
) -> None:
    """The global flags, accepted before and after the command: each command gets a copy
    (`GtokGroup`), built by Typer from this signature."""


def _global_flag_options() -> list:
    template = typer.Typer(add_completion=False)
    template.command()(_global_flags)
    return typer.main.get_command(template).params


def _envvar_name(command_path: list[str], option_name: str) -> str:
    """`GTOK_<COMMAND>_<OPTION>`: the environment variable of an option (its long name, e.g.
    "--batch-size") of the command at `command_path` (e.g. ["encode"]; [] for the root)."""
    words = [ENV_PREFIX, *command_path, option_name.lstrip("-")]
    return "_".join(words).upper().replace("-", "_")


def _long_name(option) -> str:
    return next((o for o in option.opts if o.startswith("--")), option.opts[0])


def _bind_envvars(command, path: list[str]) -> None:
    """Give each option of `command` (and of its subcommands) its environment variable; the
    global flags keep the root's names."""
    for param in command.params:
        if param.param_type_name != "option" or param.name in NOT_FROM_ENV:
            continue
        name = _long_name(param)
        param.envvar = _envvar_name([] if name in GLOBAL_FLAGS else path, name)
    for name, sub in getattr(command, "commands", {}).items():
        _bind_envvars(sub, [*path, name])


def fail(message: str) -> None:
    """Stop the command with one red sentence on stderr and exit code 1."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(1)


class GtokGroup(TyperGroup):
    """The root command group: a user error becomes one red line and exit 1, unless `-v`;
    the global flags are taken before and after the command; every option is bound to its
    `GTOK_<COMMAND>_<OPTION>` environment variable."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for command in [self, *self.commands.values()]:
            command.params.extend(_global_flag_options())
            if command.help and not command.short_help:  # the command list shows it whole
                command.short_help = " ".join(command.help.split("\n\n")[0].split())
        _bind_envvars(self, [])

    def make_context(self, info_name, args, parent=None, **extra: Any):
        if parent is None:  # a new run (tests run several in one process)
            state.verbose = False
            set_quiet(False)
            runtime.request_arch(None)
        return super().make_context(info_name, args, parent=parent, **extra)

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
        rich_markup_mode=None,  # Click's plain help: wrapped to the terminal, nothing cut off
        context_settings={"help_option_names": ["-h", "--help"]},
        **kwargs,
    )


def print_json(document: Any) -> None:
    """Print one JSON document on stdout (paths and other objects as strings)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table_text(table: Table) -> str:
    """A rich table as plain text for stdout, as wide as the terminal, no trailing spaces."""
    with console.capture() as capture:
        console.print(table)
    return "\n".join(line.rstrip() for line in capture.get().splitlines())


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
