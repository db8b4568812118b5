"""The `gtok` entry point: registers commands and the global options, nothing else."""

from __future__ import annotations

from typing import Annotated

import typer

from gtok._version import __version__
from gtok.cli import codebook as codebook_cmd
from gtok.cli import convert as convert_cmd
from gtok.cli import decode as decode_cmd
from gtok.cli import demo as demo_cmd
from gtok.cli import encode as encode_cmd
from gtok.cli import env as env_cmd
from gtok.cli import eval as eval_cmd
from gtok.cli import info as info_cmd
from gtok.cli import pack as pack_cmd
from gtok.cli import train as train_cmd
from gtok.cli import verify as verify_cmd
from gtok.cli._common import new_app

app = new_app(
    name="gtok",
    help="GaussianToken image tokenizers: train, encode shards to Zarr tokens, decode, evaluate.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gtok {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """Global flags (-q, -v) go before or after the command: `gtok -q encode ...`."""


app.command("env")(env_cmd.env)
app.command("convert-official")(convert_cmd.convert_official)
app.command("encode")(encode_cmd.encode)
app.command("fit-codebook")(codebook_cmd.fit_codebook)
app.command("info")(info_cmd.info)
app.command("verify")(verify_cmd.verify)
app.command("decode")(decode_cmd.decode)
app.command("eval")(eval_cmd.eval_command)
app.command("train")(train_cmd.train)
app.command("pack")(pack_cmd.pack)
app.command("demo")(demo_cmd.demo)


def main() -> None:
    app()
