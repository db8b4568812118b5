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
- Only the formats of `PILLOW_FORMATS` reach a Pillow decoder: anything else (PostScript/EPS,
  which Pillow would hand to Ghostscript, PDF, and every format gtok does not document) is
  rejected as not an image, naming PostScript or PDF when it is one.
- A float image (mode F, e.g. a 32-bit TIFF) with NaN or infinite pixels is rejected: such a
  pixel has no colour to give it.

`decode_rgb_reduced` does the same but may decode a large JPEG at 1/2, 1/4 or 1/8 of its size
(Pillow's draft mode: libjpeg's DCT-domain scaling, several times faster than a full decode),
and says which region of the smaller image the full image covers, so a later resize samples
the same geometry it would have sampled from the full image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from gtok.data.magic import HEAD_BYTES, sniff

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PILLOW_FORMATS",
    "ImageRejected",
    "Reduced",
    "decode_rgb",
    "decode_rgb_reduced",
    "member_ext",
    "transpose_box",
    "upright_rgb",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within a sample
# the Pillow formats gtok decodes (JPEG, PNG and WebP members; what `gtok pack` converts)
PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SRGB = None
_DRAFT_SCALES = (8, 4, 2)  # the reductions libjpeg's scaled IDCT offers, largest first
_T = Image.Transpose
# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose)
_ORIENTATION = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}
_SWAPS_SIDES = {_T.ROTATE_90, _T.ROTATE_270, _T.TRANSPOSE, _T.TRANSVERSE}
# where a point (x, y) of a w x h image lands after each transposition (continuous coordinates)
_POINT = {
    _T.FLIP_LEFT_RIGHT: lambda x, y, w, h: (w - x, y),
    _T.FLIP_TOP_BOTTOM: lambda x, y, w, h: (x, h - y),
    _T.ROTATE_180: lambda x, y, w, h: (w - x, h - y),
    _T.ROTATE_90: lambda x, y, w, h: (y, w - x),
    _T.ROTATE_270: lambda x, y, w, h: (h - y, x),
    _T.TRANSPOSE: lambda x, y, w, h: (y, x),
    _T.TRANSVERSE: lambda x, y, w, h: (h - y, w - x),
}

Box = tuple[float, float, float, float]


class ImageRejected(Exception):
    """The bytes cannot be turned into an RGB image; the message is the reason to record."""


def member_ext(data: bytes) -> str:
    """The member extension to file image bytes under, by their first bytes: `png`, `webp`,
    else `jpg`. Only where the image is, not how it is read: the decoder tells the format
    from the bytes, so GIF, BMP and TIFF bytes under `jpg` decode as they are."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


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
            rgb = ImageCms.profileToProfile(img, source, _srgb_profile(), outputMode="RGB")
            assert rgb is not None  # profileToProfile returns None only when in place
            return rgb
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: Pillow's plain conversion below is still a fair answer
    return img.convert("RGB")


def _check_finite(values: np.ndarray) -> None:
    """Reject a float image with NaN or infinite pixels."""
    bad = values.size - int(np.isfinite(values).sum())
    if bad:
        raise ImageRejected(
            f"float image with {bad} NaN or infinite pixels of {values.size}: they have no colour"
        )


def _from_wide_gray(img: Image.Image) -> Image.Image:
    """16- or 32-bit integer or float grayscale -> 8-bit RGB, scaling rather than clipping."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        _check_finite(values)
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
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


@dataclass(frozen=True)
class Reduced:
    """A decoded image, possibly smaller than the file (JPEG draft).

    image: upright 8-bit RGB. full_size: upright (width, height) of the full-resolution image
    (pixels). box: (left, top, right, bottom) of the full image in `image`'s pixel
    coordinates (fractional when a side is not a multiple of the reduction): pass it as
    `box` to `Image.resize`. scale: the reduction (1: the full image). format: Pillow's name
    of the file's format (one of `PILLOW_FORMATS`, or "MPO": a JPEG with several pictures).
    """

    image: Image.Image
    full_size: tuple[int, int]
    box: Box
    scale: int = 1
    format: str = ""


def transpose_box(box: Box, size: tuple[int, int], method: Image.Transpose) -> Box:
    """The region `box` of a `size` (width, height) image after `image.transpose(method)`."""
    x0, y0, x1, y1 = box
    corners = [_POINT[method](x, y, *size) for x, y in ((x0, y0), (x1, y1))]
    xs, ys = sorted(c[0] for c in corners), sorted(c[1] for c in corners)
    return (xs[0], ys[0], xs[1], ys[1])


def _not_an_image(data: bytes) -> str:
    """The reason for bytes that are none of `PILLOW_FORMATS`, naming what they are when
    `gtok.data.magic` knows it (PostScript, PDF, a compressed file)."""
    magic = sniff(data[:HEAD_BYTES])
    if magic is None:
        return f"not an image: these bytes are not {_FORMAT_NAMES}"
    return f"not an image: these bytes are {magic.name}, which gtok does not read"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image and check its header size (nothing decoded yet)."""
    if not data:
        raise ImageRejected("empty image member (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageRejected(_not_an_image(data)) from exc
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
    return img


def _draft(img: Image.Image, min_side: int | None) -> int:
    """Ask a JPEG to decode at the largest reduction (8, 4, 2) that keeps its shorter side at
    least `min_side`; -> the reduction Pillow set up (1: none)."""
    if min_side is None or img.format != "JPEG":
        return 1
    width, height = img.size
    for scale in _DRAFT_SCALES:
        if min(width, height) >= scale * min_side:
            drafted = img.draft(img.mode, (width // scale, height // scale))
            return 1 if drafted is None else round(width / drafted[1][2])
    return 1


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from exc
    except Exception as exc:
        raise ImageRejected(f"truncated or corrupt image data ({_describe(exc)})") from exc


def _upright(img: Image.Image) -> tuple[Image.Image, Image.Transpose | None]:
    """Apply the EXIF orientation -> (image, the transposition applied or None)."""
    try:
        method = _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
        return ImageOps.exif_transpose(img), method
    except Exception:  # malformed EXIF loses the rotation, not the image
        return img, None


def upright_rgb(
    img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """A PIL image of any mode as decoding makes it: EXIF orientation applied, then 8-bit
    RGB (alpha composited over `background`)."""
    return to_rgb(_upright(img)[0], background)


def decode_rgb_reduced(
    data: bytes,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Reduced:
    """`decode_rgb`, except that a JPEG whose shorter side is at least 2 * `min_side` is
    decoded at the largest reduction (1/2, 1/4 or 1/8, in the DCT domain) that keeps its
    shorter side at least `min_side` pixels; None never reduces. Raises `ImageRejected`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open(data, max_pixels)
        full, fmt = img.size, img.format or ""
        scale = _draft(img, min_side)
        _load(img)
    box: Box = (0.0, 0.0, full[0] / scale, full[1] / scale)
    stored = img.size
    img, method = _upright(img)
    if method is not None:
        box = transpose_box(box, stored, method)
        full = (full[1], full[0]) if method in _SWAPS_SIDES else full
    return Reduced(to_rgb(img, background), full, box, scale, fmt)


def decode_rgb(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB image; raise `ImageRejected` with the reason."""
    return decode_rgb_reduced(data, max_pixels=max_pixels, background=background).image
