"""Read one file and decide what goes into the shard: its bytes as they are, PNG, or a reason.

Every file is decoded in full with `gtok.data.decode_rgb` (the decoder `gtok encode` and
training use), so what is packed is what they can read: a file that is not an image, is
empty, truncated or corrupt, or claims more than `max_pixels` pixels is skipped with the
decoder's reason. A JPEG, PNG or WebP file (by its content, whatever its name says) is kept
byte for byte under the matching extension. Any other format Pillow reads (GIF, BMP, TIFF,
...) is stored as an 8-bit RGB PNG of what `decode_rgb` returns: first frame, EXIF
orientation applied, transparency composited on white, CMYK and 16-bit converted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from gtok.data.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_rgb

__all__ = ["KEPT_FORMATS", "Checked", "check_file"]

KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # Pillow format -> extension


@dataclass
class Checked:
    """The verdict on one file: `data` to store under `ext`, or `reason` to skip it.

    width, height: the upright image's size; format: Pillow's name of the file's format;
    converted: the file was re-encoded as PNG.
    """

    data: bytes | None = None
    ext: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    converted: bool = False
    reason: str | None = None


def check_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Checked:
    """Read and decode the file at `path`; never raises for bad data (see the module doc)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Checked(reason=f"unreadable file ({exc.strerror or exc})")
    if not data:
        return Checked(reason="empty file (0 bytes)")
    try:
        rgb = decode_rgb(data, max_pixels=max_pixels)
        with Image.open(io.BytesIO(data)) as header:
            fmt = header.format or "unknown"
    except ImageRejected as exc:
        return Checked(reason=str(exc))
    except Exception as exc:  # one odd file must not end a long run: record it instead
        return Checked(reason=f"unexpected {type(exc).__name__} ({exc})")
    width, height = rgb.size
    if fmt in KEPT_FORMATS:
        return Checked(data, KEPT_FORMATS[fmt], width, height, fmt)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return Checked(buffer.getvalue(), "png", width, height, fmt, converted=True)
