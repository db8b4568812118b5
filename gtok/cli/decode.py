"""`gtok decode`: token store rows -> reconstructed PNGs (a folder tree) or WebDataset shards."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gtok.cli._arguments import StoreArgument
from gtok.cli._common import ConfigOption, JsonFlag, Precision, PrecisionOption, fail, print_json
from gtok.cli._files import read_text_file
from gtok.safeload import LIST_BYTES

if TYPE_CHECKING:
    from gtok.decode import DecodeSummary


class OutputFormat(StrEnum):
    png = "png"
    wds = "wds"


def _expand_keys(values: list[str] | None) -> list[str] | None:
    """Each value is a key, or @FILE: the keys in FILE, one per line (blank lines ignored)."""
    if not values:
        return None
    keys: list[str] = []
    for value in values:
        if not value.startswith("@"):
            keys.append(value)
            continue
        text = read_text_file(Path(value[1:]), "key file", LIST_BYTES)
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    return keys


def decode(
    config: ConfigOption = None,
    *,  # the rest by name (as Typer passes them), so required ones need no default
    store: StoreArgument,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="Folder to write into (created if needed)."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to decode with (default: the one the store records; another is "
            "refused unless it has the same weights sha256, or with --force).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Decode with --model even if its weights differ.")
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="png: OUT/<shard>/<sample key>.png (each / of the key a sub-folder); "
            "wds: OUT/recon-000000.tar, ... with <key>.png members.",
        ),
    ] = OutputFormat.png,
    keys: Annotated[
        list[str] | None,
        typer.Option(
            "--keys",
            help="Decode these keys, in this order (repeat it; @FILE reads one key per line).",
        ),
    ] = None,
    start: Annotated[int | None, typer.Option(help="First row (as a Python slice).")] = None,
    stop: Annotated[int | None, typer.Option(help="Row to stop before.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
    gaussians: Annotated[
        bool,
        typer.Option(
            "--gaussians",
            help="Also write <key>.gaussians.png: the Gaussians as ellipses coloured by code id.",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per decoder forward.")] = 64,
    shard_size: Annotated[
        int, typer.Option(help="Samples per tar with --format wds.", min=1)
    ] = 10000,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (Apple; untested on a Mac).")
    ] = "auto",
    precision: PrecisionOption = Precision.fp32,
    json_output: JsonFlag = False,
) -> None:
    """Reconstruct images from a token store's tokens.

    Example: gtok decode tokens.zarr -o recon/ --limit 16 --gaussians

    Example: gtok decode tokens.zarr -o recon/ --keys shard-0000.tar/000007 --keys @keys.txt

    Example: gtok decode tokens.zarr -o recon-wds/ --format wds --start 1000 --stop 2000
    """
    from gtok.decode import decode_store

    summary = decode_store(
        store,
        output,
        model=model,
        force=force,
        format=output_format.value,
        keys=_expand_keys(keys),
        start=start,
        stop=stop,
        limit=limit,
        batch_size=batch_size,
        device=device,
        gaussians=gaussians,
        shard_size=shard_size,
        precision=precision.value,
    )
    if json_output:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.failed:
        where = 'under "failed" in the JSON' if json_output else "above"
        fail(
            f"{len(summary.failed)} of {summary.rows} rows were not written (listed {where}); "
            "the other rows were."
        )


def _print_summary(summary: DecodeSummary) -> None:
    typer.echo(
        f"decoded {summary.written} of {summary.rows} rows into {summary.out} "
        f"({summary.format}, {summary.files} files) in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} img/s)"
    )
    for failure in summary.failed:
        typer.echo(f"  not written: {failure['key']}: {failure['reason']}")
