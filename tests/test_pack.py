"""`gtok pack`: folders of images -> WebDataset shards, read back by gtok's reader and by the
`webdataset` package; keys, labels, bad files with reasons, stats, reruns, the CLI."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shardmaker import bomb_png, jpeg, pixels, png

import gtok
from gtok.cli.main import app
from gtok.data import NO_LABEL, Preprocess, center_prepare, decode_shard, read_tar
from gtok.data.keys import KeyMaker
from gtok.data.samples import Decoded
from gtok.errors import GtokError
from gtok.pack import base_key, pack_images
from gtok.pack.output import FORMAT_VERSION, MANIFEST


def _write(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _image(fmt: str, seed: int, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed)).save(buffer, fmt, **kw)
    return buffer.getvalue()


def _members(shards: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over every shard, in shard and tar order (gtok's reader)."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(shards.glob("shard-*.tar")):
        for sample in read_tar(str(tar)):
            assert sample.problem is None, sample
            assert sample.key not in out
            out[sample.key] = sample.files
    return out


def _stats(shards: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(shards.glob("shard-*_stats.json"))]


def test_keys_are_path_safe_and_unique():
    assert base_key("cats/Kitty 01.final.jpg") == "cats/Kitty_01_final"
    assert base_key("été/ü.png") == "_t_/_"
    assert base_key("README") == "README"
    assert base_key("a.b/.jpg") == "a_b/_jpg"
    maker = KeyMaker()
    keys = [maker.key(p) for p in ("a.jpg", "a.png", "A.webp", "a_2.jpg", "x y.jpg", "x_y.jpg")]
    assert keys == ["a", "a_2", "A_3", "a_2_2", "x_y", "x_y_2"]


def test_nesting_order_keys_and_bytes(tmp_path):
    src = tmp_path / "images"
    kept = _write(
        src,
        {
            "z.webp": _image("WEBP", 1, lossless=True),
            "my photo.jpeg": jpeg(2),
            "a/y.png": png(3),
            "a/b/c/x.jpg": jpeg(4),
            "img.v2.jpg": jpeg(5),
            "misnamed.jpg": png(6),  # PNG bytes under a .jpg name: stored as .png
        },
    )
    converted = _write(src, {"a/old.gif": _image("GIF", 7), "bitmap.bmp": _image("BMP", 8)})
    summary = pack_images(src, tmp_path / "shards", per_shard=3)
    assert (summary.files, summary.packed, summary.skipped, summary.converted) == (8, 8, 0, 2)
    assert summary.shards == 3 and summary.shard_pattern == "shard-{000000..000002}.tar"
    members = _members(tmp_path / "shards")
    # sorted by path components: a/b/c/x.jpg, a/old.gif, a/y.png, bitmap.bmp, img.v2.jpg, ...
    assert list(members) == [
        "a/b/c/x",
        "a/old",
        "a/y",
        "bitmap",
        "img_v2",
        "misnamed",
        "my_photo",
        "z",
    ]
    stored = {json.loads(m["json"])["path"]: m for m in members.values()}
    for rel, data in kept.items():
        ext = {"z.webp": "webp", "a/y.png": "png", "misnamed.jpg": "png"}.get(rel, "jpg")
        assert stored[rel][ext] == data, rel  # byte for byte
    for rel, data in converted.items():
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        got = Image.open(io.BytesIO(stored[rel]["png"]))
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want)
        meta = json.loads(stored[rel]["json"])
        assert (
            meta["converted"] is True
            and meta["format"] == {"gif": "GIF", "bmp": "BMP"}[rel.rsplit(".", 1)[1]]
        )
    assert all("cls" not in m for m in members.values())
    assert json.loads(stored["a/b/c/x.jpg"]["json"])["width"] == 40


def test_webdataset_reads_the_shards(tmp_path):
    """The `webdataset` package (an independent reader) sees the same keys and bytes."""
    import webdataset as wds

    src = tmp_path / "images"
    files = _write(src, {"cats/a.1.jpg": jpeg(1), "dogs/b c.png": png(2), "dogs/d.jpg": jpeg(3)})
    pack_images(src, tmp_path / "shards", per_shard=2, labels=True)
    urls = [str(p) for p in sorted((tmp_path / "shards").glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["cats/a_1", "dogs/b_c", "dogs/d"]
    assert samples[0]["jpg"] == files["cats/a.1.jpg"]
    assert samples[1]["png"] == files["dogs/b c.png"]
    assert [int(s["cls"]) for s in samples] == [0, 1, 1]


def test_labels_from_class_folders(tmp_path):
    src = tmp_path / "images"
    _write(
        src,
        {
            "dogs/d1.jpg": jpeg(1),
            "cats/c1.jpg": jpeg(2),
            "cats/kittens/k1.png": png(3),  # deeper: still class "cats"
            "loose.jpg": jpeg(4),  # not in a class folder
        },
    )
    (src / "empty").mkdir()  # a class without images still gets an id, as in ImageFolder
    out = tmp_path / "shards"
    summary = pack_images(src, out, per_shard=10, labels=True)
    assert json.loads((out / "classes.json").read_text()) == {"cats": 0, "dogs": 1, "empty": 2}
    assert summary.classes == 3 and summary.classes_file == str(out / "classes.json")
    assert (summary.packed, summary.skipped) == (3, 1)
    assert summary.skipped_examples[0]["path"] == "loose.jpg"
    assert "not in a class sub-folder" in summary.skipped_examples[0]["reason"]
    # what encode and training read: the label of each decoded sample
    prepare = center_prepare(Preprocess(16))
    decoded = [d for d in decode_shard(str(out / "shard-000000.tar"), prepare)]
    labels = {d.key: d.label for d in decoded if isinstance(d, Decoded)}
    assert labels == {"cats/c1": 0, "cats/kittens/k1": 0, "dogs/d1": 1}
    metas = [json.loads(m["json"]) for m in _members(out).values()]
    assert [m["class"] for m in metas] == ["cats", "cats", "dogs"]


def test_no_labels_means_no_cls(tmp_path):
    src = tmp_path / "images"
    _write(src, {"cats/c1.jpg": jpeg(1)})
    pack_images(src, tmp_path / "shards")
    prepare = center_prepare(Preprocess(16))
    (sample, _end) = list(decode_shard(str(tmp_path / "shards" / "shard-000000.tar"), prepare))
    assert sample.label == NO_LABEL
    assert not (tmp_path / "shards" / "classes.json").exists()


def test_bad_files_skipped_with_reasons_and_stats_add_up(tmp_path):
    src = tmp_path / "images"
    good = jpeg(1)
    _write(
        src,
        {
            "01.jpg": good,
            "02-text.jpg": b"this is not an image",
            "03-cut.jpg": good[: len(good) // 2],
            "04-empty.png": b"",
            "05-bomb.png": bomb_png(),
            "06.png": png(2),
            "notes.txt": b"shot on a sunny day",
            "sub/07.jpg": jpeg(3),
            ".DS_Store": b"\x00\x01",
            ".git/objects/ab": b"blob",
        },
    )
    (src / "link-to-folder").symlink_to(src / "sub", target_is_directory=True)
    (src / "broken-link.jpg").symlink_to(src / "nowhere.jpg")
    out = tmp_path / "shards"
    summary = pack_images(src, out, per_shard=4)
    expected_reasons = {
        "02-text.jpg": "not an image",
        "03-cut.jpg": "truncated or corrupt",
        "04-empty.png": "empty file",
        "05-bomb.png": "decompression bomb",
        "notes.txt": "not an image",
        "link-to-folder": "symbolic link to a folder",
        "broken-link.jpg": "broken symbolic link",
    }
    stats = _stats(out)
    skipped = {s["path"]: s["reason"] for st in stats for s in st["skipped_files"]}
    assert set(skipped) == set(expected_reasons)
    for path, fragment in expected_reasons.items():
        assert fragment in skipped[path], (path, skipped[path])
    members = _members(out)
    packed = {json.loads(m["json"])["path"] for m in members.values()}
    assert packed == {"01.jpg", "06.png", "sub/07.jpg"}
    # every stats file is consistent, and together they give the summary
    for st in stats:
        tar = out / st["shard"]
        assert st["files"] == st["count"] + st["skipped"] <= 4
        assert st["bytes"] == tar.stat().st_size
        assert st["count"] == sum(1 for m in members if _shard_of(out, m) == st["shard"])
        assert sum(st["reasons"].values()) == st["skipped"]
    assert len(stats) == summary.shards == 3  # 10 entries: 4 + 4 + 2
    assert sum(st["files"] for st in stats) == summary.files == 10
    assert sum(st["count"] for st in stats) == summary.packed == 3
    assert sum(st["skipped"] for st in stats) == summary.skipped == 7
    assert sum(st["bytes"] for st in stats) == summary.bytes
    assert summary.reasons["not an image"] == 2
    assert sum(summary.reasons.values()) == 7
    assert summary.hidden_ignored == 2 and summary.hidden_examples == [".DS_Store", ".git"]
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["complete"] and manifest["summary"]["packed"] == 3


def _shard_of(out: Path, key: str) -> str:
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            if any(n.startswith(key + ".") for n in t.getnames()):
                return tar.name
    raise AssertionError(key)


def _folder(tmp_path: Path, n: int = 5) -> Path:
    src = tmp_path / "images"
    _write(src, {f"{i:02d}.jpg": jpeg(i) for i in range(n)} | {"bad.jpg": b"nope"})
    return src


def test_rerun_resumes_and_rewrites_only_unfinished_shards(tmp_path):
    src, out = _folder(tmp_path), tmp_path / "shards"
    first = pack_images(src, out, per_shard=2)
    snapshot = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    again = pack_images(src, out, per_shard=2)
    assert (again.shards_already_done, again.shards_written) == (3, 0)
    assert (again.packed, again.skipped, again.bytes) == (first.packed, first.skipped, first.bytes)
    # an interrupted run: one stats file missing, one tar cut short, a temp file left behind
    (out / "shard-000001_stats.json").unlink()
    tar2 = out / "shard-000002.tar"
    tar2.write_bytes(tar2.read_bytes()[:700])
    (out / "shard-000000.tar.partial").write_bytes(b"half")  # as older gtok named it
    leftover = out / ".gtok-0123456789abcdef.tmp"
    leftover.write_bytes(b"half")
    before = (out / "shard-000000.tar").stat().st_mtime_ns
    resumed = pack_images(src, out, per_shard=2)
    assert (resumed.shards_already_done, resumed.shards_written) == (1, 2)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == before
    assert not (out / "shard-000000.tar.partial").exists() and not leftover.exists()
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == snapshot  # same bytes
    assert resumed.packed == first.packed == 5 and resumed.skipped == 1


def test_rerun_refuses_other_files_or_settings_unless_overwrite(tmp_path):
    src, out = _folder(tmp_path), tmp_path / "shards"
    pack_images(src, out, per_shard=2)
    with pytest.raises(GtokError, match=r"differs in per_shard.*overwrite"):
        pack_images(src, out, per_shard=3)
    (src / "new.jpg").write_bytes(jpeg(9))
    with pytest.raises(GtokError, match=r"number of files.*; pass overwrite"):
        pack_images(src, out, per_shard=2)
    summary = pack_images(src, out, per_shard=3, overwrite=True)
    assert summary.shards == 3 and summary.packed == 6
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    (out / "keep-me.txt").write_text("mine")
    with pytest.raises(GtokError, match=r"keep-me\.txt"):
        pack_images(src, out, per_shard=3, overwrite=True)
    assert (out / "keep-me.txt").exists() and (out / "shard-000000.tar").exists()


def test_bad_arguments(tmp_path):
    src = _folder(tmp_path)
    with pytest.raises(GtokError, match="not a folder"):
        pack_images(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(GtokError, match="per_shard must be at least 1"):
        pack_images(src, tmp_path / "out", per_shard=0)
    with pytest.raises(GtokError, match="contains the images"):
        pack_images(src, tmp_path)
    with pytest.raises(GtokError, match="but it has none"):
        pack_images(src, tmp_path / "out2", labels=True)
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    with pytest.raises(GtokError, match=r"holds no files \(1 hidden"):
        pack_images(empty, tmp_path / "out3")


def test_output_inside_the_input_is_not_packed(tmp_path):
    src = _folder(tmp_path, n=2)
    first = pack_images(src, src / "shards", per_shard=10)
    again = pack_images(src, src / "shards", per_shard=10)  # the shards are not inputs
    assert first.files == again.files == 3 and again.shards_already_done == 1


@pytest.mark.subprocess
def test_workers_give_the_same_shards(tmp_path, monkeypatch):
    import gtok.pack.run

    src = _folder(tmp_path, n=6)
    pack_images(src, tmp_path / "serial", per_shard=4)
    monkeypatch.setattr(gtok.pack.run, "MIN_FILES_PER_WORKER", 1)
    pools = []
    real_context = gtok.pack.run.multiprocessing.get_context

    def spy(method):
        pools.append(method)
        return real_context(method)

    monkeypatch.setattr(gtok.pack.run.multiprocessing, "get_context", spy)
    pack_images(src, tmp_path / "parallel", per_shard=4, workers=2)
    assert pools == ["spawn"]
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "serial" / name).read_bytes() == (
            tmp_path / "parallel" / name
        ).read_bytes()


def test_cli_pack(runner, tmp_path):
    src = _folder(tmp_path, n=3)
    out = tmp_path / "shards"
    args = ["pack", str(src), "-o", str(out), "--per-shard", "2", "--workers", "0"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["packed"], document["skipped"], document["shards"]) == (3, 1, 2)
    assert "1 files skipped (1 not an image" in result.stderr
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "packed 3 images, skipped 1 of 4 files, into 2 shards" in result.stdout
    assert "2 were already done" in result.stdout
    assert f"shards: {out}/shard-{{000000..000001}}.tar" in result.stdout
    result = runner.invoke(app, [*args[:-4], "--per-shard", "3"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "--per-shard; pass --overwrite" in result.stderr
    assert os.listdir(out)  # nothing was deleted


@pytest.mark.parametrize(
    ("version", "next_step"),
    [
        (FORMAT_VERSION + 1, "upgrade gtok (pip install -U gtok) to resume it"),
        (0, "resume it with the gtok that wrote it"),
        (None, "resume it with the gtok that wrote it"),
    ],
)
def test_cli_refuses_to_resume_a_pack_of_another_format_version(
    runner, tmp_path, version, next_step
):
    src, out = _folder(tmp_path, n=3), tmp_path / "shards"
    args = ["pack", str(src), "-o", str(out), "--per-shard", "2", "--workers", "0"]
    assert runner.invoke(app, args).exit_code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format_version": version}))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: the pack in {out} has format version {version!r}, written by gtok "
        f"{gtok.__version__}; this gtok ({gtok.__version__}) reads format version "
        f"{FORMAT_VERSION}: {next_step}, or pass --overwrite to pack it again."
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    result = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["shards_already_done"] == 0
    assert json.loads((out / MANIFEST).read_text())["format_version"] == FORMAT_VERSION


def test_a_folder_that_cannot_be_listed_is_skipped_with_the_reason(tmp_path, monkeypatch):
    src = tmp_path / "images"
    _write(src, {"01.jpg": jpeg(1), "locked/02.jpg": jpeg(2)})
    listing = os.scandir

    def scandir(path):  # root ignores permissions, so deny the listing here
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr("gtok.data.scan.os.scandir", scandir)
    summary = pack_images(src, tmp_path / "shards")
    assert (summary.packed, summary.skipped) == (1, 1)
    assert summary.skipped_examples[0]["path"] == "locked"
    assert summary.skipped_examples[0]["reason"] == "unreadable folder (Permission denied)"


# ---- --image-format ---------------------------------------------------


def _mixed(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    rgba = Image.fromarray(np.dstack([pixels(5), np.full((32, 40), 128, np.uint8)]), "RGBA")
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    files = {
        "a.jpg": jpeg(1),
        "b.png": png(2),
        "c.webp": _image("WEBP", 3, quality=80),  # lossy WebP
        "d.gif": _image("GIF", 4),
        "e.png": buffer.getvalue(),  # transparency: composited on white when re-encoded
    }
    return tmp_path / "images", _write(tmp_path / "images", files)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("image_format", ["png", "webp", "jpg"])
def test_image_format_gives_every_sample_one_extension(tmp_path, image_format):
    import webdataset as wds

    from gtok.data.images import decode_rgb

    src, files = _mixed(tmp_path)
    out = tmp_path / "shards"
    summary = pack_images(src, out, per_shard=10, image_format=image_format)
    same = {"png": {"b.png", "e.png"}, "webp": {"c.webp"}, "jpg": {"a.jpg"}}[image_format]
    assert summary.packed == 5 and summary.converted == 5 - len(same)
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    pairs = list(wds.WebDataset(urls, shardshuffle=False).to_tuple(image_format, "json"))
    assert len(pairs) == 5  # an img2dataset-style pipeline reads every sample
    for data, meta_bytes in pairs:
        meta = json.loads(meta_bytes)
        original = files[meta["path"]]
        if meta["path"] in same:
            assert data == original and meta["converted"] is False  # byte for byte
            continue
        assert meta["converted"] is True
        want = np.asarray(decode_rgb(original))
        with Image.open(io.BytesIO(data)) as stored:
            assert stored.format == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[image_format]
            got = np.asarray(stored.convert("RGB"))
        if image_format == "jpg":
            assert _psnr(got, want) > 30, meta["path"]  # quality 95, 4:4:4
        else:
            assert np.array_equal(got, want), meta["path"]  # lossless


def test_image_format_keep_is_the_default_and_a_setting_of_the_pack(tmp_path):
    src, _ = _mixed(tmp_path)
    out = tmp_path / "shards"
    summary = pack_images(src, out)
    assert summary.converted == 1  # the GIF, as PNG
    exts = sorted(ext for m in _members(out).values() for ext in m if ext != "json")
    assert exts == ["jpg", "png", "png", "png", "webp"]
    with pytest.raises(GtokError, match=r"differs in image_format.*overwrite"):
        pack_images(src, out, image_format="jpg")
    manifest = json.loads((out / "pack.json").read_text())
    del manifest["settings"]["image_format"]  # a pack written before the option
    (out / "pack.json").write_text(json.dumps(manifest))
    assert pack_images(src, out).shards_already_done == 1
    with pytest.raises(GtokError, match="image_format must be one of keep, jpg, png, webp"):
        pack_images(src, tmp_path / "other", image_format="tiff")


def test_cli_image_format(runner, tmp_path):
    src, _ = _mixed(tmp_path)
    args = ["pack", str(src), "-o", str(tmp_path / "shards"), "--workers", "0"]
    result = runner.invoke(app, [*args, "--image-format", "webp", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["converted"] == 4
    assert {ext for m in _members(tmp_path / "shards").values() for ext in m} == {"webp", "json"}
    bad = runner.invoke(app, [*args, "--image-format", "tiff"])
    assert bad.exit_code == 2 and "--image-format" in bad.stderr
