"""Make small WebDataset tar shards for tests: clean images, labels, and every odd case.

Images are drawn with numpy and saved with Pillow (or, for 16-bit RGB and decompression-bomb
headers that Pillow cannot write, assembled as PNG bytes by hand).
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})


def pixels(seed: int, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    """A smooth, seed-dependent uint8 RGB picture [H, W, 3] (width x height = `size`)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 6)
        out[..., c] = 127.5 + 120 * np.sin(fx * x + fy * y + phase)
    return out.astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    return encode(Image.fromarray(pixels(seed, size)), "JPEG", quality=92)


def png(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    return encode(Image.fromarray(pixels(seed, size)), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of uint16 [H, W, 3] (Pillow cannot write these)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims `width` x `height` pixels; its data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(seed: int, orientation: int = 6) -> bytes:
    """A 40x32 JPEG whose EXIF says `orientation` (6: display rotated 90 degrees clockwise)."""
    img = Image.fromarray(pixels(seed, (40, 32)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def write_tar(path: str | Path, samples: list[Sample]) -> Path:
    """Write `samples` as a tar (members `<key>.<ext>` in the given order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}" if ext else key)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def clean_samples(n: int, *, start: int = 0, labels: bool = True, size=(40, 32)) -> list[Sample]:
    """`n` JPEG samples keyed `%06d` from `start`, labels `index % 10` in `.cls` members."""
    out = []
    for i in range(start, start + n):
        files = {"jpg": jpeg(i, size)}
        if labels:
            files["cls"] = str(i % 10).encode()
        files["json"] = b'{"i": %d}' % i
        out.append((f"{i:06d}", files))
    return out


def write_clean_shards(folder: str | Path, shards: int, per_shard: int, **kw) -> list[Path]:
    """`shards` tars `shard-%04d.tar` of `per_shard` clean samples each (keys run on)."""
    return [
        write_tar(
            Path(folder) / f"shard-{s:04d}.tar",
            clean_samples(per_shard, start=s * per_shard, **kw),
        )
        for s in range(shards)
    ]


def odd_samples() -> list[tuple[Sample, str | None]]:
    """Samples of every odd kind with what should happen to each: None = encoded, or a
    fragment of the skip reason."""
    rgb = Image.fromarray(pixels(7))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    wide = np.zeros((32, 40, 3), np.uint16)
    wide[..., 0], wide[..., 1], wide[..., 2] = 65535, 32768, 256
    gray16 = Image.fromarray(np.full((32, 40), 32768, np.uint16))
    good_jpeg = jpeg(3)
    cases: list[tuple[Sample, str | None]] = [
        (("plain", {"jpg": good_jpeg, "cls": b"3"}), None),
        (("upper", {"JPEG": jpeg(4), "cls": b"4"}), None),
        (("png", {"png": png(5)}), None),
        (("webp", {"webp": encode(rgb, "WEBP", lossless=True)}), None),
        (("cmyk", {"jpg": encode(rgb.convert("CMYK"), "JPEG", quality=95)}), None),
        (("gray", {"jpg": encode(rgb.convert("L"), "JPEG")}), None),
        (("bilevel", {"png": encode(rgb.convert("1"), "PNG")}), None),
        (("palette", {"png": encode(palette, "PNG")}), None),
        (("palette_alpha", {"png": encode(transparent, "PNG", transparency=0)}), None),
        (("rgba", {"png": encode(rgba, "PNG")}), None),
        (("la", {"png": encode(rgba.convert("LA"), "PNG")}), None),
        (("gray16", {"png": encode(gray16, "PNG")}), None),
        (("rgb16", {"png": png16_rgb(wide)}), None),
        (("exif", {"jpg": exif_rotated_jpeg(8)}), None),
        (("tiny", {"jpg": jpeg(9, (5, 3))}), None),
        (("misnamed", {"png": good_jpeg}), None),
        (("not_image", {"jpg": b"this is not an image at all"}), "not an image"),
        (("truncated", {"jpg": good_jpeg[: len(good_jpeg) // 2]}), "truncated or corrupt"),
        (("empty", {"jpg": b""}), "empty image member"),
        (("bomb", {"png": bomb_png()}), "decompression bomb"),
        (("no_image", {"json": b"{}", "txt": b"caption"}), "no image member"),
        (("sliver", {"png": encode(Image.new("1", (1, 400_000)), "PNG")}), "extreme aspect ratio"),
        (("bad_label", {"jpg": good_jpeg, "cls": b"cat"}), "unreadable .cls label"),
        (("plain", {"jpg": good_jpeg}), "duplicate key"),
    ]
    return cases


# ---- hostile tars, written block by block ------------------------------------------------

_BLOCK = 512


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % _BLOCK)


def tar_member(name: str, data: bytes) -> bytes:
    """One GNU-format member (header + data padded to blocks). `name` may hold surrogate
    escapes (`"a\\udcff.jpg"`): they are written as the raw bytes they stand for."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    return header + _padded(data)


def sparse_member(name: str, claimed: int, stored: bytes = b"\xff\xd8") -> bytes:
    """An old-GNU sparse member (type `S`) of `claimed` bytes (< 8 GiB) that stores only
    `stored` at offset 0: a few bytes on disk, `claimed` bytes when read."""
    header = bytearray(_BLOCK)
    header[0:100] = name.encode().ljust(100, b"\0")
    header[100:108] = b"0000644\0"
    header[108:124] = b"0000000\0" * 2  # uid, gid
    header[124:136] = b"%011o\0" % len(stored)
    header[136:148] = b"%011o\0" % 0  # mtime
    header[156:157] = b"S"
    header[257:265] = b"ustar  \0"
    header[386:410] = b"%011o\0%011o\0" % (0, len(stored))  # the one data region
    header[483:495] = b"%011o\0" % claimed  # real size
    header[148:156] = b"%06o\0 " % (sum(header) + 8 * ord(" "))
    return bytes(header) + _padded(stored)


def pax_size_member(name: str, claimed: int, stored: bytes = b"\xff\xd8") -> bytes:
    """A PAX member whose `size` record claims `claimed` bytes, followed by only `stored`."""
    info = tarfile.TarInfo(name)
    info.size = claimed
    return info.tobuf(tarfile.PAX_FORMAT) + _padded(stored)


def huge_pax_header(claimed: int) -> bytes:
    """A PAX extended header (type `x`) that claims to be `claimed` bytes long itself."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = claimed
    return info.tobuf(tarfile.GNU_FORMAT) + _padded(b"30 path=never-read-anyway.jpg\n")


def write_raw_tar(path: str | Path, members: list[bytes], *, end: bool = True) -> Path:
    """Concatenate member blocks into a tar, with the end-of-archive blocks when `end`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(members) + (bytes(2 * _BLOCK) if end else b""))
    return path


def img2dataset_shard(
    folder: str | Path, shard: int, n: int, *, successes: int | None = None, keep: int | None = None
) -> Path:
    """A shard as img2dataset writes it: `%05d.tar` of `n` samples keyed `%05d%04d` with
    `.jpg`, `.txt` (the caption; none on every third sample) and `.json` (url, width, key,
    caption), and `%05d_stats.json` recording `successes` (default `n`). `keep`: cut the
    tar after that many samples, as a copy that stopped short would be."""
    samples = []
    for i in range(n):
        key = f"{shard:05d}{i:04d}"
        files = {"jpg": jpeg(1000 * shard + i)}
        caption = f"a picture number {i} of shard {shard}, caf\u00e9"
        if i % 3 != 2:
            files["txt"] = caption.encode()
        record = {
            "url": f"https://example.com/{key}.jpg",
            "width": 40,
            "key": key,
            "caption": caption,
        }
        files["json"] = json.dumps(record).encode()
        samples.append((key, files))
    path = write_tar(
        Path(folder) / f"{shard:05d}.tar", samples[:keep] if keep is not None else samples
    )
    stats = {
        "count": n + 1,
        "successes": n if successes is None else successes,
        "failed_to_download": 1,
    }
    (Path(folder) / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    return path
