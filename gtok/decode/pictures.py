"""Pictures `gtok decode` writes: reconstructions as PNG bytes and the Gaussians drawn over them.

Reconstructions are quantized with `gtok.metrics.to_uint8`, the conversion the metrics use,
so scoring the saved PNGs gives the numbers scoring the tensors gives. The Gaussians picture
is `gtok.viz`'s: each Gaussian's 2-sigma ellipse in its code's colour over the dimmed
reconstruction, enlarged (nearest) to at least 256 pixels so small images stay readable.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from gtok.metrics import to_uint8
from gtok.viz import comparison_rows

__all__ = ["gaussians_pictures", "png_bytes", "uint8_images"]


def uint8_images(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float in [-1, 1] (clamped) -> uint8 [B, 3, H, W] on the CPU."""
    return to_uint8(images).cpu()


def png_bytes(image: torch.Tensor | Image.Image) -> bytes:
    """A PNG file of uint8 [3, H, W] pixels (or of a PIL image)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected uint8 [3, H, W], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gaussians_pictures(
    reconstructions: torch.Tensor, indices: torch.Tensor, geometry: torch.Tensor, map_size: int
) -> list[Image.Image]:
    """One picture per image of its Gaussians over its dimmed reconstruction.

    reconstructions: [B, 3, H, W] in [-1, 1]; indices: [B, G] code ids; geometry: [B, G, 5]
    (mean_x, mean_y, scale_x, scale_y, rotation); map_size: side of the rendered map (cells).
    """
    geometry = geometry.float().cpu()
    gaussians = (geometry[..., 0:2], geometry[..., 2:4], geometry[..., 4])
    rows = comparison_rows(
        reconstructions.cpu(),
        reconstructions.cpu(),
        gaussians,
        indices.cpu(),
        (map_size, map_size),
    )
    return [row[2] for row in rows]
