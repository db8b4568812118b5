"""PSNR per image on uint8 images (data range 255).

Protocol: the mean squared error is taken over all channels and pixels of one image, in
float64; PSNR = 10 log10(255^2 / MSE) in dB. A dataset's PSNR is the mean of the per-image
values (not the PSNR of the pooled MSE, and not per batch).

Identical images have MSE 0 and an infinite PSNR. One such image would make a dataset mean
infinite, so by default every value is capped at `max_db` = 100 dB, i.e. the result is
min(PSNR, 100). A uint8 image can exceed 100 dB only when at most ~1 in 10^5.7 values
differ by one level, so the cap never touches a real reconstruction; pass max_db=None for
the uncapped value (inf for identical images, as scikit-image's
`peak_signal_noise_ratio`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gtok.metrics.images import check_pair

__all__ = ["DEFAULT_MAX_DB", "psnr"]

DEFAULT_MAX_DB = 100.0


def psnr(a: Tensor, b: Tensor, *, max_db: float | None = DEFAULT_MAX_DB) -> Tensor:
    """Per-image PSNR in dB.

    a, b: uint8 [B, C, H, W] (data range 255), same shape.
    max_db: cap applied to every value (identical images give exactly max_db); None for no
        cap (identical images give inf).
    Returns float64 [B] on a's device.
    """
    check_pair(a, b, name="psnr")
    diff = a.to(torch.float64) - b.to(torch.float64)
    mse = diff.square().flatten(1).mean(1)  # [B]
    with torch.no_grad():
        value = 10.0 * torch.log10(255.0**2 / mse)  # inf where mse == 0
    if max_db is not None:
        value = value.clamp(max=float(max_db))
    return value
