"""Make `gtok/demo_photos/`: small JPEG crops of public-domain / CC0 photographs for `gtok demo`.

The photographs are scikit-image's sample data (installed with `gtok[dev]`); only colour
photographs whose scikit-image documentation (the docstrings of `skimage.data.<name>`)
states public domain or CC0 are used. Each gives `len(CROPS)` square crops resized to
`SIZE` px, saved as `gtok/demo_photos/images/<nn>-<photo>.jpg` (so that sorted by name, the first
files are the whole photographs, one of each: the demo's report grid shows the first ones),
and `LICENSES.md` lists every source with its author and licence. The output depends only
on the scikit-image data files and Pillow's resampling.

    .venv/bin/python tools/make_demo_photos.py      # rewrites gtok/demo_photos/
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import skimage
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "gtok" / "demo_photos"
SIZE = 96  # px; larger than the tiny preset's 64, so encode's resize path is exercised
QUALITY = 90

# (name, scikit-image file, what it shows, author, licence, where it comes from)
PHOTOS = [
    (
        "astronaut",
        "astronaut.png",
        "Astronaut Eileen Collins",
        "NASA",
        "public domain (no known copyright restrictions)",
        "NASA Great Images database, https://flic.kr/p/r9qvLn",
    ),
    (
        "chelsea",
        "chelsea.png",
        "Chelsea the cat",
        "Stefan van der Walt",
        "CC0",
        "scikit-image sample data",
    ),
    (
        "coffee",
        "coffee.png",
        "Coffee cup (courtesy of Pikolo Espresso Bar)",
        "Rachel Michetti",
        "CC0",
        "scikit-image sample data",
    ),
    (
        "rocket",
        "rocket.jpg",
        "Launch of DSCOVR on a Falcon 9",
        "SpaceX",
        "public domain",
        "SpaceX Photos, https://www.flickr.com/photos/spacexphotos/16511594820/",
    ),
    (
        "hubble",
        "hubble_deep_field.jpg",
        "Hubble eXtreme Deep Field",
        "NASA",
        "public domain",
        "HubbleSite, http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    (
        "retina",
        "retina.jpg",
        "Fundus photograph of a normal left eye",
        "Mikael Häggström",
        "CC0 1.0",
        "Wikimedia Commons, "
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
]

# square crops: (centre x, centre y) as fractions of the width and height, side as a
# fraction of the shorter side; boxes are moved inside the photo where they stick out
CROPS = [
    (0.5, 0.5, 1.0),
    (0.3, 0.3, 0.5),
    (0.7, 0.3, 0.5),
    (0.3, 0.7, 0.5),
    (0.7, 0.7, 0.5),
    (0.5, 0.5, 0.3),
]


def crop_box(width: int, height: int, cx: float, cy: float, side: float) -> tuple[int, ...]:
    """The pixel box (left, top, right, bottom) of one crop, inside the photo."""
    s = round(side * min(width, height))
    left = min(max(round(cx * width - s / 2), 0), width - s)
    top = min(max(round(cy * height - s / 2), 0), height - s)
    return left, top, left + s, top + s


def make(out: Path) -> list[Path]:
    """Write the crops and LICENSES.md into `out` (replacing it); returns the JPEG paths."""
    data = Path(skimage.__file__).parent / "data"
    if out.exists():
        shutil.rmtree(out)
    written = []
    (out / "images").mkdir(parents=True)
    for name, filename, _, _, _, _ in PHOTOS:
        photo = Image.open(data / filename).convert("RGB")
        for n, (cx, cy, side) in enumerate(CROPS, start=1):
            box = crop_box(photo.width, photo.height, cx, cy, side)
            crop = photo.crop(box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            path = out / "images" / f"{n:02d}-{name}.jpg"
            crop.save(path, "JPEG", quality=QUALITY, optimize=True)
            written.append(path)
    (out / "LICENSES.md").write_text(licenses())
    return written


def licenses() -> str:
    lines = [
        "# Demo photographs and their licences",
        "",
        f"{len(PHOTOS) * len(CROPS)} JPEG crops ({SIZE}x{SIZE} px, quality {QUALITY}) for "
        "`gtok demo`, made by `tools/make_demo_photos.py` from scikit-image "
        f"{skimage.__version__}'s sample data (`skimage/data/`). `images/NN-<name>.jpg` is "
        f"square crop NN of {len(CROPS)} of one photograph (01: the centred square of the whole "
        "photograph; 02-05: half-size squares around its four quarters; 06: a centred "
        "square of 0.3 of the shorter side). The licence of each photograph is as "
        "scikit-image documents it in the docstring of `skimage.data.<name>`.",
        "",
        "| files | source file | photograph | author | licence | origin |",
        "|---|---|---|---|---|---|",
    ]
    for name, filename, title, author, licence, origin in PHOTOS:
        row = (f"`*-{name}.jpg`", f"`{filename}`", title, author, licence, origin)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args()
    paths = make(args.out)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} photos ({total / 1000:.0f} kB) and LICENSES.md to {args.out}")


if __name__ == "__main__":
    main()
