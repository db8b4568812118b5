"""Conventions every command shares: errors, `--json`, `--config`, option aliases.

- A `GtokError` (or a Taichi `ArchError`) raised anywhere below a command becomes one red
  sentence on stderr and exit code 1 (an `ArgumentError`'s names its arguments by their
  flags, `gtok.cli._flags`), and so does an `OSError` of a refused write (full disk,
  read-only or write-protected output, file size limit) that names its file
  (`gtok.outputs.describe_write_failure`); usage errors exit 2 as Click does; `-v` (or
  `GTOK_VERBOSE=1`) shows the traceback instead.
- SIGTERM (Slurm, Kubernetes, `timeout`) stops any command as Ctrl-C does, then ends it with
  one line and exit code 143 (`gtok.stops.sigterm_as_interrupt`); resumable commands say
  how to resume.
- The global flags `-q/--quiet`, `-v/--verbose` and `--kernel-arch` go before or after the
  command.
- `--json` prints exactly one JSON document on stdout and nothing else there.
- One naming scheme (`-o/--output` for what a command writes, one name per weight file,
  choices shown as `<a|b|c>`); an option's old spelling (`RENAMED`) still works for one
  release, hidden from help, with a note on stderr. Help prints each example's command as
  written (Click's `\b` raw paragraphs), broken only before an option with a shell
  continuation, whatever the terminal's width.
- `--config FILE.toml` fills the command's defaults. Precedence: flag > environment
  variable (`GTOK_<COMMAND>_<OPTION>`, e.g. `GTOK_ENCODE_BATCH_SIZE`, `GTOK_DECODE_FORMAT`:
  the option's long name; `GTOK_<OPTION>` for the global flags) > config file > default.
  `--help` and `--version` are never read from the environment. The file holds option names
  as keys, at top level or under a `[<command>]` table; it is read through `gtok.safeload`
  (1 MiB, nesting 64 deep). A value no option takes (a table, a date, a list for one value,
  a non-boolean for an on/off flag or a boolean for anything else) is refused naming the
  file and key, and a bad value's message names where it came from: the flag, the
  environment variable, or the config file and key.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from gtok.cli._files import read_text_file
from gtok.cli._flags import error_message
from gtok.cli._signals import stop_terminated
from gtok.console import console, is_quiet, set_quiet
from gtok.errors import GtokError
from gtok.outputs import describe_write_failure
from gtok.safeload import SETTINGS_BYTES, Unreadable, parse_toml
from gtok.stops import Terminated, sigterm_as_interrupt

__all__ = [
    "ConfigOption",
    "GtokGroup",
    "JsonFlag",
    "UsageProblem",
    "choices",
    "fail",
    "human_bytes",
    "new_app",
    "print_json",
    "state",
    "table_text",
]

ENV_PREFIX = "GTOK"
NOT_FROM_ENV = frozenset({"help", "version"})  # options that print and exit
GLOBAL_FLAGS = ("--verbose", "--quiet", "--kernel-arch")  # GTOK_VERBOSE, GTOK_QUIET, ...
# command -> {old spelling: new}: taken on the command line and in --config files until the
# release after gtok 0.1 (CHANGELOG.md), shown nowhere
RENAMED = {
    "train": {
        "--out": "--output",
        "--vgg-weights": "--vgg16-weights",
        "--lpips-weights": "--lpips-vgg-weights",
    },
}
_VALUE_ERROR = "Value error, "  # what Typer's pydantic checks put before a bad value's reason


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
    source = ctx.get_parameter_source(param.name) if param.name else None
    if value is not None and (source is None or source.name != "ENVIRONMENT"):
        from gtok.kernels import runtime  # imports torch: only when the flag is given

        runtime.request_arch(value.value)


def _forget_arch_request() -> None:
    """Undo an earlier run's `--kernel-arch` (tests run several in one process); nothing to
    undo when `gtok.kernels.runtime` was never imported, and importing it would import torch."""
    if runtime := sys.modules.get("gtok.kernels.runtime"):
        runtime.request_arch(None)


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that are the user's to fix: `GtokError`, and Taichi's `ArchError` once
    `gtok.kernels.runtime` is imported (none can be raised before)."""
    if runtime := sys.modules.get("gtok.kernels.runtime"):
        return (GtokError, runtime.ArchError)
    return (GtokError,)


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


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """An enumeration of the strings `values`, for an option that takes one of them: help
    shows them as `<a|b|c>` and a bad value is refused listing them."""
    members = [(value, value) for value in values]
    return cast(type[StrEnum], StrEnum(name, members))  # mypy reads this call as a lookup


class UsageProblem(typer.BadParameter):
    """A usage error (exit 2) whose message is printed as it is: every missing setting of a
    command at once, or every bad one."""

    def format_message(self) -> str:
        return self.message


def _new_spellings(command: str, args: list[str]) -> list[str]:
    """`args` of `command` with old option spellings (`RENAMED`, also as `--old=value`)
    replaced by the new ones, each with a note on stderr; nothing after `--`."""
    renamed = RENAMED.get(command, {})
    out = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        flag, equals, value = arg.partition("=")
        if flag in renamed:
            out[i] = renamed[flag] + equals + value
            if not is_quiet():
                console.print(f"note: {flag} is now {renamed[flag]} (the old name goes away soon)")
    return out


EXAMPLE_WIDTH = 72  # characters of an example's line: within 80 columns once indented


def _shell_lines(command: str) -> list[str]:
    """`command` as shell lines of at most `EXAMPLE_WIDTH` characters where it can be: broken
    only before an option (which keeps its values), each line but the last ending in " \\"."""
    groups: list[str] = []
    for word in command.split():
        if word.startswith("-") or not groups:
            groups.append(word)
        else:
            groups[-1] += f" {word}"
    lines = [groups[0]]
    for group in groups[1:]:
        if len(lines[-1]) + len(group) + 3 > EXAMPLE_WIDTH:
            lines.append(f"  {group}")
        else:
            lines[-1] += f" {group}"
    return [f"{line} \\" for line in lines[:-1]] + lines[-1:]


def _raw_examples(text: str | None) -> str | None:
    """Help text whose `Example...: COMMAND` paragraphs Click prints as they are (`\\b`): the
    command on lines of its own, broken only before an option, with shell continuations, so
    that it pastes as it reads and no terminal width breaks it elsewhere."""
    if not text:
        return text
    paragraphs = text.split("\n\n")
    for i, paragraph in enumerate(paragraphs):
        label, colon, command = paragraph.partition(": ")
        if paragraph.startswith("Example") and colon:
            lines = "\n".join(f"  {line}" for line in _shell_lines(command))
            paragraphs[i] = f"\b\n{label}:\n{lines}"
    return "\n\n".join(paragraphs)


def fail(message: str) -> None:
    """Stop the command with one red sentence on stderr and exit code 1 (`message` is text,
    not markup: a `[` in a file name or a command is shown as it is)."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
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
            command.help = _raw_examples(command.help)
        _bind_envvars(self, [])

    # typer calls these with its Context; the base class names the one of its vendored Click
    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple:  # type: ignore[override]
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, _new_spellings(name, rest) if name else rest

    def make_context(self, info_name, args, parent=None, **extra: Any):
        if parent is None:  # a new run (tests run several in one process)
            state.verbose = False
            set_quiet(False)
            _forget_arch_request()
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except Terminated:
            stop_terminated("it did not finish, so rerun the command")
        except typer.BadParameter as exc:
            _blame(exc)
            raise
        except _user_errors() as exc:
            if state.verbose:
                raise
            fail(error_message(exc))
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


def human_bytes(size: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


CONFIG_SOURCES = "gtok.config"  # ctx.meta key: {option name: "KEY in the config file PATH"}


def _config_section(data: dict, command: str, path: Path) -> tuple[dict, str]:
    """(the settings of `command` in the config file `path`, "[command] " or "" as it names
    them): its `[command]` table when the file has one, else the file's top level."""
    if command not in data:
        return data, ""
    if not isinstance(data[command], dict):
        raise typer.BadParameter(
            f"{path} sets {command} = {data[command]!r}, but {command} must be a table of "
            f"`gtok {command}`'s options ([{command}])."
        )
    return data[command], f"[{command}] "


def _setting_problem(option, value: Any) -> str | None:
    """Why the config value `value` cannot set `option`, or None: TOML has tables, dates and
    times, which no option takes; an on/off flag takes true or false and nothing else does;
    a list sets only an option given several times."""
    several = option.multiple or option.nargs != 1
    if isinstance(value, list) and not several:
        return f"is a list, but {_long_name(option)} takes one value"
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            return f"is a table, but {_long_name(option)} takes a value"
        if isinstance(item, datetime.date | datetime.time):
            return f'is a date or time; write it in quotes ("{item.isoformat()}")'
        flag = getattr(option, "is_flag", False)
        if flag and not isinstance(item, bool):
            return f"is {item!r}; {_long_name(option)} is an on/off flag: write true or false"
        if isinstance(item, bool) and not flag:
            return f"is {str(item).lower()}, but {_long_name(option)} is not an on/off flag"
    return None


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    if value is None:
        return None
    try:
        data = parse_toml(read_text_file(value, "config file", SETTINGS_BYTES), str(value))
    except Unreadable as exc:
        raise typer.BadParameter(str(exc)) from exc
    assert ctx.info_name is not None  # a command's context has its name
    section, where = _config_section(data, ctx.info_name, value)
    options = {p.name: p for p in ctx.command.params if p.name != param.name}
    # key -> option name; at the top level a table is another command's section
    renamed = {
        old.lstrip("-"): new.lstrip("-") for old, new in RENAMED.get(ctx.info_name, {}).items()
    }
    named = {
        k: renamed.get(k, k).replace("-", "_")
        for k, v in section.items()
        if where or not isinstance(v, dict)
    }
    if unknown := sorted(name for name in named.values() if name not in options):
        raise typer.BadParameter(
            f"{value} sets {', '.join(unknown)}, which `gtok {ctx.info_name}` does not take "
            f"(it takes: {', '.join(sorted(options))})."
        )
    for key, name in named.items():
        if problem := _setting_problem(options[name], section[key]):
            raise typer.BadParameter(f"{value}: {where}{key} {problem}.")
    ctx.default_map = {**(ctx.default_map or {}), **{n: section[k] for k, n in named.items()}}
    ctx.meta[CONFIG_SOURCES] = {
        n: f"{where}{k} in the config file {value}" for k, n in named.items()
    }
    return value


def _blame(exc: typer.BadParameter) -> None:
    """Make a bad option value's message name where the value came from: the flag, its
    environment variable, or the config file and key (Click names the variable whatever
    the source)."""
    option, ctx = exc.param, exc.ctx
    exc.message = exc.message.removeprefix(_VALUE_ERROR)  # Click's own wording
    if exc.param_hint is not None or option is None or ctx is None:
        return
    source = getattr(ctx.get_parameter_source(option.name), "name", None)
    flags = " / ".join(f"'{name}'" for name in option.opts)
    if source == "COMMANDLINE" and option.envvar:
        exc.param_hint = flags
    elif source == "ENVIRONMENT":
        exc.param_hint = f"{flags} (from the environment variable {option.envvar})"
    elif source == "DEFAULT_MAP" and option.name in ctx.meta.get(CONFIG_SOURCES, {}):
        exc.param_hint = f"{flags} (from {ctx.meta[CONFIG_SOURCES][option.name]})"


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
