"""Read one file and decide what goes into the shard: its bytes as they are, re-encoded, or
a reason.

Every file is decoded in full with `gtok.data.images.decode_rgb_reduced` (the decoder
`gtok encode` and training use), so what is packed is what they can read: a file that is not
an image, is empty, truncated or corrupt, or claims more than `max_pixels` pixels is skipped
with the decoder's reason; one larger than `DEFAULT_MAX_MEMBER_BYTES` (the tar member limit
of `gtok encode`) is skipped after reading no more than that. The image format
(`IMAGE_FORMATS`, `gtok pack --image-format`):

- "keep" (default): a JPEG, PNG or WebP file (by its content, whatever its name says) is
  kept byte for byte under the matching extension; a GIF, BMP or TIFF file (the other
  formats gtok reads, `gtok.data.images.PILLOW_FORMATS`) is stored as PNG.
- "png", "webp", "jpg": every sample gets that extension. A file already in that format is
  kept byte for byte; any other is re-encoded: PNG and WebP losslessly, JPEG at quality
  `JPEG_QUALITY` with no chroma subsampling (lossy).

What is re-encoded is the 8-bit RGB image the decoder returns: first frame, EXIF
orientation applied, transparency composited on white, CMYK and 16-bit converted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtok.data.folderio import read_image_file
from gtok.data.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_rgb_reduced
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES

__all__ = ["IMAGE_FORMATS", "JPEG_QUALITY", "KEPT_FORMATS", "Checked", "check_file"]

KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # Pillow format -> extension
IMAGE_FORMATS = ("keep", *KEPT_FORMATS.values())  # what `--image-format` takes
JPEG_QUALITY = 95
# extension -> Pillow's save arguments of a re-encoded image
_ENCODE: dict[str, dict[str, Any]] = {
    "png": {"format": "PNG"},
    "webp": {"format": "WEBP", "lossless": True},
    "jpg": {"format": "JPEG", "quality": JPEG_QUALITY, "subsampling": 0},
}


@dataclass
class Checked:
    """The verdict on one file: `data` to store under `ext`, or `reason` to skip it.

    width, height: the upright image's size; format: Pillow's name of the file's format;
    converted: the file was re-encoded (as `ext`).
    """

    data: bytes | None = None
    ext: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    converted: bool = False
    reason: str | None = None


def check_file(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, image_format: str = "keep"
) -> Checked:
    """Read and decode the file at `path` and store it as `image_format` (one of
    `IMAGE_FORMATS`); never raises for bad data (see the module doc)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    data, reason = read_image_file(path, DEFAULT_MAX_MEMBER_BYTES)
    if data is None:
        return Checked(reason=reason)
    try:
        decoded = decode_rgb_reduced(data, max_pixels=max_pixels)
    except ImageRejected as exc:
        return Checked(reason=str(exc))
    except Exception as exc:  # one odd file must not end a long run: record it instead
        return Checked(reason=f"unexpected {type(exc).__name__} ({exc})")
    rgb, fmt = decoded.image, decoded.format
    width, height = rgb.size
    ext = KEPT_FORMATS.get(fmt, "png") if image_format == "keep" else image_format
    if KEPT_FORMATS.get(fmt) == ext:
        return Checked(data, ext, width, height, fmt)
    buffer = io.BytesIO()
    rgb.save(buffer, **_ENCODE[ext])
    return Checked(buffer.getvalue(), ext, width, height, fmt, converted=True)
