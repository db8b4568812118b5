"""The options that say how to read Parquet inputs (`encode`, `eval`, `train`, `verify`)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["CaptionColumnOption", "ImageColumnOption", "KeyColumnOption"]

_PANEL = "Parquet inputs"

ImageColumnOption = Annotated[
    str | None,
    typer.Option(
        help="The column of Parquet inputs that holds the images. [default: the Hugging Face "
        "Image column, a {bytes, path} struct column or a binary jpg/png/webp column]",
        rich_help_panel=_PANEL,
    ),
]

CaptionColumnOption = Annotated[
    str | None,
    typer.Option(
        help="The column of Parquet inputs kept as captions. [default: caption, then text, "
        "when present]",
        rich_help_panel=_PANEL,
    ),
]

KeyColumnOption = Annotated[
    str | None,
    typer.Option(
        help="The column of Parquet inputs whose values are the sample keys (unique per "
        "file). [default: the row number]",
        rich_help_panel=_PANEL,
    ),
]
