"""RGB PIL image -> the model's input tensor [3, S, S] in [-1, 1].

Evaluation and encoding: resize the shorter side to `resize` (default S) with Pillow's
bicubic filter, which is antialiased (its support widens with the downscale factor), then
take the centre S x S crop. Sizes are computed as torchvision's `Resize(int)` +
`CenterCrop` compute them. Images whose shorter side is below `resize` are upscaled the
same way; `center_crop` says so, so that encode can count them (stored as `upscaled`).

JPEG draft (`Preprocess.jpeg_draft`, on for new token stores): a JPEG whose shorter side is
at least `DRAFT_MARGIN` x 2 times the resize target is decoded at 1/2, 1/4 or 1/8 scale in
the DCT domain (keeping its shorter side >= `DRAFT_MARGIN` x the target) before the same
bicubic resize, which then samples the same region of the picture (`Reduced.box`). On 46
photographs of 2-24 MP (`bench/encode.py`) it takes 2.4x (256 px crops) to 3.2x (64 px)
less CPU per image, and its crops differ from the exact path's by PSNR 43.4 dB at worst
(median 54 dB); a margin of 1 instead of 2 would be 10% faster but fell to 31.5 dB.

Training: `random_resized_crop` (torchvision's RandomResizedCrop sampling: area fraction in
[0.08, 1], log-uniform aspect ratio in [3/4, 4/3], 10 tries then a centre crop) resized to
S x S with the same bicubic filter, then a horizontal flip with probability 1/2. All
randomness comes from the `numpy.random.Generator` passed in, so a sample's crop depends
only on how that generator was seeded (`sample_rng`), not on worker count or order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from gtok.data.images import DEFAULT_MAX_PIXELS
from gtok.errors import ArgumentError

__all__ = [
    "Preprocess",
    "center_crop",
    "check_resize",
    "random_resized_crop",
    "sample_rng",
    "to_tensor",
]

_RESAMPLE = Image.Resampling.BICUBIC
# A drafted JPEG keeps a shorter side of at least this times the resize target, so the
# antialiased bicubic resize still does most of the downscaling (measured: docs/results.md).
DRAFT_MARGIN = 2


@dataclass(frozen=True)
class Preprocess:
    """How images become model input; stored with every token store.

    image_size: S, the side of the square crop fed to the model (pixels).
    resize: the shorter side is resized to this before the centre crop (pixels, >= S);
        None means S.
    background: RGB the alpha channel is composited over.
    max_pixels: images with more pixels (width x height) are rejected as decompression bombs.
    jpeg_draft: decode large JPEGs at reduced scale first (see the module doc). Recorded only
        when on, so the records of stores written before it existed (exact decoding) equal
        those of jpeg_draft=False, and such stores resume with the exact path.
    """

    image_size: int
    resize: int | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(
                f"resize ({self.resize}) must be at least image_size ({self.image_size})"
            )
        object.__setattr__(self, "background", tuple(int(c) for c in self.background))

    @property
    def resize_to(self) -> int:
        return self.resize or self.image_size

    @property
    def draft_min_side(self) -> int | None:
        """The shorter side a drafted JPEG keeps at least (pixels); None: no draft."""
        return DRAFT_MARGIN * self.resize_to if self.jpeg_draft else None

    def to_dict(self) -> dict:
        """The record kept in the store: the parameters plus a sentence saying what they do."""
        record = asdict(self)
        record["background"] = list(self.background)
        record["resize"] = self.resize_to
        draft = ""
        if (side := self.draft_min_side) is not None:
            draft = (
                f"JPEGs with a shorter side of at least {2 * side} decoded at "
                f"1/2, 1/4 or 1/8 scale keeping it >= {side}, "
            )
        else:
            del record["jpeg_draft"]
        record["method"] = (
            f"exif orientation, RGB (alpha over background), {draft}shorter side resized to "
            f"{self.resize_to} with PIL bicubic (antialiased), center crop "
            f"{self.image_size}x{self.image_size}, scaled to [-1, 1]"
        )
        return record

    @classmethod
    def from_dict(cls, record: dict) -> Preprocess:
        return cls(
            image_size=int(record["image_size"]),
            resize=int(record["resize"]),
            background=tuple(record["background"]),
            max_pixels=int(record["max_pixels"]),
            jpeg_draft=bool(record.get("jpeg_draft", False)),
        )


def check_resize(
    resize: int | None, image_size: int, max_pixels: int, size_of: str = "the model's image size"
) -> None:
    """Refuse, before any image is read, a resize target that every image would fail.

    resize: the shorter side to resize to (pixels; None: `image_size`); image_size: S, the side of
    the crop, which `size_of` names in the message. A resized image has at least
    resize x resize pixels, so a target whose square exceeds `max_pixels` would skip every
    image as too large; one below S could not be cropped to S.
    """
    largest = math.isqrt(max_pixels)
    if largest < image_size:
        raise ArgumentError(
            f"max_pixels={max_pixels} would skip every image: its {image_size} px crops "
            f"need at least {image_size * image_size} pixels; raise max_pixels.",
            "max_pixels",
        )
    if resize is None or image_size <= resize <= largest:
        return
    why = (
        f"smaller than {size_of} {image_size}"
        if resize < image_size
        else f"so large that every resized image would exceed max_pixels={max_pixels}"
    )
    message = f"resize={resize} is {why}; use resize in {image_size}..{largest}."
    raise ArgumentError(message, "resize", "max_pixels")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image [H, W] -> float32 tensor [3, H, W] in [-1, 1] (0 -> -1, 255 -> 1)."""
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # [H, W, 3]
    return pixels.permute(2, 0, 1).contiguous().float().div_(127.5).sub_(1.0)


def center_crop(
    img: Image.Image,
    size: int,
    resize: int | None = None,
    *,
    full_size: tuple[int, int] | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> tuple[Image.Image, bool]:
    """Resize the shorter side to `resize` (default `size`), centre-crop `size` x `size`.

    A reduced (drafted) image passes the full image's `full_size` (width, height) and the
    `box` it covers in `img` (`Reduced`): sizes are computed from the full image and the
    resize samples `box`, as the full image would have been sampled.
    Returns the crop and whether the image had to be upscaled (shorter side < `resize`).
    """
    resize = resize or size
    width, height = full_size or img.size
    short, long = min(width, height), max(width, height)
    if short != resize or img.size != (width, height):
        new_long = int(resize * long / short)
        new_size = (resize, new_long) if width <= height else (new_long, resize)
        img = img.resize(new_size, _RESAMPLE, box=box)
    width, height = img.size
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return img.crop((left, top, left + size, top + size)), short < resize


def sample_rng(seed: int, epoch: int, shard_index: int, sample_index: int) -> np.random.Generator:
    """The generator for one sample's augmentation: a function of where it is, not who reads it."""
    return np.random.default_rng([seed, epoch, shard_index, sample_index])


def _crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float], ratio
) -> tuple[int, int, int, int]:
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> Image.Image:
    """A random crop (area fraction in `scale`, aspect in `ratio`) resized to `size` x `size`,
    mirrored left-right with probability 1/2 when `flip`."""
    left, top, w, h = _crop_box(*img.size, rng, scale, ratio)
    out = img.resize((size, size), _RESAMPLE, box=(left, top, left + w, top + h))
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out
