"""`gtok pack`: a folder of images -> WebDataset tar shards with per-shard stats."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gtok.cli._common import ConfigOption, JsonFlag, human_bytes, print_json
from gtok.cli._signals import resumable
from gtok.data.images import DEFAULT_MAX_PIXELS


class ImageFormat(StrEnum):
    keep = "keep"
    jpg = "jpg"
    png = "png"
    webp = "webp"


def pack(
    config: ConfigOption = None,
    *,  # the rest by name (as Typer passes them), so required ones need no default
    images_dir: Annotated[
        Path,
        typer.Argument(
            help="The folder of images (any nesting).", show_default=False, metavar="IMAGES_DIR"
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The folder to write the shards into.")
    ],
    per_shard: Annotated[int, typer.Option(help="Input files per shard.", min=1)] = 1000,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="Each first-level sub-folder is a class: write <key>.cls and classes.json.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite/--no-overwrite", help="Replace a previous pack in the output folder."
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that read and check files (0: this one; default: cores - 1).", min=0
        ),
    ] = None,
    max_pixels: Annotated[
        int,
        typer.Option(help="Skip images with more pixels than this (decompression bombs).", min=1),
    ] = DEFAULT_MAX_PIXELS,
    image_format: Annotated[
        ImageFormat,
        typer.Option(
            help="keep: JPEG, PNG and WebP as they are, other formats as PNG; jpg, png, webp: "
            "every sample in that format (as img2dataset writes), re-encoding only files in "
            "another format: png and webp losslessly, jpg at quality 95.",
        ),
    ] = ImageFormat.keep,
    json_output: JsonFlag = False,
) -> None:
    """Pack a folder of images into WebDataset shards (shard-000000.tar, ...) for gtok.

    Files are taken in sorted order; each sample's key is its relative path without the
    extension (`cats/0001`). JPEG, PNG and WebP files are stored as they are, GIF, BMP and
    TIFF files as PNG (or all in one format: --image-format); files in other formats (EPS, PDF,
    ...) or that are empty, truncated or too large are skipped, with the reason in
    shard-NNNNNN_stats.json. Rerunning the same command resumes.

    Example: gtok pack ./photos -o ./shards

    Example (every sample a .jpg, for `to_tuple("jpg", ...)` pipelines): gtok pack ./photos
    -o ./shards --image-format jpg

    Example (class sub-folders): gtok pack ./train -o ./train-shards --labels --per-shard 5000
    """
    from gtok.encode import default_workers
    from gtok.pack import pack_images

    with resumable():
        summary = pack_images(
            images_dir,
            output,
            per_shard=per_shard,
            labels=labels,
            overwrite=overwrite,
            workers=default_workers() if workers is None else workers,
            max_pixels=max_pixels,
            image_format=image_format.value,
        )
    if json_output:
        print_json(summary.to_dict())
        return
    typer.echo(
        f"packed {summary.packed} images, skipped {summary.skipped} of {summary.files} files, "
        f"into {summary.shards} shard{'s' if summary.shards != 1 else ''} "
        f"({human_bytes(summary.bytes)}; "
        f"{summary.shards_already_done} were already done) in {summary.seconds:.1f} s"
    )
    if summary.classes is not None:
        typer.echo(f"{summary.classes} classes: {summary.classes_file}")
    if summary.hidden_ignored:
        typer.echo(
            f"{summary.hidden_ignored} hidden entries (names starting with '.') not packed, "
            f"e.g. {summary.hidden_examples[0]}"
        )
    typer.echo(f"shards: {Path(summary.out) / summary.shard_pattern}")
