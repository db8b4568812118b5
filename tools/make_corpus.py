"""Build a training corpus of 64x64 photo crops from photographs that Debian and PyPI
packages ship (the table and how it was chosen: `tools/corpus_sources.py`).

Steps: find each photograph (one file per photograph: the largest when a package ships
several resolutions), check its package's licence, drop duplicates (identical files, and
the same picture at another size: `near_duplicate`), split by photograph into train and
val (so no photograph gives crops to both), and cut crops: per photograph the whole
image's centre square, then random squares of side 1/2 to 1/8 of the short side
(log-uniform; at least 64 px, so small photos are not upscaled), each resized to 64x64
with Pillow's bicubic filter (antialiased). Crops are JPEG (quality 95, no chroma
subsampling) in WebDataset shards `train-NNNNNN.tar` and `val-NNNNNN.tar` with
`gtok pack`'s tar conventions (`gtok.pack.shard.ShardWriter`): each sample `KEY.jpg` +
`KEY.json` {"photo", "package", "box" in source pixels}; train crops are shuffled across
photographs before sharding. `corpus.json` records the settings, counts, every photograph
(file, package, version, licence, sha256, split) and what was dropped; `LICENSES.md` lists
the photographs with their licences. The same packages and seed give byte-identical files.

    .venv/bin/python tools/make_corpus.py --out /work/corpus --install
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from glob import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from corpus_sources import (
    RESERVED,
    RESERVED_DIRS,
    SKIMAGE,
    Photo,
    debian_photos,
    skimage_photos,
)

from gtok.data.samples import NO_LABEL
from gtok.pack.shard import ShardWriter

SIZE = 64  # px, side of every crop
QUALITY = 95  # JPEG quality of the crops
MIN_SCALE, MAX_SCALE = 1 / 8, 1 / 2  # random crop side as a fraction of the short side
PER_SHARD = 2000  # crops per tar shard
THUMB = 16  # px, side of the thumbnails compared for near-duplicates
FORMAT = "gtok-corpus"


class CorpusError(Exception):
    """A problem the user must fix; main prints it as one `error:` line."""


@dataclass(frozen=True)
class Found:
    """A photograph found on disk. width, height: pixels of `path` (upright)."""

    name: str  # unique: "package/photo"
    package: str
    version: str
    licence: str
    path: str
    sha256: str
    width: int
    height: int


def refuse_reserved(photos: Iterable[Photo]) -> None:
    """Raise if a photograph comes from a package reserved as evaluation data."""
    for photo in photos:
        if photo.package in RESERVED or photo.pattern.startswith(RESERVED_DIRS):
            raise CorpusError(
                f"{photo.package} ({photo.pattern}) is reserved as unseen evaluation data; "
                "remove it from the corpus sources."
            )


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or None (also without dpkg)."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def install(packages: list[str]) -> None:
    """apt-get install the Debian packages (root and a reachable mirror needed)."""
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        failed = subprocess.run(command, check=False).returncode != 0
    except FileNotFoundError:
        failed = True
    if failed:
        raise CorpusError(f"`{' '.join(command)}` failed; run it by hand and read its output.")


def resolve_packages(
    photos: list[Photo], versions: Callable[[str], str | None], may_install: bool
) -> dict[str, str]:
    """{package: version} of every Debian package of `photos`, installing the missing
    ones with `may_install`, else raising with their names."""
    packages = sorted({p.package for p in photos})
    missing = [p for p in packages if versions(p) is None]
    if missing and may_install:
        install(missing)
        missing = [p for p in packages if versions(p) is None]
    if missing:
        raise CorpusError(
            f"missing Debian packages: {' '.join(missing)}; install them "
            "(apt-get install --no-install-recommends ...) or pass --install."
        )
    return {p: str(versions(p)) for p in packages}


def check_licence(package: str, licence: str, copyright_file: Path) -> None:
    """Raise unless the package's copyright file names `licence`."""
    try:
        text = copyright_file.read_text(errors="replace")
    except OSError as exc:
        raise CorpusError(f"cannot read {copyright_file} ({exc.strerror}).") from exc
    if f"License: {licence}" not in text:
        raise CorpusError(
            f"{copyright_file} does not name the licence {licence} listed for {package}; "
            "check the package's licences and update tools/corpus_sources.py."
        )


def sha256_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def open_rgb(path: str) -> Image.Image:
    """The image at `path` as upright 8-bit RGB."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _pixels(path: str) -> int:
    with Image.open(path) as img:
        return img.width * img.height


def find_photo(photo: Photo, root: Path, version: str) -> Found | None:
    """The file of `photo` (its glob under `root`; the one with most pixels), or None."""
    matches = sorted(glob(str(root / photo.pattern)))
    if not matches:
        return None
    path = max(matches, key=lambda m: (_pixels(m), m))
    with Image.open(path) as img:
        width, height = img.size
    name = f"{photo.package}/{photo.name}"
    sha = sha256_file(path)
    return Found(name, photo.package, version, photo.licence, path, sha, width, height)


def thumbnail(path: str) -> np.ndarray:
    """float32 [THUMB, THUMB, 3] in 0..255: the whole image squeezed to a square."""
    small = open_rgb(path).resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def near_duplicate(a: Found, ta: np.ndarray, b: Found, tb: np.ndarray) -> bool:
    """The same picture at another size or encoding: same aspect ratio (within 2%), and
    16x16 thumbnails with correlated structure (>= 0.95) and close colours (mean absolute
    difference <= 8 of 255). Different textures or photos correlate far less."""
    if abs(a.width / a.height - b.width / b.height) > 0.02 * (a.width / a.height):
        return False
    if np.abs(ta - tb).mean() > 8:
        return False
    ga, gb = ta.mean(axis=2).ravel(), tb.mean(axis=2).ravel()
    ga, gb = ga - ga.mean(), gb - gb.mean()
    norm = float(np.linalg.norm(ga) * np.linalg.norm(gb))
    return norm > 0 and float(ga @ gb) / norm >= 0.95


def dedupe(found: list[Found]) -> tuple[list[Found], list[dict]]:
    """(kept, dropped): of identical files and near-duplicates, the largest is kept
    (ties: the first name); each dropped one is recorded with the photograph it repeats."""
    order = sorted(found, key=lambda f: (-f.width * f.height, f.name))
    kept: list[tuple[Found, np.ndarray]] = []
    dropped = []
    for item in order:
        thumb = thumbnail(item.path)
        twin = next((k for k, t in kept if k.sha256 == item.sha256), None)
        reason = "identical file"
        if twin is None:
            twin = next((k for k, t in kept if near_duplicate(k, t, item, thumb)), None)
            reason = "near-duplicate"
        if twin is None:
            kept.append((item, thumb))
        else:
            dropped.append(
                {"name": item.name, "path": item.path, "reason": reason, "of": twin.name}
            )
    return sorted((k for k, _ in kept), key=lambda f: f.name), dropped


def split(names: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """{name: "train" | "val"}: a seeded choice of round(val_fraction * n) photographs
    (at least 1 when val_fraction > 0 and there are 2 or more) for val."""
    ordered = sorted(names)
    n_val = round(val_fraction * len(ordered))
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    rng = np.random.default_rng([seed, 1])
    val = {ordered[i] for i in rng.permutation(len(ordered))[:n_val]}
    return {n: "val" if n in val else "train" for n in ordered}


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def crop_boxes(
    width: int, height: int, count: int, rng: np.random.Generator, min_side: int = SIZE
) -> list[tuple]:
    """`count` square boxes (left, top, right, bottom) in pixels: the centre square of the
    short side, then squares of side short * 2**-u, u uniform in [1, 3] (1/2 .. 1/8 of the
    short side), but at least `min_side` (no crop is upscaled where the photo is large
    enough), at uniform positions inside the image."""
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    boxes = [(left, top, left + short, top + short)]
    for _ in range(count - 1):
        side = min(short, max(min_side, round(short * 2.0 ** -rng.uniform(1, 3))))
        x = int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, height - side + 1))
        boxes.append((x, y, x + side, y + side))
    return boxes


def encode_crop(image: Image.Image, box: tuple) -> bytes:
    """The box of `image` resized to SIZE x SIZE (bicubic, antialiased) as JPEG bytes."""
    crop = image.crop(box).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=QUALITY, subsampling=0)
    return buffer.getvalue()


def photo_crops(photo: Found, count: int, seed: int) -> list[tuple[bytes, dict]]:
    """The crops of one photograph: (JPEG bytes, metadata), seeded by (seed, its name)."""
    image = open_rgb(photo.path)
    rng = np.random.default_rng([seed, 2, _name_seed(photo.name)])
    return [
        (encode_crop(image, box), {"photo": photo.name, "package": photo.package, "box": box})
        for box in crop_boxes(image.width, image.height, count, rng)
    ]


def write_shards(out: Path, prefix: str, samples: list[tuple[bytes, dict]]) -> list[dict]:
    """`samples` into `out/PREFIX-NNNNNN.tar`, PER_SHARD each, keys PREFIX + index;
    returns [{"file", "samples", "bytes"}] per shard."""
    shards = []
    for index, start in enumerate(range(0, len(samples), PER_SHARD)):
        writer = ShardWriter(out, index, prefix)
        try:
            chunk = samples[start : start + PER_SHARD]
            for offset, (data, meta) in enumerate(chunk):
                writer.add(f"{prefix}{start + offset:07d}", "jpg", data, NO_LABEL, meta)
        except BaseException:
            writer.abort()
            raise
        shards.append({"file": writer.path.name, "samples": len(chunk), "bytes": writer.close()})
    return shards


def cut_split(
    photos: list[Found], splits: dict[str, str], count: int, seed: int
) -> dict[str, list[tuple[bytes, dict]]]:
    """{"train": crops, "val": crops}: val in photograph order, train shuffled (seeded)."""
    crops: dict[str, list] = {"train": [], "val": []}
    for photo in photos:
        crops[splits[photo.name]] += photo_crops(photo, count, seed)
    order = np.random.default_rng([seed, 3]).permutation(len(crops["train"]))
    crops["train"] = [crops["train"][i] for i in order]
    return crops


def prepare_out(out: Path) -> None:
    """Make `out` ready: new, empty, or a previous corpus (whose files are replaced)."""
    if out.exists() and any(out.iterdir()) and not (out / "corpus.json").exists():
        raise CorpusError(f"{out} is not empty and holds no corpus.json; give a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("train-*.tar"), *out.glob("val-*.tar")]:
        old.unlink()


def licenses_md(photos: list[Found], splits: dict[str, str]) -> str:
    """LICENSES.md: one row per photograph with its package, file and licence."""
    lines = [
        "# Corpus photographs and their licences",
        "",
        "Made by `tools/make_corpus.py`. Licences as the package's copyright file "
        "(`/usr/share/doc/PKG/copyright`) or scikit-image's docstrings state them.",
        "",
        "| photograph | package (version) | file | licence | split | sha256 |",
        "|---|---|---|---|---|---|",
    ]
    for p in photos:
        row = (p.name, f"{p.package} ({p.version})", f"`{p.path}`", p.licence, splits[p.name])
        lines.append("| " + " | ".join(row) + f" | `{p.sha256[:16]}` |")
    return "\n".join(lines) + "\n"


def build(
    found: list[Found], out: Path, seed: int, crops_per_photo: int, val_fraction: float
) -> dict:
    """Dedupe, split, cut and write the corpus into `out`; returns corpus.json's document."""
    photos, dropped = dedupe(found)
    splits = split([p.name for p in photos], val_fraction, seed)
    prepare_out(out)
    shards = {
        part: write_shards(out, part, crops)
        for part, crops in cut_split(photos, splits, crops_per_photo, seed).items()
    }
    document = {
        "format": FORMAT,
        "settings": {
            "seed": seed,
            "crops_per_photo": crops_per_photo,
            "val_fraction": val_fraction,
            "size": SIZE,
            "jpeg_quality": QUALITY,
            "crop_side": [MIN_SCALE, MAX_SCALE],
        },
        "counts": counts(photos, splits, shards),
        "photos": [asdict(p) | {"split": splits[p.name]} for p in photos],
        "dropped": dropped,
        "shards": shards,
    }
    (out / "corpus.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "LICENSES.md").write_text(licenses_md(photos, splits))
    return document


def counts(photos: list[Found], splits: dict[str, str], shards: dict[str, list]) -> dict:
    """Photographs per split and package, crops and bytes per split."""
    return {
        "photos": dict(Counter(splits.values())),
        "photos_per_package": dict(sorted(Counter(p.package for p in photos).items())),
        "crops": {part: sum(s["samples"] for s in v) for part, v in shards.items()},
        "bytes": {part: sum(s["bytes"] for s in v) for part, v in shards.items()},
    }


def skimage_found() -> list[Found]:
    """scikit-image's photographs (none without scikit-image)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise CorpusError(f"{SKIMAGE} is not installed; pip install {SKIMAGE}.")
    root = Path(spec.origin).parent / "data"
    version = importlib.metadata.version(SKIMAGE)
    return [f for p in skimage_photos() if (f := find_photo(p, root, version)) is not None]


def debian_found(may_install: bool) -> list[Found]:
    """The Debian packages' photographs (after checking and maybe installing them)."""
    photos = debian_photos()
    refuse_reserved(photos)
    versions = resolve_packages(photos, debian_version, may_install)
    found = []
    for photo in photos:
        check_licence(
            photo.package, photo.licence, Path(f"/usr/share/doc/{photo.package}/copyright")
        )
        item = find_photo(photo, Path("/"), versions[photo.package])
        if item is None:
            raise CorpusError(
                f"{photo.package} has no file {photo.pattern}; update tools/corpus_sources.py."
            )
        found.append(item)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crops-per-photo", type=int, default=200)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--install", action="store_true", help="apt-get install packages")
    args = parser.parse_args()
    if args.crops_per_photo < 1 or not 0 <= args.val_fraction < 1:
        parser.error("--crops-per-photo must be >= 1 and --val-fraction in [0, 1)")
    try:
        found = debian_found(args.install) + skimage_found()
        document = build(found, args.out, args.seed, args.crops_per_photo, args.val_fraction)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(document["counts"], indent=2))


if __name__ == "__main__":
    main()
