"""The tokenizers' image conversions for Python callers (`tok.preprocess`, `tok.postprocess`).

In: PIL images, uint8 arrays or tensors (HWC or CHW, one image or a batch), or float
tensors already in the model's format. PIL and uint8 images go the way `gtok encode` takes
a decoded image (EXIF orientation, RGB with alpha over white, `center_crop`'s antialiased
bicubic resize of the shorter side and centre crop, `to_model_input`), so their tokens
equal a store's; except for JPEGs whose shorter side is at least 4x the resize target, which
`gtok encode` decodes at reduced scale unless `--no-jpeg-draft` (a PIL image is already
decoded; the two crops differ slightly, see `gtok.data.transforms`). Float input is
never resized and must lie in [-1, 1]: a float image in 0..1 or 0..255 would otherwise be
tokenized as a different picture without a word.

Out: model images [B, 3, H, W] in [-1, 1] -> the bytes `gtok decode` writes
(`gtok.metrics.to_uint8`), as PIL images or a uint8 array [B, H, W, 3].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from gtok.data.images import upright_rgb
from gtok.data.stream import to_model_input
from gtok.data.transforms import center_crop
from gtok.metrics.images import to_uint8

__all__ = ["OUTPUTS", "from_model_images", "to_model_images"]

OUTPUTS = ("pil", "numpy")


def to_model_images(images: Any, size: int, resize: int | None = None) -> torch.Tensor:
    """Images -> [B, 3, size, size] in [-1, 1]: float32 on the CPU (float input keeps its
    dtype and device).

    images: a PIL image, a uint8 array or tensor [H, W, 3], [3, H, W], [B, H, W, 3] or
    [B, 3, H, W], a float tensor or array [3, size, size] or [B, 3, size, size] in [-1, 1],
    or a list or tuple of single images of these kinds. PIL and uint8 images are resized
    (shorter side to `resize`, default `size`, pixels) and centre-cropped to `size`.
    """
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images:
            raise ValueError("images is an empty list; pass at least one image")
        return torch.cat([to_model_images(image, size, resize) for image in images])
    if isinstance(images, Image.Image):
        crop, _ = center_crop(upright_rgb(images), size, resize)
        return to_model_input(torch.from_numpy(np.array(crop, dtype=np.uint8))[None])
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images))  # a copy: arrays may be read-only
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be PIL images, uint8 arrays or tensors, or float tensors in [-1, 1]; "
            f"got {type(images).__name__}"
        )
    if images.dtype == torch.uint8:
        crops = [to_model_images(Image.fromarray(hwc), size, resize) for hwc in _hwc(images)]
        return torch.cat(crops)
    if images.is_floating_point():
        return _checked_floats(images, size)
    raise TypeError(
        f"images of dtype {images.dtype} are ambiguous; pass uint8 pixels (0..255) or floats "
        "in [-1, 1]"
    )


def _hwc(pixels: torch.Tensor) -> list[np.ndarray]:
    """uint8 [H, W, 3], [3, H, W] or a batch of them -> a list of [H, W, 3] arrays."""
    batch = pixels if pixels.ndim == 4 else pixels[None]
    if batch.ndim != 4 or 3 not in (batch.shape[1], batch.shape[3]):
        raise ValueError(
            f"uint8 images must be [H, W, 3], [3, H, W] or a batch of them, got "
            f"{list(pixels.shape)}"
        )
    if batch.shape[3] != 3:
        batch = batch.permute(0, 2, 3, 1)  # channels first -> last
    return [np.ascontiguousarray(image) for image in batch.cpu().numpy()]


def _checked_floats(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float [3, S, S] or [B, 3, S, S], refused unless in [-1, 1] (skipped while compiling:
    a data-dependent check would break the traced graph)."""
    batch = images if images.ndim == 4 else images[None]
    if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
        raise ValueError(
            f"float images must be [B, 3, {size}, {size}] in [-1, 1], got "
            f"{list(images.shape)}; pass PIL images or uint8 pixels to have them resized"
        )
    if not torch.compiler.is_compiling() and batch.numel():
        low, high = float(batch.min()), float(batch.max())
        if low < -1.0 or high > 1.0:
            raise ValueError(
                f"float images must lie in [-1, 1], got values in [{low:g}, {high:g}]; "
                "pass uint8 pixels for 0..255 images, or map floats x in 0..1 to 2 * x - 1"
            )
    return batch


def from_model_images(images: torch.Tensor, output: str = "pil") -> list[Image.Image] | np.ndarray:
    """Model images [B, 3, H, W] (or [3, H, W]) in [-1, 1] -> what `gtok decode` writes:
    a list of RGB PIL images (`output="pil"`) or uint8 [B, H, W, 3] (`output="numpy"`)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    batch = images if images.ndim == 4 else images[None]
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    pixels = to_uint8(batch).cpu().permute(0, 2, 3, 1).contiguous().numpy()  # [B, H, W, 3]
    if output == "numpy":
        return pixels
    return [Image.fromarray(image, "RGB") for image in pixels]
