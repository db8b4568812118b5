"""SSIM on uint8 images, as scikit-image's `structural_similarity` with Gaussian weights.

Protocol (scikit-image's `structural_similarity(im1, im2, gaussian_weights=True, sigma=1.5,
data_range=255, channel_axis=-1)`, the call most tokenizer evaluations make, so its default
`use_sample_covariance=True` is kept):

- 11x11 Gaussian window, sigma 1.5 (scipy's kernel: radius int(3.5 * 1.5 + 0.5) = 5, taps
  exp(-x^2 / (2 sigma^2)) normalized to sum 1, applied separably);
- local means, variances and covariance from the weighted window, multiplied by 121/120 as
  scikit-image's default `use_sample_covariance=True` does; `sample_covariance=False` gives
  Wang et al.'s population form (about 0.05% apart on natural images);
- C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2;
- the SSIM map is averaged over the pixels whose window lies inside the image (scikit-image
  filters with 'reflect' padding and then crops the 5-pixel border, so only these pixels
  count; here the filter is a 'valid' convolution, which gives the same numbers);
- per channel, then averaged over channels; one value per image.

Computed in float32 by default, on values centred at 128 (the local variances are
differences of squares; centring keeps the cancellation small): it agrees with scikit-image
to about 1e-7. `dtype=torch.float64` reproduces it to about 1e-15 at several times the cost
(float64 convolutions are slow on CPUs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gtok.metrics.images import check_pair

__all__ = ["SSIM_WINDOW", "gaussian_taps", "ssim"]

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # 2 * int(3.5 * 1.5 + 0.5) + 1
K1, K2 = 0.01, 0.03


def gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = 3.5) -> list[float]:
    """1D Gaussian filter taps as scipy.ndimage builds them (normalized to sum 1)."""
    radius = int(truncate * sigma + 0.5)
    taps = [math.exp(-0.5 * (x / sigma) ** 2) for x in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    sample_covariance: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-image mean SSIM.

    a, b: uint8 [B, C, H, W] (data range 255), same shape, H and W at least 11.
    sample_covariance: normalize (co)variances by N - 1 (scikit-image's default, kept here)
        instead of N (Wang et al.).
    dtype: computation precision, torch.float64 or torch.float32.
    Returns [B] in `dtype` on a's device; 1.0 for identical images.
    """
    check_pair(a, b, name="ssim", min_size=SSIM_WINDOW)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ssim: dtype must be torch.float32 or torch.float64, got {dtype}")
    batch, channels = a.shape[:2]
    # Centred at 128: (co)variances are shift-invariant, and smaller squares lose less to
    # the cancellation in E[x^2] - E[x]^2 (matters in float32).
    x = a.to(dtype) - 128.0
    y = b.to(dtype) - 128.0
    # Five maps per channel, filtered together as one depthwise convolution.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    groups = maps.shape[1]
    taps = torch.tensor(gaussian_taps(), dtype=dtype, device=a.device)
    kernel_h = taps.view(1, 1, -1, 1).expand(groups, 1, -1, 1)  # [5C, 1, 11, 1]
    kernel_w = taps.view(1, 1, 1, -1).expand(groups, 1, 1, -1)  # [5C, 1, 1, 11]
    filtered = F.conv2d(F.conv2d(maps, kernel_h, groups=groups), kernel_w, groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.split(channels, dim=1)  # each [B, C, H-10, W-10]
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1) if sample_covariance else 1.0
    var_x = cov_norm * (e_xx - mu_x * mu_x)
    var_y = cov_norm * (e_yy - mu_y * mu_y)
    cov_xy = cov_norm * (e_xy - mu_x * mu_y)
    mu_x = mu_x + 128.0
    mu_y = mu_y + 128.0
    c1 = (K1 * 255.0) ** 2
    c2 = (K2 * 255.0) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    per_channel = (num / den).flatten(2).mean(2)  # [B, C]
    return per_channel.mean(1).view(batch)
