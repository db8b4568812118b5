"""Token layouts of a GaussianToken store (`gtok encode --layout NAME`), recorded in its header.

    fields     today's (and every older store's): Gaussians in the model's index order,
               each (code id, 5 geometry bins) with --geometry-bits B: 6 ids per Gaussian
    raster     the same ids, the Gaussians sorted into raster order of their quantized
               position: by row band (floor(mean_y place x sqrt(G)), top to bottom), then
               by mean_x bin, then by index; every per-Gaussian array (indices, geometry,
               geometry_codes) is permuted alike, so the decoded image is unchanged (the
               rasterizer sums the Gaussians in any order)
    codebook   Gaussians in index order, each (code id, geometry id) from a learned
               geometry codebook (`gtok.store.geometry_codebook`, --geometry-codebook):
               2 ids per Gaussian; `geometry` holds the codebook's decoded geometry

The header's `layout` record is {"name": NAME} (absent in stores written before layouts:
"fields"); the codebook layout's header also has a `geometry_codebook` record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gtok.store.geometry_bins import GeometryBinning
from gtok.store.geometry_codebook import GeometryCodebook

__all__ = [
    "CODEBOOK",
    "FIELDS_LAYOUT",
    "LAYOUTS",
    "RASTER",
    "StoredGeometry",
    "TokenLayout",
    "raster_order",
]

FIELDS_LAYOUT, RASTER, CODEBOOK = "fields", "raster", "codebook"
LAYOUTS = (FIELDS_LAYOUT, RASTER, CODEBOOK)


def raster_order(codes: np.ndarray, bins: int) -> np.ndarray:
    """Geometry bins [n, G, 5] (2^B = `bins` per parameter) -> int64 [n, G]: each row's
    Gaussians in raster order (row band of mean_y, then mean_x bin, then index)."""
    bands = max(1, round(math.sqrt(codes.shape[1])))
    band = (codes[..., 1].astype(np.int64) * bands) // bins
    return np.lexsort((codes[..., 0], band), axis=-1)


@dataclass(frozen=True)
class StoredGeometry:
    """One chunk's tokens as a store of some layout keeps them (rows of finite geometry)."""

    indices: np.ndarray  # [n, G] code ids
    geometry: np.ndarray  # [n, G, 5] float32: what decode uses
    codes: np.ndarray | None  # [n, G, 5] geometry bins (fields, raster), else None
    ids: np.ndarray | None  # [n, G] geometry ids (codebook), else None


@dataclass(frozen=True)
class TokenLayout:
    """How an encode stores a GaussianToken's geometry: a layout name and what it needs
    (the binning of --geometry-bits for fields and raster, a codebook for codebook)."""

    name: str = FIELDS_LAYOUT
    binning: GeometryBinning | None = None
    codebook: GeometryCodebook | None = None

    def __post_init__(self) -> None:
        if self.name not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.name!r}")
        if (self.name == CODEBOOK) != (self.codebook is not None):
            raise ValueError("a geometry codebook goes with the codebook layout, and only it")
        if self.name == RASTER and self.binning is None:
            raise ValueError("the raster layout needs geometry bins")

    def store(self, indices: np.ndarray, geometry: np.ndarray) -> StoredGeometry:
        """indices [n, G], the model's geometry [n, G, 5] (finite) -> this layout's tokens."""
        if self.codebook is not None:
            ids = self.codebook.quantize(geometry)
            return StoredGeometry(indices, self.codebook.dequantize(ids), None, ids)
        if self.binning is None:
            return StoredGeometry(indices, geometry, None, None)
        codes = self.binning.quantize(geometry)
        if self.name == RASTER:
            order = raster_order(codes, self.binning.bins)
            indices = np.take_along_axis(indices, order, axis=1)
            codes = np.take_along_axis(codes, order[..., None], axis=1)
        return StoredGeometry(indices, self.binning.dequantize(codes), codes, None)
