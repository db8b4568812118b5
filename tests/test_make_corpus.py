"""tools/make_corpus.py on tiny synthetic photographs in a temporary folder (not the real
packages): split by photograph, 64x64 crops, byte-identical rebuilds, duplicates found
(also resized ones), reserved and missing packages refused."""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import make_corpus as mc
from corpus_sources import RESERVED, Photo, debian_photos, skimage_photos


def _picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random picture (a 6x6 grid of random colours, bicubic-upscaled)."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def photos(tmp_path) -> list[mc.Found]:
    """Six distinct pictures, a half-size copy of picture 0, an identical copy of picture
    1 in another 'package', and two noise textures (different, but alike in 16x16)."""
    root = tmp_path / "src"
    for pkg in ("pkg-a", "pkg-b"):
        (root / pkg).mkdir(parents=True)
    for i in range(6):
        _picture(i, (160 + 8 * i, 120)).save(root / "pkg-a" / f"p{i}.png")
    _picture(0, (160, 120)).resize((80, 60), Image.Resampling.LANCZOS).save(
        root / "pkg-b" / "p0-small.jpg", quality=90
    )
    (root / "pkg-b" / "p1-copy.png").write_bytes((root / "pkg-a" / "p1.png").read_bytes())
    for i in range(2):
        noise = np.random.default_rng(10 + i).integers(100, 156, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "pkg-b" / f"noise{i}.png")
    table = [Photo("pkg-a", f"p{i}", f"pkg-a/p{i}.png", "CC0") for i in range(6)]
    names = ("p0-small.jpg", "p1-copy.png", "noise0.png", "noise1.png")
    table += [Photo("pkg-b", n.split(".")[0], f"pkg-b/{n}", "CC-BY-4.0") for n in names]
    return [mc.find_photo(p, root, "1.0") for p in table]


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _crops(out: Path, part: str) -> list[tuple[dict, Image.Image]]:
    crops = []
    for shard in sorted(out.glob(f"{part}-*.tar")):
        members = _members(shard)
        for name in sorted(n for n in members if n.endswith(".json")):
            image = Image.open(io.BytesIO(members[name.replace(".json", ".jpg")]))
            crops.append((json.loads(members[name]), image))
    return crops


def test_identical_and_resized_duplicates_are_dropped_textures_are_kept(photos):
    kept, dropped = mc.dedupe(photos)
    reasons = {d["name"]: (d["reason"], d["of"]) for d in dropped}
    assert reasons == {
        "pkg-b/p0-small": ("near-duplicate", "pkg-a/p0"),  # the larger one is kept
        "pkg-b/p1-copy": ("identical file", "pkg-a/p1"),
    }
    assert {"pkg-b/noise0", "pkg-b/noise1"} <= {k.name for k in kept}
    assert len(kept) == 8


def test_the_corpus_is_split_by_photograph_into_64px_crops(photos, tmp_path):
    document = mc.build(photos, tmp_path / "out", seed=1, crops_per_photo=5, val_fraction=0.25)
    out = tmp_path / "out"
    train, val = _crops(out, "train"), _crops(out, "val")
    train_photos = {meta["photo"] for meta, _ in train}
    val_photos = {meta["photo"] for meta, _ in val}
    assert len(val_photos) == 2 and len(train_photos) == 6 and not train_photos & val_photos
    assert (len(train), len(val)) == (30, 10)
    assert all(img.size == (64, 64) and img.mode == "RGB" for _, img in train + val)
    splits = {p["name"]: p["split"] for p in document["photos"]}
    assert {n for n, s in splits.items() if s == "val"} == val_photos
    assert document["counts"]["crops"] == {"train": 30, "val": 10}
    record = next(p for p in document["photos"] if p["name"] == "pkg-a/p2")
    assert record["licence"] == "CC0" and record["version"] == "1.0"
    assert len(record["sha256"]) == 64 and "pkg-a/p2" in (out / "LICENSES.md").read_text()


def test_crop_boxes_are_the_centre_square_then_squares_of_an_eighth_to_a_half():
    boxes = mc.crop_boxes(1200, 800, 400, np.random.default_rng(0))
    assert boxes[0] == (200, 0, 1000, 800)
    sides = np.array([r - left for left, _, r, _ in boxes[1:]])
    assert all(b - t == r - left for left, t, r, b in boxes)  # squares
    assert sides.min() >= 100 and sides.max() <= 400 and sides.max() - sides.min() > 200
    assert all(left >= 0 and r <= 1200 and t >= 0 and b <= 800 for left, t, r, b in boxes)
    small = mc.crop_boxes(200, 150, 50, np.random.default_rng(0))  # 1/8 would be 19 px
    assert min(r - left for left, _, r, _ in small) == 64  # never upscaled


def test_the_same_inputs_and_seed_give_byte_identical_files(photos, tmp_path):
    for name in ("a", "b"):
        mc.build(photos, tmp_path / name, seed=3, crops_per_photo=4, val_fraction=0.2)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "train-000000.tar" in files and "val-000000.tar" in files
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    mc.build(photos, tmp_path / "c", seed=4, crops_per_photo=4, val_fraction=0.2)
    other = (tmp_path / "c" / "train-000000.tar").read_bytes()
    assert other != (tmp_path / "a" / "train-000000.tar").read_bytes()


def test_mate_backgrounds_is_refused_and_never_listed():
    assert "mate-backgrounds" in RESERVED
    with pytest.raises(mc.CorpusError, match=r"mate-backgrounds .* reserved"):
        mc.refuse_reserved([Photo("mate-backgrounds", "x", "/usr/share/x.jpg", "GPL-2+")])
    with pytest.raises(mc.CorpusError, match="reserved"):
        mc.refuse_reserved([Photo("other", "x", "/usr/share/backgrounds/mate/a.jpg", "GPL")])
    listed = debian_photos() + skimage_photos()
    assert not any(p.package in RESERVED or "mate" in p.pattern for p in listed)
    assert len({(p.package, p.name) for p in listed}) == len(listed)


def test_missing_packages_are_named_in_one_sentence():
    table = [Photo(p, "x", "/x", "CC0") for p in ("have", "lack-1", "lack-2")]
    with pytest.raises(
        mc.CorpusError, match=r"missing Debian packages: lack-1 lack-2; .*--install"
    ):
        mc.resolve_packages(table, {"have": "1"}.get, may_install=False)
    assert mc.resolve_packages(table[:1], {"have": "1"}.get, may_install=False) == {"have": "1"}


def test_a_licence_the_copyright_file_does_not_name_is_refused(tmp_path):
    copyright_file = tmp_path / "copyright"
    copyright_file.write_text("Files: *\nLicense: GPL-2+\n")
    mc.check_licence("pkg", "GPL-2+", copyright_file)
    with pytest.raises(mc.CorpusError, match="does not name the licence CC0"):
        mc.check_licence("pkg", "CC0", copyright_file)


def test_an_existing_folder_that_is_not_a_corpus_is_refused(photos, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(mc.CorpusError, match=r"holds no corpus\.json"):
        mc.build(photos, tmp_path / "out", seed=0, crops_per_photo=2, val_fraction=0.2)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
