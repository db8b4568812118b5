"""Render docs/cli.md, the reference of every `gtok` command and option, from the Typer app
(`gtok.cli.main.app`): each command's `--help` as Typer prints it without Rich, at a fixed
width of 100 columns, so the page is the same on every machine and terminal; hidden
commands and options (old flag names) are left out, as `--help` leaves them out.

    .venv/bin/python tools/make_cli_docs.py          # writes docs/cli.md (`make docs`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import typer.main

from gtok.cli.main import app

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
WIDTH = 100  # columns of the rendered help, whatever the terminal
HEADER = """\
# CLI reference

Every `gtok` command with its options, as `gtok COMMAND --help` prints them. Generated from
the Typer app by `tools/make_cli_docs.py` (`make docs`); do not edit by hand. What each
command is for, the global flags, `GTOK_*` variables and `--config` files:
[commands.md](commands.md).
"""


def plain_help(command, parent=None) -> str:
    """The `--help` text of `command` (a command of the Typer app as Click sees it, from
    `typer.main.get_command`), without Rich, `WIDTH` columns wide."""
    command.rich_markup_mode = None  # Typer's plain-text help; the object is this run's own
    name = command.name if parent else "gtok"
    ctx = command.context_class(
        command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )
    return command.get_help(ctx).rstrip() + "\n"


def render() -> str:
    """The Markdown text of docs/cli.md: `gtok --help`, then every command in the order
    `gtok --help` lists them, each under a `## gtok NAME` heading."""
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="gtok")
    parts = [HEADER, "## gtok\n", f"```text\n{plain_help(group)}```\n"]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is not None and not command.hidden:
            text = plain_help(command, root)
            parts += [f"## gtok {name}\n", f"```text\n{text}```\n"]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=PAGE, help="default: docs/cli.md")
    args = parser.parse_args()
    args.output.write_text(render())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
