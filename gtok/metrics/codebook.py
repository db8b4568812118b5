"""Codebook usage statistics from code histograms.

For counts c_k over a codebook of K codes (n = sum c_k tokens, p_k = c_k / n):
usage = (number of codes with c_k > 0) / K; entropy H = -sum_k p_k log2 p_k in bits (codes
never used contribute 0); perplexity = 2^H, the number of equally used codes that would
have the same entropy (between 1 and K). Histograms add up, so a dataset's statistics come
from summing per-batch `code_counts`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

__all__ = ["CodebookStats", "code_counts", "codebook_stats"]


@dataclass(frozen=True)
class CodebookStats:
    """Usage of one codebook over n tokens."""

    size: int  # K, codes in the codebook
    tokens: int  # n, tokens counted
    used: int  # codes used at least once
    usage: float  # used / K, in [0, 1]
    entropy_bits: float  # H in bits, in [0, log2 K]
    perplexity: float  # 2^H, in [1, K]

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def code_counts(indices: Tensor | ArrayLike, codebook_size: int) -> NDArray[np.int64]:
    """Histogram of code ids: indices of any shape (e.g. [B, G]), integers in
    [0, codebook_size). Returns int64 [codebook_size]."""
    if codebook_size < 1:
        raise ValueError(f"code_counts: codebook_size must be positive, got {codebook_size}")
    if isinstance(indices, Tensor):
        flat = indices.detach().reshape(-1).to("cpu", torch.int64).numpy()
    else:
        array = np.asarray(indices)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"code_counts: indices must be integers, got {array.dtype}")
        flat = array.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= codebook_size):
        raise ValueError(
            f"code_counts: code ids must lie in [0, {codebook_size}), "
            f"got values in [{flat.min()}, {flat.max()}]"
        )
    return np.bincount(flat, minlength=codebook_size).astype(np.int64)


def codebook_stats(counts: ArrayLike) -> CodebookStats:
    """Usage, entropy (bits) and perplexity from a histogram counts [K] (non-negative)."""
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"codebook_stats: expected counts [K], got shape {c.shape}")
    if (c < 0).any():
        raise ValueError("codebook_stats: counts must be non-negative")
    total = c.sum()
    if total <= 0:
        raise ValueError("codebook_stats: no tokens counted")
    p = c[c > 0].astype(np.float64) / float(total)
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    return CodebookStats(
        size=int(c.size),
        tokens=int(total),
        used=int((c > 0).sum()),
        usage=float((c > 0).sum() / c.size),
        entropy_bits=entropy,
        perplexity=float(2.0**entropy),
    )
