"""Large JPEG photographs installed on this machine, for the image-path benchmark.

Wallpaper packages (plasma-workspace-wallpapers, ubuntu/lomiri/ukui wallpapers), opencv-doc's
and scikit-image's sample data; files of the mate-backgrounds package are never used. The
same picture often ships at several names: each is taken once (by content hash).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

__all__ = ["large_jpegs"]

FOLDERS = (
    "/usr/share/wallpapers",
    "/usr/share/backgrounds",
    "/usr/share/doc/opencv-doc",
)


def _skimage_data() -> list[str]:
    try:
        import skimage
    except ImportError:
        return []
    return [str(Path(skimage.__file__).parent / "data")]


def large_jpegs(min_pixels: int = 2_000_000, limit: int | None = None) -> list[Path]:
    """Distinct JPEG files of at least `min_pixels` pixels, sorted by path."""
    found: dict[str, Path] = {}
    for folder in (*FOLDERS, *_skimage_data()):
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg") or "mate" in str(path).lower():
                continue
            try:
                with Image.open(path) as img:
                    big = img.format == "JPEG" and img.width * img.height >= min_pixels
            except OSError:
                continue
            if big:
                found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    paths = sorted(found.values())
    return paths[:limit] if limit else paths
