"""Arguments the token-store commands (`encode`, `info`, `verify`) share."""

from __future__ import annotations

from typing import Annotated

import typer

from gtok.cli._common import choices
from gtok.model.config import REFINE_LOSSES

__all__ = [
    "RefineLrOption",
    "RefineStepsOption",
    "ShardsArgument",
    "StoreArgument",
    "human_bytes",
]

ShardsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Folders of .tar shards, .parquet files or images, .tar or .parquet files, globs "
        "or brace patterns (train-{000000..000099}.tar); fsspec URLs work too.",
        show_default=False,
        metavar="SHARDS",
    ),
]

StoreArgument = Annotated[
    str,
    typer.Argument(
        help="The token store (a folder like tokens.zarr, or an fsspec URL).", metavar="STORE"
    ),
]

RefineStepsOption = Annotated[
    int,
    typer.Option(
        help="Refine each image's Gaussian geometry with this many Adam steps against the "
        "image (decoder and codes fixed; 0: off). Slower, sharper tokens.",
    ),
]

RefineLrOption = Annotated[
    float | None,
    typer.Option(
        help="Peak step size of --refine-steps (linear warm-up, then linear decay). [default: 0.2]"
    ),
]

RefineLoss = choices("RefineLoss", REFINE_LOSSES)

RefineLossOption = Annotated[
    RefineLoss | None,
    typer.Option(
        help="Loss of --refine-steps, per image: psnr (the log of the squared error), mse or "
        "l1. [default: psnr]"
    ),
]


def human_bytes(size: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
