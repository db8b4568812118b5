"""Reading benchmark images from tar shards as `gtok encode` preprocesses them."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import Preprocess
from gtok.evaluate.sources import reference_batches

__all__ = ["read_images"]


def read_images(
    shards: Sequence[str | os.PathLike], size: int, limit: int | None = None, stride: int = 1
) -> torch.Tensor:
    """Every `stride`-th usable image of `shards` (in shard and tar order; shorter side resized
    to `size`, centre crop), at most `limit` of them: uint8 [N, 3, size, size]. A stride > 1
    spreads a small sample over a shard whose samples are grouped by photograph."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    wanted = None if limit is None else limit * stride
    batches = reference_batches(shards, Preprocess(size), batch_size=256, limit=wanted)
    images = torch.cat([batch.images for batch in batches])[::stride]
    return images if limit is None else images[:limit]
