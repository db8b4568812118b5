"""`gtok convert-official`: the authors' released checkpoint -> a gtok model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gtok.cli._common import JsonFlag, print_json


def convert_official(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="The authors' Lightning checkpoint (.ckpt).", dir_okay=False, metavar="CHECKPOINT"
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Model directory to write.", file_okay=False)
    ],
    preset: Annotated[
        str | None,
        typer.Option(help="cifar or imagenet (default: inferred from the checkpoint)."),
    ] = None,
    ema: Annotated[
        bool, typer.Option("--ema/--no-ema", help="Use the EMA weights, as the paper reports.")
    ] = True,
    json_output: JsonFlag = False,
) -> None:
    """Convert a GaussianToken checkpoint released by the paper's authors.

    Reads it without unpickling and checks every key and shape against the authors' model.

    Writes their EMA weights as config.json + model.safetensors (numbers not yet verified).

    Example: gtok convert-official cifar-gqgan-gs64-cb1024/last.ckpt -o models/cifar
    """
    from gtok.model.convert import convert_official as convert

    report = convert(checkpoint, output, preset=preset, ema=ema)
    if json_output:
        print_json(report.to_dict())
        return
    typer.echo(
        f"wrote {report.model_dir} ({report.preset}): {report.tensors_written} tensors, "
        f"{report.taken_from_ema} from EMA weights"
    )
    for reason, count in sorted(report.dropped.items()):
        typer.echo(f"  dropped {count}: {reason}")
