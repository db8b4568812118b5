"""Fitting a geometry codebook on a token store (`gtok fit-codebook`): the store's geometry
bins give the scale range, `gtok.store.geometry_codebook.fit_codebook` the entries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gtok.errors import ArgumentError, GtokError
from gtok.store.geometry_codebook import (
    MAX_SIZE,
    RATE_WEIGHT,
    SHAPE_WEIGHT,
    fit_codebook,
)
from gtok.store.reader import TokenStore

__all__ = ["fit_store_codebook"]


def _check(size: int, shape_weight: float, rate_weight: float, sample: int) -> None:
    if not 1 <= size <= MAX_SIZE:
        raise ArgumentError(f"size must be in 1..{MAX_SIZE}, got {size}.", "size")
    if not shape_weight > 0:
        raise ArgumentError(f"shape_weight must be above 0, got {shape_weight}.", "shape_weight")
    if not rate_weight >= 0:
        raise ArgumentError(f"rate_weight must be 0 or more, got {rate_weight}.", "rate_weight")
    if sample < 1:
        raise ArgumentError(f"sample must be at least 1, got {sample}.", "sample")


def fit_store_codebook(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 1024,
    shape_weight: float = SHAPE_WEIGHT,
    rate_weight: float = RATE_WEIGHT,
    seed: int = 0,
    sample: int = 200_000,
) -> dict:
    """Fit a codebook of at most `size` entries on the geometry of the token store `store`
    (encoded with `--geometry-bits`, whose range the codebook works in) and write it to
    `out`, which must not exist yet (stores encoded with a codebook name its sha256).
    Returns the file, its sha256, the entries, the mean squared residual error (shape
    space) and the mean length of the store's geometry ids (bits per Gaussian)."""
    _check(size, shape_weight, rate_weight, sample)
    if Path(out).exists():
        raise GtokError(
            f"{out} exists, and stores encoded with it would no longer match it; write the "
            "codebook to another file."
        )
    tokens = TokenStore(store, fields=("geometry",))
    binning = tokens.geometry_binning
    if binning is None:
        raise GtokError(
            f"{store} has no geometry bins to take the scale range from; encode it with "
            "--geometry-bits 8."
        )
    geometry = np.concatenate([b["geometry"] for b in tokens.batches(4096)]).astype(np.float32)
    if not len(geometry):
        raise GtokError(f"{store} has no rows to fit a codebook on.")
    codebook = fit_codebook(
        geometry, size, binning.scale_min, binning.scale_max,
        shape_weight=shape_weight, rate_weight=rate_weight, seed=seed, sample=sample,
    )  # fmt: skip
    sha256 = codebook.save(out)
    ids = codebook.quantize(geometry).astype(np.int64)
    error = codebook.residuals(geometry) - codebook.centroids[ids]
    return {"codebook": str(out), "sha256": sha256, "size": size, "entries": codebook.size,
            "shape_weight": shape_weight, "rate_weight": rate_weight, "rows": len(geometry),
            "mean_squared_error": float((error**2).sum(-1).mean()),
            "bits_per_gaussian": float(codebook.entry_bits[ids].mean())}  # fmt: skip
