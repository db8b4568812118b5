"""Image conversions and checks shared by the metrics.

Metrics that follow a published protocol on stored images (PSNR, SSIM, FID) take uint8
images, because that is what a reconstruction saved as PNG holds. `to_uint8` is the one
conversion from the model's [-1, 1] floats to those bytes; writers of PNGs use it too, so a
metric computed on tensors equals the metric computed on the saved files.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_pair", "to_uint8"]


def to_uint8(images: Tensor) -> Tensor:
    """Quantize model-space images to the bytes a saved PNG holds.

    images: [..., H, W] float, nominally in [-1, 1] (values outside are clamped).
    Returns uint8 of the same shape: round(clamp((x + 1) / 2, 0, 1) * 255), computed in at
    least float32, rounding half to even (`torch.round`).
    """
    if not images.is_floating_point():
        raise TypeError(f"to_uint8 expects floating-point images in [-1, 1], got {images.dtype}")
    x = images.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.round(((x + 1) / 2).clamp(0, 1) * 255).to(torch.uint8)


def check_pair(a: Tensor, b: Tensor, *, name: str, min_size: int = 1) -> None:
    """Raise ValueError/TypeError unless a and b are uint8 [B, C, H, W] of one shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"{name}: expected [B, C, H, W] images, got shape {tuple(a.shape)}")
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise TypeError(
            f"{name}: expected uint8 images (data range 255), got {a.dtype} and {b.dtype}; "
            "convert [-1, 1] floats with gtok.metrics.to_uint8"
        )
    if min(a.shape[-2:]) < min_size:
        raise ValueError(
            f"{name}: images must be at least {min_size}x{min_size}, got {tuple(a.shape[-2:])}"
        )
