"""Image bytes -> an 8-bit RGB PIL image, or a one-sentence reason why not.

What is done to odd images (each case has a test):
- EXIF orientation is applied (`ImageOps.exif_transpose`); unreadable EXIF is ignored.
- Alpha (RGBA, LA, PA, palette with a transparent colour) is composited over `background`
  (white by default), so transparent pixels get the background, not their hidden colour.
- 16-bit grayscale (`I;16*`, `I`) is scaled by 255/65535; 16-bit RGB PNGs are reduced to
  8 bits by Pillow on open.
- CMYK uses the embedded ICC profile when there is one (to sRGB), Pillow's formula otherwise.
- Palette, bilevel, grayscale and YCbCr are converted with Pillow's `convert("RGB")`.
- More than `max_pixels` pixels (width x height, from the header, before any decoding) is a
  decompression bomb and rejected; so is anything Pillow itself flags as one.
- Bytes that are not an image, and truncated or corrupt images, are rejected with Pillow's
  message. Truncated images are never padded (`LOAD_TRUNCATED_IMAGES` stays off).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageRejected", "decode_rgb"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within a sample
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SRGB = None


class ImageRejected(Exception):
    """The bytes cannot be turned into an RGB image; the message is the reason to record."""


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _srgb_profile():
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.createProfile("sRGB")
    return _SRGB


def _from_cmyk(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, _srgb_profile(), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: Pillow's plain conversion below is still a fair answer
    return img.convert("RGB")


def _from_wide_gray(img: Image.Image) -> Image.Image:
    """16- or 32-bit integer or float grayscale -> 8-bit RGB, scaling rather than clipping."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    gray = np.clip(np.nan_to_num(values) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def _flatten_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An already-loaded PIL image of any mode -> 8-bit RGB (see the module docstring)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        return _flatten_alpha(img, background)
    if img.mode in _ALPHA_MODES:
        return _flatten_alpha(img, background)
    if img.mode == "CMYK":
        return _from_cmyk(img)
    if img.mode.startswith("I") or img.mode == "F":
        return _from_wide_gray(img)
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(f"cannot convert a {img.mode} image to RGB ({exc})") from exc


def decode_rgb(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB image; raise `ImageRejected` with the reason."""
    if not data:
        raise ImageRejected("empty image member (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageRejected("not an image: Pillow cannot identify these bytes") from exc
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from exc
        except Exception as exc:  # Pillow's plugins raise many types for malformed files
            raise ImageRejected(f"truncated or corrupt image header ({_describe(exc)})") from exc
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(
                f"decompression bomb: {width}x{height} = {width * height} pixels is over the "
                f"limit of {max_pixels}"
            )
        if width == 0 or height == 0:
            raise ImageRejected(f"image has no pixels ({width}x{height})")
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from exc
        except Exception as exc:
            raise ImageRejected(f"truncated or corrupt image data ({_describe(exc)})") from exc
    with contextlib.suppress(Exception):  # malformed EXIF loses the rotation, not the image
        img = ImageOps.exif_transpose(img)
    return to_rgb(img, background)
