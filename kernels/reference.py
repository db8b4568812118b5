"""Plain dense PyTorch twin of the rasterizer: every Gaussian evaluated at every pixel.

Slow but obviously right; the Taichi kernels are tested against it, and it runs wherever
torch runs (any device, any dtype, autograd for free).

Conventions (those of the GaussianToken authors' released code, so their checkpoints keep
their meaning):

- centre of Gaussian g, in map pixels: `((x + 1) / 2 * W, (y + 1) / 2 * H)` for its mean
  `(x, y)` in [-1, 1];
- pixel (row i, column j) sits at the point `(j, i)` (no +0.5);
- covariance `(R S)(R S)^T`, R the rotation by -theta and S = diag(scale_x, scale_y), so
  `Sigma_xx = c^2 sx^2 + s^2 sy^2`, `Sigma_yy = s^2 sx^2 + c^2 sy^2`,
  `Sigma_xy = c s (sy^2 - sx^2)`;
- `sigma = 0.5 d^T Sigma^-1 d` with `d = centre - pixel`, evaluated in the Gaussian's own
  frame: `u = c dx - s dy`, `v = s dx + c dy`, `sigma = 0.5 (u^2 / sx^2 + v^2 / sy^2)`, with
  the squared scales clamped at `MIN_SCALE_SQ`. This equals the expanded quadratic form
  `0.5 (a dx^2 + c dy^2) + b dx dy` of the inverse covariance, but is a sum of non-negative
  terms: the expanded form cancels catastrophically for thin rotated Gaussians in float32
  (errors of ~5e-4 in sigma near the cut-off, against ~1e-5 here), and never goes negative;
- `weight = min(1, opacity * exp(-sigma))`, dropped (0) when below 1/255;
- output = plain weighted sum of features (no compositing, no normalization, background 0);
  with `normalize=True` (opt-in, not the authors') that sum divided at each pixel by the sum
  of the weights plus `NORMALIZE_EPS`, a weighted mean that a moving Gaussian leaves no
  hole in (pixels no Gaussian reaches stay 0).
"""

from __future__ import annotations

import torch

__all__ = ["MIN_SCALE_SQ", "MIN_WEIGHT", "NORMALIZE_EPS", "normalized", "rasterize"]

MIN_WEIGHT = 1.0 / 255.0
MIN_SCALE_SQ = 1e-12  # squared scales are clamped here before inversion (map pixels^2)
NORMALIZE_EPS = 1e-2  # normalized splatting: map / (sum of weights + this)


def rasterize(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    height: int,
    width: int,
    opacities: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Render Gaussians onto a feature map as a weighted sum (`normalize`: divided by the
    sum of the weights + `NORMALIZE_EPS`).

    means: [B, G, 2] (x, y) in [-1, 1]; scales: [B, G, 2] standard deviations in map pixels;
    rotations: [B, G] radians; features: [B, G, C]; opacities: [B, G] or None (all 1).
    Returns [B, C, height, width], in the dtype of `features`.
    """
    if normalize:
        ones = torch.ones_like(features[..., :1])
        both = rasterize(
            means, scales, rotations, torch.cat([features, ones], -1), height, width, opacities
        )
        return normalized(both)
    cos = torch.cos(rotations)[..., None, None]  # [B, G, 1, 1]
    sin = torch.sin(rotations)[..., None, None]
    inv_x = (1.0 / (scales[..., 0] ** 2).clamp_min(MIN_SCALE_SQ))[..., None, None]
    inv_y = (1.0 / (scales[..., 1] ** 2).clamp_min(MIN_SCALE_SQ))[..., None, None]
    cx = (means[..., 0] + 1) * 0.5 * width  # [B, G]
    cy = (means[..., 1] + 1) * 0.5 * height
    cols = torch.arange(width, dtype=means.dtype, device=means.device)
    rows = torch.arange(height, dtype=means.dtype, device=means.device)
    dx = cx[..., None, None] - cols[None, None, None, :]  # [B, G, 1, W]
    dy = cy[..., None, None] - rows[None, None, :, None]  # [B, G, H, 1]
    u = cos * dx - sin * dy  # [B, G, H, W]
    v = sin * dx + cos * dy
    sigma = 0.5 * (inv_x * u * u + inv_y * v * v)
    weight = torch.exp(-sigma)
    if opacities is not None:
        weight = opacities[..., None, None] * weight
    weight = weight.clamp_max(1.0)
    weight = torch.where(weight >= MIN_WEIGHT, weight, torch.zeros_like(weight))
    return torch.einsum("bghw,bgc->bchw", weight, features.to(weight.dtype))


def normalized(rendered: torch.Tensor) -> torch.Tensor:
    """[B, C + 1, H, W] rendered with a last all-ones feature -> the first C channels divided
    by (that last channel, the sum of the weights, + `NORMALIZE_EPS`): [B, C, H, W]."""
    return rendered[:, :-1] / (rendered[:, -1:] + NORMALIZE_EPS)
