"""One input shard's samples, decoded: each is either a `Decoded` image or a `Skipped` reason,
in file order, followed by one `ShardEnd` that counts them (and says if the file itself was
damaged). The shard is a tar or a Parquet file (`gtok.data.sources`).

This is the layer encode, training and evaluation share: they differ only in the `prepare`
function (centre crop vs random crop) passed to `decode_shard`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gtok.data.images import IMAGE_EXTENSIONS, ImageRejected, decode_rgb_reduced
from gtok.data.shards import ShardRef
from gtok.data.sources import read_source
from gtok.data.tario import (
    DEFAULT_MAX_MEMBER_BYTES,
    MAX_TEXT_BYTES,
    NO_LABEL,
    RawSample,
    TarProblem,
)
from gtok.data.transforms import Preprocess, center_crop
from gtok.safeload import Unreadable, parse_json

__all__ = [
    "NO_LABEL",
    "Decoded",
    "ShardEnd",
    "Skipped",
    "center_prepare",
    "decode_shard",
    "image_member",
    "parse_caption",
    "parse_label",
    "parse_metadata",
    "with_text",
]


@dataclass
class Decoded:
    """A sample turned into model input.

    image: uint8 [S, S, 3] RGB (the caller scales it to [-1, 1]); label: the `.cls` value or
    `NO_LABEL`; upscaled: its shorter side was below the resize target.
    """

    key: str
    image: np.ndarray
    label: int
    upscaled: bool = False
    caption: str | None = None  # the `.txt` member, when read (`with_text`) and present
    meta: tuple[str, ...] = ()  # the chosen `.json` fields (`with_text`), "" when absent


@dataclass
class Skipped:
    """A sample that was read but cannot be used, and why."""

    key: str
    reason: str


@dataclass
class ShardEnd:
    """After a tar's last sample: `samples` read (decoded + skipped) and `problem`, set when the
    tar could not be read to its end (samples after that point, if any, are unknowable)."""

    samples: int
    problem: str | None = None


def image_member(raw: RawSample) -> bytes:
    """The bytes of the sample's image member (jpg, jpeg, png, webp, first found in that order)."""
    for ext in IMAGE_EXTENSIONS:
        if ext in raw.files:
            return raw.files[ext]
    members = ", ".join(f".{ext}" if ext else "(no extension)" for ext in raw.files) or "nothing"
    raise ImageRejected(f"no image member (jpg, jpeg, png or webp); the sample has {members}")


def parse_label(raw: RawSample) -> int:
    """The sample's `.cls` label as a non-negative int, `NO_LABEL` when it has none."""
    data = raw.files.get("cls")
    if data is None:
        return NO_LABEL
    try:
        label = int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ImageRejected(f"unreadable .cls label {data[:32]!r}") from None
    if not 0 <= label < 2**31:
        raise ImageRejected(f".cls label {label} is not in [0, 2^31)")
    return label


Prepare = Callable[[RawSample, int], Decoded]


def _text_limit(what: str, text: str) -> str:
    """`text`, or a rejection when it is over the store's limit for one caption or field."""
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        raise ImageRejected(f"{what} is {size} bytes, over the limit of {MAX_TEXT_BYTES}")
    return text


def parse_caption(raw: RawSample) -> str | None:
    """The sample's `.txt` caption (UTF-8, at most `tario.MAX_TEXT_BYTES`), None when it has
    none."""
    data = raw.files.get("txt")
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageRejected(f"the .txt caption is not UTF-8 ({data[:32]!r})") from None
    return _text_limit("the .txt caption", text)


def _meta_value(value: Any) -> str:
    """A metadata value as stored: strings as they are, null as "", others as JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_metadata(raw: RawSample, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The `fields` of the sample's `.json` object as strings ("" for absent fields, or for
    all when the sample has no `.json`); an unreadable `.json` rejects the sample."""
    data = raw.files.get("json")
    if not fields or data is None:
        return ("",) * len(fields)
    try:
        record = parse_json(data, ".json metadata")
    except Unreadable as exc:
        raise ImageRejected(f"unreadable .json metadata {data[:32]!r}: it {exc.reason}") from None
    if not isinstance(record, dict):
        raise ImageRejected(f".json metadata is a {type(record).__name__}, not an object")
    return tuple(_text_limit(f".json field {f!r}", _meta_value(record.get(f))) for f in fields)


def with_text(prepare: Prepare, fields: tuple[str, ...]) -> Prepare:
    """`prepare`, plus the sample's caption and metadata `fields` on the `Decoded`."""
    return _WithText(prepare, tuple(fields))


@dataclass(frozen=True)
class _WithText:
    prepare: Prepare
    fields: tuple[str, ...]

    def __call__(self, raw: RawSample, index: int) -> Decoded:
        caption, meta = parse_caption(raw), parse_metadata(raw, self.fields)
        decoded = self.prepare(raw, index)
        decoded.caption, decoded.meta = caption, meta
        return decoded


def center_prepare(preprocess: Preprocess) -> Prepare:
    """The `prepare` for encoding and evaluation: decode, resize + centre crop (no randomness)."""
    return _CenterPrepare(preprocess)


@dataclass(frozen=True)
class _CenterPrepare:
    preprocess: Preprocess

    def __call__(self, raw: RawSample, index: int) -> Decoded:
        label = parse_label(raw)
        reduced = decode_rgb_reduced(
            image_member(raw),
            min_side=self.preprocess.draft_min_side,
            max_pixels=self.preprocess.max_pixels,
            background=self.preprocess.background,
        )
        resize = self.preprocess.resize_to
        width, height = reduced.full_size
        resized = resize * int(resize * max(width, height) / min(width, height))
        if resized > self.preprocess.max_pixels:
            raise ImageRejected(
                f"extreme aspect ratio: {width}x{height} resized to a shorter side of {resize} "
                f"would have {resized} pixels, over the limit of {self.preprocess.max_pixels}"
            )
        crop, upscaled = center_crop(
            reduced.image,
            self.preprocess.image_size,
            resize,
            full_size=reduced.full_size,
            box=reduced.box,
        )
        return Decoded(raw.key, _pixels(crop), label, upscaled)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.array(img, dtype=np.uint8)  # writable: torch.from_numpy needs that


def decode_shard(
    source: ShardRef | str, prepare: Prepare, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[Decoded | Skipped | ShardEnd]:
    """Decode every sample of the input shard `source` (a `ShardRef`, or a tar's URL); never
    raises for bad data.

    `prepare(raw, index)` turns sample number `index` (0-based, in file order) into a
    `Decoded` or raises `ImageRejected` with the reason. A sample with a member over
    `max_member_bytes` is skipped without reading that member (`read_source`).
    """
    samples = 0
    problem = None
    for item in read_source(source, max_member_bytes):
        if isinstance(item, TarProblem):
            problem = item.reason
            continue
        index, samples = samples, samples + 1
        if item.problem is not None:
            yield Skipped(item.key, item.problem)
            continue
        try:
            decoded: Decoded | Skipped = prepare(item, index)
        except ImageRejected as exc:
            decoded = Skipped(item.key, str(exc))
        except Exception as exc:  # one odd sample must not end a long run: record it instead
            decoded = Skipped(item.key, f"unexpected {type(exc).__name__} ({exc})")
        yield decoded
    yield ShardEnd(samples, problem)
