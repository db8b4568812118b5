"""A learned geometry codebook: one geometry id per Gaussian (`gtok encode --layout codebook`).

Each Gaussian's five geometry parameters become one id of a codebook of K entries, fitted
by k-means on a training store. The k-means runs in a *shape space* built on the unit
places of `gtok.store.geometry_bins.to_unit` (each parameter's place in [0, 1) of its
range: means linear, scales log, rotation over [0, pi)):

    (x, y, w m, w a cos 2 pi r, w a sin 2 pi r)

with x, y the mean's places, m and a the mean and half-difference of the two log-scale
places, r the rotation's place and w the shape weight. A near-round Gaussian (a ~ 0) has
no angle to spend codebook entries on, a Gaussian turned by pi, or with its axes swapped
and turned by pi/2, is the same point, and w trades position against shape. The points
are residuals from each Gaussian index's mean (the `anchors`: the encoder places Gaussian
i near the same spot of every image, so the anchor carries what all images share and the
codebook only the image's own offset). A Gaussian's geometry is decoded as its index's
anchor plus its centroid, mapped back and clipped to the ranges.

The k-means can be entropy-constrained: with a rate weight lambda > 0, a Gaussian goes to
the entry that minimizes squared distance + lambda x the entry's length (-log2 of its share
of the fitted Gaussians, in bits), in the fit and when encoding. Frequent entries win
near-ties and rare ones fall out, so the ids cost a sequence model fewer bits for a given
distortion than a smaller plain codebook would (docs/results.md). lambda = 0 is plain
k-means (nearest centroid).

A codebook is one `.npz` file (numpy arrays, no pickles): `anchors` [G, 5], `centroids`
[K, 5] (float64, shape space), `lengths` [K] (bits), `scale_range` [2] (map pixels),
`shape_weight` [] (w) and `rate_weight` [] (lambda).
A store encoded with it records the file's absolute path and sha256 in its header
(`to_attrs`); readers refuse the store's token stream when the file is gone or differs,
since the ids mean nothing without it. The store's `geometry` array holds the decoded
(centroid) geometry, so decode and eval need no codebook.

    codebook = fit_codebook(store_geometry, 1024, scale_min, scale_max, seed=0)
    codebook.save("codebook.npz")
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from math import log2
from pathlib import Path
from typing import Any

import numpy as np

from gtok.errors import GtokError
from gtok.outputs import AtomicFile
from gtok.store.geometry_bins import from_unit, to_unit

__all__ = [
    "RATE_WEIGHT",
    "SHAPE_WEIGHT",
    "GeometryCodebook",
    "fit_codebook",
    "from_shape_space",
    "load_codebook",
    "to_shape_space",
]

ID_DTYPE = np.dtype("uint16")
MAX_SIZE = int(np.iinfo(ID_DTYPE).max)  # ids 0..65534; 65535 is the store's fill
SHAPE_WEIGHT = 0.4  # w: shape against position (the sweep in docs/results.md)
RATE_WEIGHT = 3e-5  # lambda: squared shape-space distance per bit (docs/results.md)
_CHUNK = 1 << 15  # points per distance block (memory: _CHUNK x K float64)


@dataclass(frozen=True, eq=False)
class GeometryCodebook:
    """Per-index anchors [G, 5] and K centroids [K, 5] (float64 shape-space residuals),
    with each entry's length [K] (bits) for the entropy-constrained assignment."""

    anchors: np.ndarray
    centroids: np.ndarray
    scale_min: float  # map pixels: the range `to_unit` maps scales from
    scale_max: float
    shape_weight: float = SHAPE_WEIGHT  # w of the shape space
    rate_weight: float = 0.0  # lambda; 0: nearest centroid
    lengths: np.ndarray | None = None  # [K] bits; None: log2 K each

    @property
    def entry_bits(self) -> np.ndarray:
        """[K]: each entry's length in bits (`lengths`, or log2 K each without them)."""
        return self.lengths if self.lengths is not None else np.full(self.size, log2(self.size))

    @property
    def penalties(self) -> np.ndarray:
        """[K]: what the assignment adds to each entry's squared distance (lambda x length)."""
        return self.rate_weight * self.entry_bits

    @property
    def size(self) -> int:
        """K: geometry ids 0..K-1."""
        return len(self.centroids)

    @property
    def num_tokens(self) -> int:
        """G: Gaussians per image the anchors are for."""
        return len(self.anchors)

    def points(self, geometry: np.ndarray) -> np.ndarray:
        """geometry [..., 5] -> its shape-space points [..., 5] (float64)."""
        unit = to_unit(geometry, self.scale_min, self.scale_max)
        return to_shape_space(unit, self.shape_weight)

    def residuals(self, geometry: np.ndarray) -> np.ndarray:
        """geometry [n, G, 5] -> shape-space residuals from the anchors [n, G, 5] (float64)."""
        return self.points(geometry) - self.anchors

    def quantize(self, geometry: np.ndarray) -> np.ndarray:
        """geometry [n, G, 5] -> geometry ids [n, G] (uint16): the entry of least squared
        distance + penalty (the nearest centroid when lambda is 0)."""
        residuals = self.residuals(geometry)
        ids = nearest(residuals.reshape(-1, 5), self.centroids, self.penalties)
        return ids.reshape(residuals.shape[:-1])

    def dequantize(self, ids: np.ndarray) -> np.ndarray:
        """geometry ids [n, G] -> geometry [n, G, 5] float32 (anchor + centroid)."""
        points = self.anchors + self.centroids[np.asarray(ids, dtype=np.int64)]
        unit = from_shape_space(points, self.shape_weight)
        return from_unit(unit, self.scale_min, self.scale_max)

    def save(self, path: str | os.PathLike) -> str:
        """Write the codebook to `path` (.npz), whole or not at all; returns its sha256."""
        with AtomicFile(path) as f:
            np.savez(
                f,
                anchors=self.anchors,
                centroids=self.centroids,
                scale_range=np.array([self.scale_min, self.scale_max]),
                lengths=self.entry_bits,
                shape_weight=np.array(self.shape_weight),
                rate_weight=np.array(self.rate_weight),
            )
        return file_sha256(path)

    def to_attrs(self, path: str | os.PathLike) -> dict[str, Any]:
        """The store header record of this codebook saved at `path`."""
        return {
            "path": str(Path(path).resolve()),
            "sha256": file_sha256(path),
            "size": self.size,
            "space": f"shape space, weight {self.shape_weight:g}, residual from each "
            "Gaussian index's mean (gtok.store.geometry_codebook)",
            "rate_weight": self.rate_weight,
        }


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_codebook(path: str | os.PathLike) -> GeometryCodebook:
    """Read a codebook file; a `GtokError` in one sentence when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            anchors, centroids = data["anchors"], data["centroids"]
            scale_min, scale_max = (float(v) for v in data["scale_range"])
            lengths = data["lengths"]
            shape_weight = float(data["shape_weight"])
            rate_weight = float(data["rate_weight"])
    except (OSError, KeyError, ValueError) as exc:
        raise GtokError(
            f"{path} is not a geometry codebook ({exc}); fit one with gtok fit-codebook."
        ) from exc
    good = anchors.ndim == 2 and anchors.shape[1:] == (5,) and centroids.ndim == 2
    good = good and centroids.shape[1] == 5 and 1 <= len(centroids) <= MAX_SIZE
    good = good and lengths.shape == (len(centroids),) and bool(np.isfinite(lengths).all())
    if not (good and shape_weight > 0 and rate_weight >= 0):
        raise GtokError(
            f"{path} is not a geometry codebook (anchors {anchors.shape}, centroids "
            f"{centroids.shape}, lengths {lengths.shape}, shape weight {shape_weight}, "
            f"rate weight {rate_weight}); fit one with gtok fit-codebook."
        )
    return GeometryCodebook(
        anchors.astype(np.float64),
        centroids.astype(np.float64),
        scale_min,
        scale_max,
        shape_weight,
        rate_weight,
        lengths.astype(np.float64),
    )


def to_shape_space(unit: np.ndarray, weight: float) -> np.ndarray:
    """Unit places [..., 5] -> shape-space points [..., 5] (float64; see the module doc)."""
    mean = (unit[..., 2] + unit[..., 3]) / 2.0
    half = (unit[..., 2] - unit[..., 3]) / 2.0
    angle = 2.0 * np.pi * unit[..., 4]  # twice the rotation: pi apart is the same Gaussian
    return np.stack(
        [unit[..., 0], unit[..., 1], weight * mean,
         weight * half * np.cos(angle), weight * half * np.sin(angle)], axis=-1,
    )  # fmt: skip


def from_shape_space(points: np.ndarray, weight: float) -> np.ndarray:
    """Inverse of `to_shape_space` up to the same Gaussian: points [..., 5] -> unit places
    [..., 5] (float64), means and scales clipped to [0, 1], rotation in [0, 1)."""
    mean, cos, sin = (points[..., i] / weight for i in (2, 3, 4))
    half = np.hypot(cos, sin)
    rotation = np.mod(np.arctan2(sin, cos) / (2.0 * np.pi), 1.0)
    unit = np.stack([points[..., 0], points[..., 1], mean + half, mean - half, rotation], -1)
    unit[..., :4] = np.clip(unit[..., :4], 0.0, 1.0)
    return unit


def nearest(points: np.ndarray, centroids: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """points [n, 5], centroids [K, 5], penalties [K] -> uint16 [n]: for each point the
    centroid of least squared Euclidean distance + penalty (ties to the lower index)."""
    out = np.empty(len(points), ID_DTYPE)
    norms = (centroids**2).sum(1) + penalties
    for start in range(0, len(points), _CHUNK):
        block = points[start : start + _CHUNK]
        out[start : start + len(block)] = np.argmin(norms - 2.0 * block @ centroids.T, axis=1)
    return out


def fit_codebook(
    geometry: np.ndarray,
    size: int,
    scale_min: float,
    scale_max: float,
    *,
    shape_weight: float = SHAPE_WEIGHT,
    rate_weight: float = 0.0,
    seed: int = 0,
    iterations: int = 25,
    sample: int = 200_000,
) -> GeometryCodebook:
    """k-means codebook of `size` entries over geometry [n, G, 5] (a training store's): the
    anchors are each index's mean in the shape space of weight `shape_weight`, the centroids
    are fitted by Lloyd's algorithm on at most `sample` residuals drawn with `seed`, starting
    from `size` of them, each step assigning with the lengths of the step before (lambda =
    `rate_weight`). Entries no Gaussian chose are dropped, and there are never more entries
    than fitted Gaussians, so the codebook may come out smaller than `size`. Deterministic
    for the same inputs and seed."""
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be in 1..{MAX_SIZE}, got {size}")
    if not shape_weight > 0:
        raise ValueError(f"shape_weight must be > 0, got {shape_weight}")
    if not rate_weight >= 0:
        raise ValueError(f"rate_weight must be >= 0, got {rate_weight}")
    points = to_shape_space(to_unit(geometry, scale_min, scale_max), shape_weight)
    anchors = points.mean(0)
    points = (points - anchors).reshape(-1, 5)
    rng = np.random.default_rng(seed)
    points = points[rng.permutation(len(points))[:sample]]
    size = min(size, len(points))  # a small store: at most one entry per Gaussian
    centroids, penalties = points[:size].copy(), np.zeros(size)
    for _ in range(iterations):
        counts = _lloyd_step(points, centroids, penalties)
        lengths = -np.log2(np.maximum(counts, 1) / len(points))
        penalties = np.where(counts > 0, rate_weight * lengths, np.inf)
    used = counts > 0
    return GeometryCodebook(
        anchors, centroids[used], scale_min, scale_max, shape_weight, rate_weight, lengths[used]
    )


def _lloyd_step(points: np.ndarray, centroids: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """Assign points [n, 5] with `penalties` [K], move each chosen centroid [K, 5] to its
    points' mean (in place); returns how many points chose each entry [K]."""
    assigned = nearest(points, centroids, penalties).astype(np.int64)
    counts = np.bincount(assigned, minlength=len(centroids))
    sums = np.zeros_like(centroids)
    np.add.at(sums, assigned, points)
    used = counts > 0
    centroids[used] = sums[used] / counts[used, None]
    return counts
