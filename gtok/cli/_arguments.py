"""Arguments and options that several commands share: the input shards, the token store, and
`--refine-*` (encode, eval, demo)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from gtok.cli._common import choices
from gtok.model.config import REFINE_LOSSES

__all__ = [
    "RefineLrOption",
    "RefineStepsOption",
    "ShardsArgument",
    "StoreArgument",
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

if TYPE_CHECKING:  # an enumeration built at run time: a type checker sees a StrEnum
    RefineLoss = StrEnum
else:
    RefineLoss = choices("RefineLoss", REFINE_LOSSES)

RefineLossOption = Annotated[
    RefineLoss | None,
    typer.Option(
        help="Loss of --refine-steps, per image: psnr (the log of the squared error), mse or "
        "l1. [default: psnr]"
    ),
]
