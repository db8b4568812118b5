"""Integer bins for Gaussian geometry (`gtok encode --geometry-bits B`).

Each of the five geometry parameters (mean_x, mean_y, scale_x, scale_y, rotation) is cut
into 2^B bins (B in `MIN_BITS..MAX_BITS`); a bin's value is its centre:

    mean_x, mean_y     uniform over [-1, 1]
    scale_x, scale_y   uniform in log space over [scale_min, scale_max] (the model's
                       scale range: config `scale_min` .. its r_max buffer), map pixels
    rotation           uniform over [0, pi), wrapping: a Gaussian turned by pi is the same
                       Gaussian, so rotation pi falls into bin 0

Values outside a range go to its first or last bin. A store records the binning in its
header (`to_attrs`), keeps the bins as `geometry_codes` [N, G, 5] (uint8 for B <= 8, else
uint16) and `geometry` as `dequantize(codes)` in its geometry dtype, so readers that know
nothing of bins decode the quantized tokens unchanged. (float16 holds bin centres exactly
enough to find their bin again up to B = 10; with more bits `geometry` is the nearest
float16, and `geometry_codes` stays the exact token.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FIELDS",
    "MAX_BITS",
    "MIN_BITS",
    "GeometryBinning",
    "code_dtype",
    "from_unit",
    "to_unit",
]

MIN_BITS, MAX_BITS = 4, 16
FIELDS = ("mean_x", "mean_y", "scale_x", "scale_y", "rotation")  # geometry[..., i]


def code_dtype(bits: int) -> np.dtype:
    """The smallest unsigned dtype holding `bits`-bit bins: uint8 or uint16."""
    return np.dtype("uint8" if bits <= 8 else "uint16")


def to_unit(geometry: np.ndarray, scale_min: float, scale_max: float) -> np.ndarray:
    """geometry [..., 5] -> float64 [..., 5]: each parameter's place in [0, 1) of its range
    (means linear over [-1, 1], scales log over [scale_min, scale_max], rotation over
    [0, pi) wrapped); scales below scale_min count as scale_min."""
    g = np.asarray(geometry, dtype=np.float64)
    low, high = math.log(scale_min), math.log(scale_max)
    scales = (np.log(np.maximum(g[..., 2:4], scale_min)) - low) / (high - low)
    return np.concatenate(
        [(g[..., 0:2] + 1.0) / 2.0, scales, np.mod(g[..., 4:5], math.pi) / math.pi], axis=-1
    )


def from_unit(unit: np.ndarray, scale_min: float, scale_max: float) -> np.ndarray:
    """Inverse of `to_unit`: float [..., 5] places -> float32 geometry [..., 5]."""
    unit = np.asarray(unit, dtype=np.float64)
    low, high = math.log(scale_min), math.log(scale_max)
    out = np.concatenate(
        [
            unit[..., 0:2] * 2.0 - 1.0,
            np.exp(low + unit[..., 2:4] * (high - low)),
            unit[..., 4:5] * math.pi,
        ],
        axis=-1,
    )
    return out.astype(np.float32)


@dataclass(frozen=True)
class GeometryBinning:
    """2^bits bins per geometry parameter; scales log-uniform over [scale_min, scale_max]."""

    bits: int
    scale_min: float  # map pixels, > 0
    scale_max: float  # map pixels, > scale_min

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and MIN_BITS <= self.bits <= MAX_BITS):
            raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not (0 < self.scale_min < self.scale_max and math.isfinite(self.scale_max)):
            raise ValueError(
                f"need 0 < scale_min < scale_max, got {self.scale_min}, {self.scale_max}"
            )

    @property
    def bins(self) -> int:
        """Bins per parameter: 2^bits."""
        return 1 << self.bits

    @property
    def dtype(self) -> np.dtype:
        return code_dtype(self.bits)

    def quantize(self, geometry: np.ndarray) -> np.ndarray:
        """geometry [..., 5] (finite, any float dtype) -> bins [..., 5] in `dtype`."""
        bins = np.floor(to_unit(geometry, self.scale_min, self.scale_max) * self.bins)
        return np.clip(bins, 0, self.bins - 1).astype(self.dtype)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """bins [..., 5] -> bin centres [..., 5] float32 (the units of `Tokens.geometry`)."""
        centre = (np.asarray(codes, dtype=np.float64) + 0.5) / self.bins
        return from_unit(centre, self.scale_min, self.scale_max)

    def row_problems(
        self, codes: np.ndarray, geometry: np.ndarray | None = None
    ) -> list[tuple[int, str]]:
        """(i, what is wrong) for each row i of codes [B, G, 5] holding a bin >= 2^bits, or
        whose stored geometry [B, G, 5] (finite rows only) is not `dequantize(codes)` in
        geometry's dtype."""
        codes = np.asarray(codes)
        flat = codes.reshape(len(codes), -1)
        top = flat.max(axis=1) if flat.shape[1] else np.zeros(len(flat), flat.dtype)
        problems = [
            (i, f"geometry bin {int(top[i])} beyond the {self.bins} bins of the header")
            for i in np.flatnonzero(top >= self.bins).tolist()
        ]
        if geometry is not None and len(geometry):
            geometry = np.asarray(geometry)
            inside = np.minimum(codes, self.bins - 1)
            expected = self.dequantize(inside).astype(geometry.dtype)
            differs = (expected != geometry).reshape(len(geometry), -1).any(axis=1)
            finite = np.isfinite(geometry).reshape(len(geometry), -1).all(axis=1)
            problems += [
                (i, "geometry that is not the centre of its geometry_codes bins")
                for i in np.flatnonzero(differs & finite & (top < self.bins)).tolist()
            ]
        return sorted(problems)

    def to_attrs(self) -> dict[str, Any]:
        """The store header record: bits, bins, and each parameter's range and transform."""
        return {
            "bits": self.bits,
            "bins": self.bins,
            "fields": list(FIELDS),
            "mean": {"transform": "uniform", "low": -1.0, "high": 1.0},
            "scale": {"transform": "log", "low": self.scale_min, "high": self.scale_max},
            "rotation": {"transform": "uniform-wrap", "low": 0.0, "high": math.pi},
            "value": "bin centre",
        }

    @classmethod
    def from_attrs(cls, record: dict[str, Any]) -> GeometryBinning:
        """Inverse of `to_attrs` (KeyError, TypeError or ValueError when malformed)."""
        scale = record["scale"]
        return cls(record["bits"], float(scale["low"]), float(scale["high"]))

    @classmethod
    def for_model(cls, bits: int, tokenizer: Any) -> GeometryBinning:
        """The binning of a GaussianTokenizer: scales over [config.scale_min, its r_max]."""
        r_max = float(tokenizer.gaussian_embed.scale_range.r_max)
        return cls(bits, float(tokenizer.config.scale_min), r_max)
