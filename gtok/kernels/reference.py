"""Plain PyTorch twins of the Taichi kernels: the rasterizer and deformable attention.

Slow but obviously right; the Taichi kernels are tested against them, and they run wherever
torch runs (any device, any dtype, autograd for free).

Conventions of the rasterizer (those of the GaussianToken authors' released code, so their
checkpoints keep their meaning):

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
import torch.nn.functional as F

__all__ = ["MIN_SCALE_SQ", "MIN_WEIGHT", "NORMALIZE_EPS", "deform_attn", "normalized", "rasterize"]

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


def deform_attn(
    value: torch.Tensor,
    height: int,
    width: int,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    logits: torch.Tensor,
    fixed_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head deformable attention sampling (Deformable-DETR MSDeformAttn, one level).

    value: [B, H*W, M, Dh] M heads of Dh channels, the [H, W] map row-major;
    reference: [B, Nq, 2] (x, y) in [0, 1] of the map's extent;
    offsets: [B, Nq, M, P, 2] learned sampling offsets (dx, dy) in map pixels;
    logits: [B, Nq, M, F + P] attention logits, the F fixed points first;
    fixed_offsets: [F, 2] offsets in map pixels shared by every query and head, or None.
    Returns [B, Nq, M, Dh]: for query q and head m, sum_k softmax(logits)_k * sample of head
    m's map at reference + offset_k / (W, H), bilinear with zero padding as
    `grid_sample(align_corners=False)`: pixel (i, j) has its centre at
    ((j + 0.5) / W, (i + 0.5) / H), and samples off the map read zeros.
    """
    b, nq, m = offsets.shape[:3]
    head_dim = value.shape[-1]
    maps = value.permute(0, 2, 3, 1).reshape(b * m, head_dim, height, width)  # [B*M, Dh, H, W]
    if fixed_offsets is not None:
        fixed = fixed_offsets.view(1, 1, 1, -1, 2).expand(b, nq, m, -1, 2)
        offsets = torch.cat([fixed, offsets], dim=3)  # [B, Nq, M, F + P, 2], fixed first
    num_total = offsets.shape[3]
    weights = logits.softmax(dim=-1)  # [B, Nq, M, F + P]
    normalizer = torch.tensor([width, height], dtype=offsets.dtype, device=offsets.device)
    locations = reference[:, :, None, None, :] + offsets / normalizer  # [B, Nq, M, F + P, 2]
    grid = 2.0 * locations - 1.0  # grid_sample's [-1, 1] coordinates
    grid = grid.transpose(1, 2).reshape(b * m, nq, num_total, 2)  # [B*M, Nq, F + P, 2]
    sampled = F.grid_sample(
        maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [B*M, Dh, Nq, F + P]
    weights = weights.transpose(1, 2).reshape(b * m, 1, nq, num_total)  # [B*M, 1, Nq, F + P]
    out = (sampled * weights).sum(dim=-1)  # [B*M, Dh, Nq]
    return out.view(b, m, head_dim, nq).permute(0, 3, 1, 2)  # [B, Nq, M, Dh]


def normalized(rendered: torch.Tensor) -> torch.Tensor:
    """[B, C + 1, H, W] rendered with a last all-ones feature -> the first C channels divided
    by (that last channel, the sum of the weights, + `NORMALIZE_EPS`): [B, C, H, W]."""
    return rendered[:, :-1] / (rendered[:, -1:] + NORMALIZE_EPS)
