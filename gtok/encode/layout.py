"""The checked `TokenLayout` of `encode_shards(layout=..., geometry_codebook=...)` (`gtok encode
--layout NAME [--geometry-codebook PATH]`)."""

from __future__ import annotations

import math
import os

from gtok.encode.model import EncodingModel
from gtok.errors import ArgumentError
from gtok.store.geometry_bins import GeometryBinning
from gtok.store.geometry_codebook import load_codebook
from gtok.store.layouts import CODEBOOK, LAYOUTS, RASTER, TokenLayout

__all__ = ["token_layout_for"]

_FIT = "fit one with gtok fit-codebook on a store of this model encoded with geometry_bits=8"


def token_layout_for(
    model: EncodingModel,
    binning: GeometryBinning | None,
    layout: str,
    codebook_path: str | os.PathLike | None,
) -> tuple[TokenLayout, dict | None]:
    """The layout `layout` for `model` (with the `binning` of `geometry_bits`, or None) and
    the store header's `geometry_codebook` record (None unless layout is "codebook"); an
    `ArgumentError` in one sentence for a combination that cannot work."""
    if layout not in LAYOUTS:
        raise ArgumentError(
            f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.", "layout"
        )
    if layout != CODEBOOK and codebook_path is not None:
        raise ArgumentError(
            "geometry_codebook goes with layout='codebook'; add that, or drop it.",
            "geometry_codebook",
            "layout",
        )
    if layout != "fields" and model.config.kind != "gaussian":
        raise ArgumentError(
            f"layout={layout!r} orders Gaussian geometry, but {model.path} is a "
            f"{model.config.kind} model whose tokens have none; leave layout out.",
            "layout",
        )
    if layout == RASTER and binning is None:
        raise ArgumentError(
            "layout='raster' sorts Gaussians by binned position; add geometry_bits=8.",
            "layout",
            "geometry_bits",
        )
    if layout != CODEBOOK:
        return TokenLayout(layout, binning), None
    if binning is not None:
        raise ArgumentError(
            "layout='codebook' stores one geometry id per Gaussian instead of bins; leave "
            "geometry_bits out.",
            "layout",
            "geometry_bits",
        )
    if codebook_path is None:
        raise ArgumentError(
            f"layout='codebook' needs a geometry_codebook file; {_FIT}.",
            "layout",
            "geometry_codebook",
            "geometry_bits",
        )
    codebook = load_codebook(codebook_path)
    _check_fits(model, codebook_path, codebook.num_tokens, codebook.scale_min, codebook.scale_max)
    return TokenLayout(layout, None, codebook), codebook.to_attrs(codebook_path)


def _check_fits(
    model: EncodingModel, path: str | os.PathLike, gaussians: int, low: float, high: float
) -> None:
    """The codebook was fitted for this model's Gaussians per image and scale range."""
    own = GeometryBinning.for_model(8, model.tokenizer)
    same_range = math.isclose(low, own.scale_min) and math.isclose(high, own.scale_max)
    if gaussians != model.config.num_tokens or not same_range:
        raise ArgumentError(
            f"{path} was fitted for {gaussians} Gaussians with scales {low:g}..{high:g}, not "
            f"for {model.path} ({model.config.num_tokens} Gaussians, scales "
            f"{own.scale_min:g}..{own.scale_max:g}); {_FIT}.",
            "geometry_bits",
        )
