"""Opt-in colour augmentations of training crops: hue rotation, saturation scaling and
random grayscale, in numpy on uint8 RGB images (no torchvision).

Per sample, in this order, each only when its setting is not 0:

- hue: rotate the chroma plane of YIQ by an angle uniform in [-hue, hue] turns, keeping
  the luma Y = 0.299 R + 0.587 G + 0.114 B (exact before the final clip to 0..255).
- saturation: move every pixel away from or towards its luma by a factor uniform in
  [max(0, 1 - saturation), 1 + saturation] (factor 0: gray; as torchvision's
  `adjust_saturation`, which blends with the grayscale image).
- grayscale: with probability `grayscale`, replace R, G and B by the luma.

The three random numbers are drawn from the sample's generator in that order whatever is
switched on, so turning one augmentation on does not change the others' draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ColourJitter", "luma"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
# RGB -> YIQ (rows Y, I, Q) and its inverse
_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
_RGB = np.linalg.inv(_YIQ)


def luma(rgb: np.ndarray) -> np.ndarray:
    """float32 [..., 3] RGB (any scale) -> float32 [...] BT.601 luma on the same scale."""
    return rgb.astype(np.float32) @ _LUMA


def _hue_matrix(turns: float) -> np.ndarray:
    """float32 [3, 3]: RGB -> RGB, rotating the YIQ chroma plane by `turns` of a circle."""
    angle = 2 * np.pi * turns
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    return (_RGB @ rotate @ _YIQ).astype(np.float32)


@dataclass(frozen=True)
class ColourJitter:
    """hue: max rotation in turns, in [0, 0.5]; saturation: max change of the saturation
    factor, >= 0; grayscale: probability in [0, 1]. All 0: images pass unchanged."""

    hue: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0

    def problems(self) -> list[str]:
        """What is out of range, in words (empty when valid)."""
        out = []
        if not 0 <= self.hue <= 0.5:
            out.append(f"hue_jitter must be in [0, 0.5] turns, got {self.hue}")
        if not self.saturation >= 0:
            out.append(f"saturation_jitter must be 0 or more, got {self.saturation}")
        if not 0 <= self.grayscale <= 1:
            out.append(f"grayscale_p must be in [0, 1], got {self.grayscale}")
        return out

    @property
    def active(self) -> bool:
        return bool(self.hue or self.saturation or self.grayscale)

    def describe(self) -> str:
        """The augmentation in words, for the run's record ("" when off)."""
        parts = []
        if self.hue:
            parts.append(f"hue rotation (YIQ) uniform in +-{self.hue} turns")
        if self.saturation:
            lo = max(0.0, 1 - self.saturation)
            parts.append(f"saturation factor uniform in [{lo:g}, {1 + self.saturation:g}]")
        if self.grayscale:
            parts.append(f"grayscale p={self.grayscale}")
        return " + ".join(parts)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [H, W, 3], jittered with draws from `rng`."""
        u_hue, u_sat, u_gray = rng.random(3)
        if not self.active:
            return image
        rgb = image.astype(np.float32)
        if self.hue:
            rgb = rgb @ _hue_matrix(self.hue * (2 * u_hue - 1)).T
        if self.saturation:
            lo = max(0.0, 1 - self.saturation)
            factor = lo + (1 + self.saturation - lo) * u_sat
            gray = luma(rgb)[..., None]
            rgb = gray + factor * (rgb - gray)
        if u_gray < self.grayscale:
            rgb = np.repeat(luma(rgb)[..., None], 3, axis=-1)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
