"""A folder of image files as input (issue 25, point 2): `gtok encode ./photos` reads it with
the keys, order and skip rules of `gtok pack`, so it gives the tokens of its packed shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shardmaker import jpeg, pixels, png, write_tar
from test_encode import SMALL, _save_model

from gtok.cli.main import app
from gtok.store import TokenStore


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Nested photos in three formats, a broken one, an empty file, a hidden file, a link
    to a folder, and a file name that needs a safe key."""
    root = tmp_path / "photos"
    (root / "cats" / "old").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "a.jpg").write_bytes(jpeg(1))
    (root / "cats" / "Kitty 01.final.png").write_bytes(png(2))
    (root / "cats" / "old" / "c.JPG").write_bytes(jpeg(3))
    Image.fromarray(pixels(4)).save(root / "dogs" / "d.gif")
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"hidden")
    os.symlink(root / "cats", root / "cats-link")
    return root


def _run(runner, *args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _encode(runner, model: Path, source: Path, out: Path) -> dict:
    common = ["-m", str(model), "--workers", "0", "--batch-size", "4"]
    return _run(runner, "encode", str(source), "-o", str(out), *common)


def test_an_image_folder_encodes_to_the_tokens_of_its_packed_shards(
    tmp_path, model, photos, runner
):
    packed = _run(runner, "pack", str(photos), "-o", str(tmp_path / "shards"), "--per-shard", "3")
    _encode(runner, model, tmp_path / "shards", tmp_path / "packed.zarr")
    summary = _encode(runner, model, photos, tmp_path / "folder.zarr")
    assert (summary["shards_encoded"], summary["samples_read"]) == (1, packed["files"])
    fields = ("indices", "geometry", "keys")
    want = TokenStore(tmp_path / "packed.zarr", fields=fields)
    got = TokenStore(tmp_path / "folder.zarr", fields=fields)
    want_rows, got_rows = want[0 : len(want)], got[0 : len(got)]
    assert np.array_equal(got_rows["indices"], want_rows["indices"])
    assert np.array_equal(got_rows["geometry"], want_rows["geometry"])
    keys = [k.split("/", 1)[1] for k in want_rows["keys"]]
    assert got_rows["keys"] == [f"photos/{k}" for k in keys]
    assert "photos/cats/Kitty_01_final" in got_rows["keys"]
    pack_reasons = {e["key"]: e["reason"] for e in packed["skipped_examples"]}
    folder_reasons = {key: reason for _, key, reason in got.skipped()}
    assert folder_reasons == pack_reasons and len(folder_reasons) == 3  # broken, empty, link
    verify = runner.invoke(app, ["verify", str(tmp_path / "folder.zarr"), "--against", str(photos)])
    assert verify.exit_code == 0 and ": ok; 1 shards" in verify.stdout, verify.output


def test_a_changed_folder_is_another_input(tmp_path, model, photos, runner):
    out = tmp_path / "t.zarr"
    _encode(runner, model, photos, out)
    (photos / "dogs" / "new.jpg").write_bytes(jpeg(9))
    again = runner.invoke(app, ["encode", str(photos), "-o", str(out), "-m", str(model)])
    assert again.exit_code == 1 and "is not the file" in again.stderr
    verify = runner.invoke(app, ["verify", str(out), "--against", str(photos), "--json"])
    assert verify.exit_code == 1
    assert any(
        "photos/dogs/new: 1 in the source, 0 in the store" in p
        for p in json.loads(verify.stdout)["problems"]
    )


def test_train_reads_an_image_folder(tmp_path, photos, runner):
    run_dir = tmp_path / "run"
    args = [str(photos), "--preset", "tiny", "--out", str(run_dir), "--epochs", "1"]
    args += ["--batch-size", "2", "--image-size", "32", "--workers", "0", "--val-images", "2"]
    args += ["--model", "num_gaussians=16", "--model", "codebook_size=64"]
    document = _run(runner, "train", *args, "--val-shards", str(photos))
    assert document["step"] == 4  # 7 entries (3 of them skipped) / 2 per step, rounded up


def test_images_beside_shards_or_no_images_are_one_sentence(tmp_path, photos, runner):
    write_tar(photos / "x.tar", [("k", {"jpg": jpeg(0)})])
    both = runner.invoke(app, ["encode", str(photos), "-o", str(tmp_path / "t.zarr")])
    assert both.exit_code == 1 and not (tmp_path / "t.zarr").exists()
    assert "holds both .tar shards (1, e.g. x.tar) and image files (1, e.g. a.jpg)" in both.stderr
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    none = runner.invoke(app, ["encode", str(empty), "-o", str(tmp_path / "t.zarr")])
    assert none.exit_code == 1
    assert (
        "The folder" in none.stderr
        and "holds no .tar shards, .parquet files or images" in none.stderr
    )
