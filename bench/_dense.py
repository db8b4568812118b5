"""The best dense PyTorch rasterizer we could write, as the benchmarks' baseline.

Same mathematics as `gtok.kernels.reference.rasterize` with opacities None (the model's case),
in GEMM form: the Gaussian's frame coordinates are linear in the pixel coordinates, so

    [u*sqrt(ix/2), v*sqrt(iy/2)] [HW, 2G] = [1, j, i] [HW, 3] @ A [3, 2G]   (one GEMM),
    sigma = uhat^2 + vhat^2,  w = threshold(min(exp(-sigma), 1), 1/255),
    out [HW, C] = w [HW, G] @ features [G, C]                               (one GEMM),

with in-place elementwise passes, processed a few images at a time so the [HW, 2G]
intermediates stay in cache. The backward is written by hand (not autograd's replay of
the elementwise chain): dL/dw = dL/dout @ features^T, gs = dL/dw * w on kept unclamped
pixels, dL/d[uhat, vhat] = -2 gs [uhat, vhat], dL/dA = P^T @ that (one GEMM), and autograd
takes it from A, a [B, 3, 2G] tensor, back to the parameters.
"""

from __future__ import annotations

import torch

from gtok.kernels.reference import MIN_SCALE_SQ, MIN_WEIGHT

__all__ = ["rasterize_dense"]


def rasterize_dense(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    height: int,
    width: int,
    chunk: int = 8,
) -> torch.Tensor:
    """means [B, G, 2] in [-1, 1], scales [B, G, 2] map pixels, rotations [B, G] radians,
    features [B, G, C] -> [B, C, height, width]; `chunk` images per pass."""
    coeffs = _frame_coefficients(means, scales, rotations, height, width)  # [B, 3, 2G]
    pixels = _pixel_rows(height, width, means.dtype, means.device)  # [HW, 3]
    out = _DenseSplat.apply(coeffs, features, pixels, chunk)  # [B, HW, C]
    return out.transpose(1, 2).reshape(features.shape[0], features.shape[2], height, width)


def _frame_coefficients(means, scales, rotations, height, width) -> torch.Tensor:
    """A [B, 3, 2G] with [1, j, i] @ A = (u sqrt(ix / 2), v sqrt(iy / 2)) at pixel (i, j):
    u = c dx - s dy, v = s dx + c dy, dx = cx - j, dy = cy - i."""
    cos, sin = torch.cos(rotations), torch.sin(rotations)
    root_x = torch.rsqrt(2 * (scales[..., 0] ** 2).clamp_min(MIN_SCALE_SQ))  # sqrt(ix / 2)
    root_y = torch.rsqrt(2 * (scales[..., 1] ** 2).clamp_min(MIN_SCALE_SQ))
    cx = (means[..., 0] + 1) * 0.5 * width
    cy = (means[..., 1] + 1) * 0.5 * height
    u_rows = torch.stack([cos * cx - sin * cy, -cos, sin], dim=1) * root_x[:, None]
    v_rows = torch.stack([sin * cx + cos * cy, -sin, -cos], dim=1) * root_y[:, None]
    return torch.cat([u_rows, v_rows], dim=2)  # [B, 3, 2G]


def _pixel_rows(height, width, dtype, device) -> torch.Tensor:
    i, j = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([torch.ones_like(i), j, i], dim=-1).reshape(height * width, 3)


def _weights(coeffs: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame coordinates [b, HW, 2G], weights [b, HW, G]) for a chunk of images."""
    n_g = coeffs.shape[2] // 2
    uv = torch.matmul(pixels, coeffs)  # [b, HW, 2G]
    weight = torch.mul(uv[..., :n_g], uv[..., :n_g])
    weight.addcmul_(uv[..., n_g:], uv[..., n_g:]).neg_().exp_().clamp_max_(1.0)
    torch.nn.functional.threshold_(weight, MIN_WEIGHT * (1 - 1e-7), 0.0)  # keeps w >= 1/255
    return uv, weight


class _DenseSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs, features, pixels, chunk):
        n_b = coeffs.shape[0]
        out = features.new_empty((n_b, pixels.shape[0], features.shape[2]))
        for start in range(0, n_b, chunk):
            part = slice(start, start + chunk)
            _, weight = _weights(coeffs[part], pixels)
            torch.bmm(weight, features[part], out=out[part])
        ctx.save_for_backward(coeffs, features, pixels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        coeffs, features, pixels = ctx.saved_tensors
        n_b, n_g = coeffs.shape[0], features.shape[1]
        grad_coeffs = torch.empty_like(coeffs)
        grad_features = torch.empty_like(features)
        for start in range(0, n_b, ctx.chunk):
            part = slice(start, start + ctx.chunk)
            uv, weight = _weights(coeffs[part], pixels)  # recomputed: cheaper than stored
            grad_chunk = grad_out[part]  # [b, HW, C]
            torch.bmm(weight.transpose(1, 2), grad_chunk, out=grad_features[part])
            grad_sigma = torch.bmm(grad_chunk, features[part].transpose(1, 2))  # dL/dw
            grad_sigma.mul_(weight).masked_fill_(weight >= 1.0, 0.0)  # gs = dL/dw * w
            uv.view(*uv.shape[:2], 2, n_g).mul_(grad_sigma.unsqueeze(2)).mul_(-2.0)
            torch.matmul(pixels.t(), uv, out=grad_coeffs[part])  # [b, 3, 2G]
        return grad_coeffs, grad_features, None, None
