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
  `Sigma_xy = c s (sy^2 - sx^2)`; its inverse is computed in closed form,
  `R diag(1/sx^2, 1/sy^2) R^T`, which stays finite as a scale goes to 0;
- `sigma = 0.5 d^T Sigma^-1 d` with `d = centre - pixel`;
- `weight = min(1, opacity * exp(-sigma))`, dropped (0) when below 1/255;
- output = plain weighted sum of features (no compositing, no normalization, background 0).
"""

from __future__ import annotations

import torch

__all__ = ["MIN_SCALE_SQ", "MIN_WEIGHT", "gaussian_conics", "rasterize"]

MIN_WEIGHT = 1.0 / 255.0
MIN_SCALE_SQ = 1e-12  # squared scales are clamped here before inversion (map pixels^2)


def gaussian_conics(
    scales: torch.Tensor, rotations: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries (a, b, c) of the inverse covariance [[a, b], [b, c]].

    scales: [..., 2] standard deviations (map pixels); rotations: [...] radians.
    Returns three tensors of shape [...], in 1/pixels^2.
    """
    cos, sin = torch.cos(rotations), torch.sin(rotations)
    inv_x = 1.0 / (scales[..., 0] ** 2).clamp_min(MIN_SCALE_SQ)
    inv_y = 1.0 / (scales[..., 1] ** 2).clamp_min(MIN_SCALE_SQ)
    a = cos * cos * inv_x + sin * sin * inv_y
    b = cos * sin * (inv_y - inv_x)
    c = sin * sin * inv_x + cos * cos * inv_y
    return a, b, c


def rasterize(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    height: int,
    width: int,
    opacities: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render Gaussians onto a feature map as a weighted sum.

    means: [B, G, 2] (x, y) in [-1, 1]; scales: [B, G, 2] standard deviations in map pixels;
    rotations: [B, G] radians; features: [B, G, C]; opacities: [B, G] or None (all 1).
    Returns [B, C, height, width], in the dtype of `features`.
    """
    a, b, c = gaussian_conics(scales, rotations)  # [B, G] each
    cx = (means[..., 0] + 1) * 0.5 * width  # [B, G]
    cy = (means[..., 1] + 1) * 0.5 * height
    cols = torch.arange(width, dtype=means.dtype, device=means.device)
    rows = torch.arange(height, dtype=means.dtype, device=means.device)
    dx = cx[..., None, None] - cols[None, None, None, :]  # [B, G, 1, W]
    dy = cy[..., None, None] - rows[None, None, :, None]  # [B, G, H, 1]
    sigma = 0.5 * (a[..., None, None] * dx * dx + c[..., None, None] * dy * dy) + (
        b[..., None, None] * dx * dy
    )  # [B, G, H, W]
    weight = torch.exp(-sigma)
    if opacities is not None:
        weight = opacities[..., None, None] * weight
    weight = weight.clamp_max(1.0)
    weight = torch.where(weight >= MIN_WEIGHT, weight, torch.zeros_like(weight))
    return torch.einsum("bghw,bgc->bchw", weight, features.to(weight.dtype))
