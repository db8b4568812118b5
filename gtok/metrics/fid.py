"""Frechet distance between Gaussians fitted to features, and streaming feature statistics.

FID (Heusel et al. 2017) as pytorch-fid computes it from 2048-d pool features:
mean and covariance of each feature set (covariance with N - 1 normalization, as
`np.cov(rowvar=False)`), then

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

pytorch-fid takes tr((S1 S2)^(1/2)) from `scipy.linalg.sqrtm`. Here it is computed without
scipy, in float64, from symmetric eigen-decompositions: S1 S2 is similar to the symmetric
positive semi-definite A = S1^(1/2) S2 S1^(1/2), so the trace is the sum of the square roots
of A's eigenvalues (negative round-off eigenvalues are clipped to 0). This equals the sqrtm
value where sqrtm is accurate and stays real and stable where S1 or S2 is singular (fewer
images than feature dimensions), a case in which pytorch-fid adds 1e-6 to the diagonals.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from gtok.errors import GtokError

__all__ = ["FeatureStats", "frechet_distance", "load_stats", "save_stats"]


def _sqrt_psd(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu1, mu2: [D]; sigma1, sigma2: [D, D] symmetric positive semi-definite covariances.
    Computed in float64; returns a float >= 0 (round-off below 0 is reported as 0).
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = m1.shape[0]
    if m1.shape != (dim,) or m2.shape != (dim,) or s1.shape != (dim, dim) or s2.shape != s1.shape:
        raise ValueError(
            "frechet_distance: expected mu [D] and sigma [D, D] of one D, got "
            f"{m1.shape}, {s1.shape}, {m2.shape}, {s2.shape}"
        )
    for name, array in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not np.isfinite(array).all():
            raise ValueError(f"frechet_distance: {name} has non-finite values")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = m1 - m2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt
    return max(float(value), 0.0)


class FeatureStats:
    """Running mean and covariance of feature vectors, without keeping the features.

    Holds n, the sum of features and the sum of their outer products in float64 (on the
    device of the first update), so memory is O(D^2) whatever the number of images.
    `update` many batches, then `mean_cov()`; `merge` combines the statistics of shards or
    processes.
    """

    def __init__(self, dim: int = 2048) -> None:
        if dim < 1:
            raise ValueError(f"FeatureStats: dim must be positive, got {dim}")
        self.dim = dim
        self.n = 0
        self._sum: Tensor | None = None  # [D] float64
        self._outer: Tensor | None = None  # [D, D] float64

    def update(self, features: Tensor | ArrayLike) -> None:
        """Add a batch: features [B, D] (any float dtype, any device)."""
        x = torch.as_tensor(features)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"FeatureStats: expected [B, {self.dim}] features, got {tuple(x.shape)}"
            )
        if self._sum is None:
            self._sum = torch.zeros(self.dim, dtype=torch.float64, device=x.device)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=x.device)
        assert self._outer is not None
        x = x.detach().to(device=self._sum.device, dtype=torch.float64)
        self._sum += x.sum(0)
        self._outer += x.T @ x
        self.n += x.shape[0]

    def merge(self, other: FeatureStats) -> None:
        """Add the statistics of another accumulator of the same dimension."""
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats: cannot merge dim {other.dim} into dim {self.dim}")
        if other._sum is None or other._outer is None:
            return
        if self._sum is None or self._outer is None:
            self._sum = other._sum.clone()
            self._outer = other._outer.clone()
        else:
            self._sum += other._sum.to(self._sum.device)
            self._outer += other._outer.to(self._outer.device)
        self.n += other.n

    def mean_cov(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(mu [D], sigma [D, D]) in float64; sigma normalized by n - 1 as np.cov."""
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"FeatureStats: need at least 2 feature vectors, have {self.n}")
        total = self._sum.cpu().numpy()
        outer = self._outer.cpu().numpy()
        mu = total / self.n
        sigma = (outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


def save_stats(path: str | os.PathLike, mu: ArrayLike, sigma: ArrayLike) -> None:
    """Write statistics as pytorch-fid's .npz (keys `mu`, `sigma`)."""
    np.savez(Path(path), mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str | os.PathLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Read a pytorch-fid statistics .npz (keys `mu`, `sigma`); GtokError if it is not one."""
    try:
        with np.load(Path(path)) as data:
            return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise GtokError(f"{path} is not an FID statistics file with mu and sigma: {err}") from err
