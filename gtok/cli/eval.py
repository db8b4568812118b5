"""`gtok eval`: score a tokenizer (or saved reconstructions) by the standard protocol."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict

import typer
from rich.table import Table

from gtok.cli._arguments import RefineLossOption, RefineLrOption, RefineStepsOption, ShardsArgument
from gtok.cli._columns import ImageColumnOption, KeyColumnOption
from gtok.cli._common import ConfigOption, JsonFlag, print_json, table_text
from gtok.console import console, is_quiet

if TYPE_CHECKING:
    from gtok.data.parquetio import Columns


class Metric(StrEnum):
    lpips_vgg = "lpips-vgg"
    lpips_alex = "lpips-alex"
    rfid = "rfid"


class _Shared(TypedDict):
    """The settings `evaluate_model` and `evaluate_pairs` both take from the flags."""

    weights: dict[str, Path | None]
    skip_metrics: list[str]
    batch_size: int
    workers: int
    limit: int | None
    device: str
    grid_images: int
    jpeg_draft: bool
    columns: Columns


def _weights_option(key: str, filename: str) -> typer.models.OptionInfo:
    return typer.Option(
        f"--{key}-weights", help=f"Path of {filename} (default: looked up, see `gtok env`)."
    )


def eval_command(
    config: ConfigOption = None,
    shards: ShardsArgument = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Tokenizer to evaluate (with SHARDS; default: the default model shipped "
            "with gtok), or to decode a store.",
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="A second tokenizer, scored on the same images side by side."),
    ] = None,
    reference: Annotated[
        list[str] | None,
        typer.Option(help="Original shards to score --reconstructed against (repeatable)."),
    ] = None,
    reconstructed: Annotated[
        str | None,
        typer.Option(
            help="Folder of <key>.png reconstructions (as `gtok decode` writes) or a token store."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Decode --reconstructed STORE with --model anyway.")
    ] = False,
    size: Annotated[
        int | None,
        typer.Option(help="Crop originals to this for a folder (default: the PNGs' size)."),
    ] = None,
    resize: Annotated[
        int | None,
        typer.Option(help="Resize originals' shorter side to this before the crop."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N usable images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding processes (0: decode in this process; default: cores - 1).", min=0
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (Apple; untested on a Mac).")
    ] = "auto",
    vgg16_weights: Annotated[
        Path | None, _weights_option("vgg16", "vgg16-397923af.pth (LPIPS-VGG backbone)")
    ] = None,
    lpips_vgg_weights: Annotated[
        Path | None, _weights_option("lpips-vgg", "vgg.pth (LPIPS v0.1 VGG heads)")
    ] = None,
    alexnet_weights: Annotated[
        Path | None, _weights_option("alexnet", "alexnet-owt-7be5be79.pth (LPIPS-Alex backbone)")
    ] = None,
    lpips_alex_weights: Annotated[
        Path | None, _weights_option("lpips-alex", "alex.pth (LPIPS v0.1 AlexNet heads)")
    ] = None,
    inception_weights: Annotated[
        Path | None, _weights_option("inception", "pt_inception-2015-12-05-6726825d.pth (rFID)")
    ] = None,
    refine_steps: RefineStepsOption = 0,
    refine_lr: RefineLrOption = None,
    refine_loss: RefineLossOption = None,
    skip: Annotated[
        list[Metric] | None, typer.Option(help="Do not compute this metric (repeatable).")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write a report into this folder: index.html (open it in a browser) with "
            "its pictures and plots, metrics.json, per_image.csv, grid.png.",
            file_okay=False,
        ),
    ] = None,
    jpeg_draft: Annotated[
        bool,
        typer.Option(
            "--jpeg-draft/--no-jpeg-draft",
            help="Decode large JPEGs at reduced scale first, as `gtok encode` does for a new "
            "store, so that the numbers equal a store's (a store's originals are decoded as "
            "it records); --no-jpeg-draft: exact decoding.",
        ),
    ] = True,
    grid_images: Annotated[
        int,
        typer.Option(help="Images in the report grid: the best, median and worst by PSNR.", min=0),
    ] = 9,
    image_column: ImageColumnOption = None,
    key_column: KeyColumnOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Reconstruct and score: PSNR, SSIM, LPIPS (VGG, Alex), rFID, codebook usage, geometry.

    A metric whose weight file is missing is reported unavailable (with the file name and
    where to put it); the others still run. Samples that cannot be decoded are skipped and
    listed with their reasons.

    Example: gtok eval ./val-shards --model runs/cifar --limit 1000 --report report/

    Example: gtok eval ./val-shards -m runs/cifar --compare runs/vq-cifar --json

    Example (what encode-time refinement gains): gtok eval ./val-shards -m runs/cifar
    --refine-steps 50 --compare runs/cifar

    Example: gtok eval --reference ./val-shards --reconstructed recon/

    Example: gtok eval --reference ./val-shards --reconstructed tokens.zarr
    """
    from gtok.data.parquetio import Columns
    from gtok.encode import default_workers, refine_settings
    from gtok.evaluate import evaluate_model, evaluate_pairs, unavailable_notes, write_report

    paths = {
        "vgg16": vgg16_weights,
        "lpips-vgg": lpips_vgg_weights,
        "alexnet": alexnet_weights,
        "lpips-alex": lpips_alex_weights,
        "inception": inception_weights,
    }
    common: _Shared = {
        "weights": paths,
        "skip_metrics": [m.name for m in skip or ()],
        "batch_size": batch_size,
        "workers": default_workers() if workers is None else workers,
        "limit": limit,
        "device": device,
        "grid_images": grid_images if report is not None else 0,
        "jpeg_draft": jpeg_draft,
        "columns": Columns(image=image_column, key=key_column),
    }
    refine = refine_settings(refine_steps, refine_lr, refine_loss)
    if reference or reconstructed:
        if refine.enabled:
            raise typer.BadParameter("--refine-steps applies when eval encodes (SHARDS).")
        if shards or compare:
            raise typer.BadParameter(
                "--reference/--reconstructed score saved reconstructions; SHARDS and "
                "--compare belong to scoring a --model."
            )
        if not (reference and reconstructed):
            raise typer.BadParameter("give both --reference SHARDS and --reconstructed DIR.")
        result = evaluate_pairs(
            reference, reconstructed, model=model, force=force, size=size, resize=resize, **common
        )
    else:
        if not shards:
            raise typer.BadParameter(
                "give SHARDS (and --model), or --reference SHARDS --reconstructed DIR_OR_STORE."
            )
        if size is not None:
            raise typer.BadParameter("--size applies to --reconstructed folders only.")
        result = evaluate_model(
            shards, model, compare=compare, resize=resize, refine=refine, **common
        )
    if not is_quiet():
        for note in unavailable_notes(result.document["unavailable"], paths):
            console.print(note, soft_wrap=True, markup=False)
    if report is not None:
        written = write_report(result, report)
        console.print(f"report: {written['index.html']} (metrics.json, per_image.csv beside it)")
    if json_output:
        print_json(result.document)
        return
    typer.echo(render(result.document))


def render(document: dict) -> str:
    """The results as a table, then the samples that could not be scored (the reasons of
    unavailable metrics go to stderr, `unavailable_notes`)."""
    from gtok.evaluate.summary import model_name, summary_rows

    other = document.get("compare")
    table = Table(title=f"gtok eval: {document['n']} images")
    table.add_column("metric", style="bold")
    table.add_column(model_name(document["model"]), justify="right")
    if other is not None:
        table.add_column(model_name(other["model"]), justify="right")
        table.add_column("difference", justify="right")
    for label, cells in summary_rows(document):
        table.add_row(label, *cells)
    lines = [table_text(table)]
    if document["skipped"]:
        lines.append(f"{document['skipped']} samples not scored:")
        lines += [f"  {s['key']}: {s['reason']}" for s in document["skipped_samples"][:20]]
        if document["skipped"] > 20:
            lines.append(f"  ... and {document['skipped'] - 20} more (all in --json / --report)")
    return "\n".join(lines)
