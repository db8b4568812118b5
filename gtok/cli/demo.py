"""`gtok demo`: pack, encode, decode and evaluate photographs shipped with gtok."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gtok.cli._arguments import RefineLossOption, RefineLrOption, RefineStepsOption
from gtok.cli._common import JsonFlag, print_json


def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The folder to write everything into.")
    ] = Path("demo-out"),
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A gtok model directory or run directory (default: the default model "
            "shipped with gtok).",
        ),
    ] = None,
    photos: Annotated[
        Path | None,
        typer.Option(
            help="A folder of your own images to use instead (default: the photographs "
            "shipped with gtok).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    refine_steps: RefineStepsOption = 0,
    refine_lr: RefineLrOption = None,
    refine_loss: RefineLossOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Show the whole job on 36 small photographs that ship with gtok (public domain / CC0).

    Packs them into WebDataset shards, encodes them into a token store with the default
    model, decodes the tokens back into images, scores the reconstructions (PSNR, SSIM, ...)
    and writes a report page (index.html: metrics, originals | reconstructions | Gaussians of
    the best, median and worst photographs, plots of PSNR, code usage and geometry). A rerun
    replaces the previous demo's files.

    Example: gtok demo

    Example: gtok demo -o /tmp/demo --model runs/tiny --json

    Example (your own photographs): gtok demo -o my-demo --photos ~/Pictures/holiday

    Example (Gaussians fitted to each photograph): gtok demo --refine-steps 50
    """
    from gtok.demo import DEMO_PHOTOS, run_demo
    from gtok.encode import refine_settings

    result = run_demo(
        output,
        model=model,
        photos=photos or DEMO_PHOTOS,
        device=device,
        refine=refine_settings(refine_steps, refine_lr, refine_loss),
    )
    if json_output:
        print_json(result.to_dict())
        return
    psnr = "unavailable" if result.psnr is None else f"{result.psnr:.2f} dB"
    ssim = "unavailable" if result.ssim is None else f"{result.ssim:.4f}"
    typer.echo(
        f"{result.images} images, {result.tokens_per_image} tokens each: "
        f"PSNR {psnr}, SSIM {ssim} ({result.seconds:.1f} s)"
    )
    if result.unavailable:
        typer.echo(
            f"not computed: {', '.join(result.unavailable)} (their weight files are not "
            f"installed; see `gtok env` and {result.metrics_file})"
        )
    typer.echo("look at:")
    rows = [
        (result.page_file, "the report: open it in a browser"),
        (result.grid_file, "originals | reconstructions | Gaussians"),
        (result.metrics_file, "every metric and the evaluation protocol"),
        (result.recon, "each reconstruction and its Gaussians as PNG"),
        (result.store, f"the tokens (gtok info {result.store})"),
        (result.shards, "the images as WebDataset shards"),
    ]
    width = max(len(path) for path, _ in rows)
    for path, what in rows:
        typer.echo(f"  {path:<{width}}  {what}")
