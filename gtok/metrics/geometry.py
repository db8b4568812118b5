"""Statistics of the Gaussians' geometry in GaussianToken tokens.

geometry [N, G, 5] per token = (mean_x, mean_y, scale_x, scale_y, rotation), the token
contract of docs/design.md section 3: means in [-1, 1] (x right, y down), scales are standard
deviations in feature-map pixels, rotation in radians in [0, pi].

Reported: distributions (mean, std and the 1/5/50/95/99th percentiles) of the scales (both
axes pooled), the major and minor scale (max and min of the two), the anisotropy
(major / minor), the rotation and each mean coordinate; and coverage of the image plane:
[-1, 1]^2 is cut into grid x grid cells, `coverage` is the fraction of cells holding at least
one Gaussian centre over all images together, `coverage_per_image` the mean over images of
that fraction for each image alone. `centre_movement`: how far the Gaussians move with the
image, the mean over Gaussians (token positions) of the standard deviation of that Gaussian's
centre across images (sqrt of the summed x and y variances, in [-1, 1] units; 0 for a fixed
lattice; needs at least 2 images to be non-zero). `training_summary` flattens the few
numbers training logs into `metrics.jsonl` and the sample grid's caption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

__all__ = [
    "GEOMETRY_KEYS",
    "Distribution",
    "GeometryStats",
    "geometry_stats",
    "summary_caption",
    "training_summary",
]

PERCENTILES = (1, 5, 50, 95, 99)


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of values (float64 arithmetic)."""

    mean: float
    std: float  # population standard deviation
    p1: float
    p5: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: NDArray[np.float64]) -> Distribution:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        p = np.percentile(v, PERCENTILES)  # linear interpolation, numpy's default
        return cls(float(v.mean()), float(v.std()), *(float(x) for x in p))


@dataclass(frozen=True)
class GeometryStats:
    images: int
    gaussians_per_image: int
    scale: Distribution  # both axes pooled, feature-map pixels
    scale_major: Distribution
    scale_minor: Distribution
    anisotropy: Distribution  # major / minor, >= 1
    rotation: Distribution  # radians
    mean_x: Distribution  # in [-1, 1]
    mean_y: Distribution
    grid: int
    coverage: float  # fraction of grid cells holding a centre, all images together
    coverage_per_image: float  # mean over images of each image's fraction
    centre_movement: float  # mean over Gaussians of its centre's std across images, [-1, 1]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def geometry_stats(geometry: Tensor | ArrayLike, *, grid: int = 16) -> GeometryStats:
    """Summarize geometry [N, G, 5] (see the module doc for the fields and units)."""
    if isinstance(geometry, Tensor):
        geometry = geometry.detach().cpu().numpy()
    g = np.asarray(geometry, dtype=np.float64)
    if g.ndim != 3 or g.shape[2] != 5 or g.shape[0] == 0 or g.shape[1] == 0:
        raise ValueError(f"geometry_stats: expected geometry [N, G, 5], got shape {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("geometry_stats: geometry has non-finite values")
    if grid < 1:
        raise ValueError(f"geometry_stats: grid must be positive, got {grid}")
    mean_x, mean_y, scale_x, scale_y, rotation = (g[..., i] for i in range(5))
    major = np.maximum(scale_x, scale_y)
    minor = np.minimum(scale_x, scale_y)
    if (minor <= 0).any():
        raise ValueError("geometry_stats: scales must be positive")
    # cell of each centre: floor((m + 1) / 2 * grid), the edge m = 1 in the last cell
    col = np.clip(np.floor((mean_x + 1) / 2 * grid), 0, grid - 1).astype(np.int64)
    row = np.clip(np.floor((mean_y + 1) / 2 * grid), 0, grid - 1).astype(np.int64)
    cells = row * grid + col  # [N, G]
    occupied = np.zeros((g.shape[0], grid * grid), dtype=bool)
    np.put_along_axis(occupied, cells, True, axis=1)
    return GeometryStats(
        images=int(g.shape[0]),
        gaussians_per_image=int(g.shape[1]),
        scale=Distribution.of(np.concatenate([scale_x.ravel(), scale_y.ravel()])),
        scale_major=Distribution.of(major),
        scale_minor=Distribution.of(minor),
        anisotropy=Distribution.of(major / minor),
        rotation=Distribution.of(rotation),
        mean_x=Distribution.of(mean_x),
        mean_y=Distribution.of(mean_y),
        grid=grid,
        coverage=float(occupied.any(axis=0).mean()),
        coverage_per_image=float(occupied.mean(axis=1).mean()),
        centre_movement=float(np.sqrt(mean_x.var(axis=0) + mean_y.var(axis=0)).mean()),
    )


GEOMETRY_KEYS = (
    "geo_rotation_std",
    "geo_anisotropy_p50",
    "geo_anisotropy_p95",
    "geo_movement_px",
    "geo_coverage",
)  # the keys of `training_summary`, in its order


def training_summary(stats: GeometryStats, map_size: int) -> dict[str, float]:
    """The geometry numbers training logs (flat, prefixed `geo_`): rotation spread (std,
    radians), median and p95 anisotropy, centre movement across images in map pixels
    (`centre_movement` * map_size / 2) and the mean per-image coverage."""
    return {
        "geo_rotation_std": stats.rotation.std,
        "geo_anisotropy_p50": stats.anisotropy.p50,
        "geo_anisotropy_p95": stats.anisotropy.p95,
        "geo_movement_px": stats.centre_movement * map_size / 2.0,
        "geo_coverage": stats.coverage_per_image,
    }


def summary_caption(summary: dict[str, float]) -> str:
    """`training_summary` as one line of text for a picture's caption."""
    return (
        f"rotation std {summary['geo_rotation_std']:.3f} rad  "
        f"anisotropy p50 {summary['geo_anisotropy_p50']:.2f} p95 "
        f"{summary['geo_anisotropy_p95']:.2f}  centre movement "
        f"{summary['geo_movement_px']:.2f} map px  coverage {summary['geo_coverage']:.1%}"
    )
