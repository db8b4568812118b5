"""JPEG draft decoding: large JPEGs decoded at 1/2-1/8 scale in the DCT domain
give centre crops within 40 dB PSNR of the exact path, in every EXIF orientation; the setting
is recorded in the store, and stores written before it existed resume with the exact path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from shardmaker import encode, write_tar
from test_encode import SMALL, _save_model

from gtok.data import Preprocess, center_crop, decode_rgb
from gtok.data.images import _ORIENTATION, decode_rgb_reduced, transpose_box
from gtok.data.samples import center_prepare
from gtok.data.tario import RawSample
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.store import TokenStore

WIDTH, HEIGHT = 1025, 769  # sides of the form 8k + 1: the last DCT block is a partial one


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _photo(orientation: int = 1) -> bytes:
    """A textured JPEG (waves of about 70 px, so a quarter-pixel shift of the crop shows)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rgb = np.stack(
        [
            127 + 60 * np.sin(x / 11.0) + 50 * np.cos(y / 13.0),
            127 + 90 * np.sin((x + 2 * y) / 17.0),
            127 + 90 * np.cos((x - y) / 9.0),
        ],
        axis=-1,
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _crop(data: bytes, size: int, draft: bool) -> np.ndarray:
    prepare = center_prepare(Preprocess(size, jpeg_draft=draft))
    return prepare(RawSample("x", {"jpg": data}), 0).image


@pytest.mark.parametrize("method", sorted(set(_ORIENTATION.values())))
def test_transpose_box_follows_pillows_transpositions(method):
    img = Image.new("L", (7, 5))
    img.putpixel((1, 3), 255)  # the pixel box (1, 3, 2, 4)
    turned = np.asarray(img.transpose(method))
    row, col = (int(v[0]) for v in np.nonzero(turned))
    assert transpose_box((1, 3, 2, 4), (7, 5), method) == (col, row, col + 1, row + 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_drafted_crops_match_the_exact_path_in_every_orientation(orientation):
    data = _photo(orientation)
    reduced = decode_rgb_reduced(data, min_side=2 * 64)
    assert reduced.scale == 4  # 769 >= 4 * 128, < 8 * 128
    upright = (HEIGHT, WIDTH) if orientation >= 5 else (WIDTH, HEIGHT)
    assert reduced.full_size == upright
    exact, drafted = _crop(data, 64, False), _crop(data, 64, True)
    assert not np.array_equal(exact, drafted)  # the draft was really used
    assert _psnr(exact, drafted) > 40
    # without the box, the resize samples a region up to 3/4 reduced pixel off: clearly worse
    shifted = center_crop(reduced.image, 64, full_size=reduced.full_size)[0]
    if orientation in (2, 3, 4, 7, 8):  # the partial block ends up on the left or top
        assert _psnr(exact, np.asarray(shifted)) < _psnr(exact, drafted) - 3


def test_small_jpegs_and_other_formats_are_decoded_exactly():
    small = _photo()
    assert decode_rgb_reduced(small, min_side=2 * 256).scale == 1  # 769 < 2 * 512
    assert np.array_equal(_crop(small, 256, True), _crop(small, 256, False))
    png = encode(decode_rgb(small), "PNG")
    assert decode_rgb_reduced(png, min_side=64).scale == 1
    prepare = center_prepare(Preprocess(64, jpeg_draft=True))
    got = prepare(RawSample("x", {"png": png}), 0).image
    assert np.array_equal(got, np.asarray(center_crop(decode_rgb(png), 64)[0]))


def test_the_record_says_whether_jpegs_are_drafted_and_old_records_read_as_exact():
    exact, drafted = Preprocess(64, 64), Preprocess(64, 64, jpeg_draft=True)
    assert "jpeg_draft" not in exact.to_dict()  # as stores written before the setting
    assert drafted.to_dict()["jpeg_draft"] is True and "1/8" in drafted.to_dict()["method"]
    assert Preprocess.from_dict(drafted.to_dict()) == drafted
    assert Preprocess.from_dict(exact.to_dict()) == exact


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    for i in range(2):
        write_tar(folder / f"big-{i}.tar", [(f"{i:03d}", {"jpg": _photo(1 + i)})])
    return sorted(folder.glob("*.tar"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def test_new_stores_draft_and_old_stores_resume_exact(tmp_path, shards, model):
    torch.set_num_threads(1)
    kw = {"batch_size": 2, "workers": 0}
    new = tmp_path / "new.zarr"
    encode_shards(shards, new, model, **kw)
    assert TokenStore(new).preprocessing["jpeg_draft"] is True
    old = tmp_path / "old.zarr"  # as an older gtok wrote it: no jpeg_draft in the record
    encode_shards(shards, old, model, shard_id=0, num_shards=2, jpeg_draft=False, **kw)
    with pytest.raises(GtokError, match=r"different preprocessing \(jpeg_draft"):
        encode_shards(shards, old, model, shard_id=1, num_shards=2, jpeg_draft=True, **kw)
    summary = encode_shards(shards, old, model, shard_id=1, num_shards=2, **kw)
    assert summary.shards_encoded == 1
    encode_shards(shards, old, model, **kw)  # finalizes (nothing left to encode)
    assert "jpeg_draft" not in TokenStore(old).preprocessing


def test_eval_of_shards_of_their_store_and_of_its_pngs_agree(tmp_path, shards, model, runner):
    """One preprocessing, one number: eval decodes JPEGs as encode does
    for a new store, so scoring the shards, the store and its decoded PNGs agree."""
    from gtok.cli.main import app
    from gtok.evaluate import evaluate_model, evaluate_pairs

    torch.set_num_threads(1)
    store = tmp_path / "tokens.zarr"
    encode_shards(shards, store, model, batch_size=2, workers=0, geometry_dtype="float32")
    decoded = runner.invoke(app, ["decode", str(store), "-o", str(tmp_path / "png")])
    assert decoded.exit_code == 0, decoded.stderr
    kw = {"workers": 0, "skip_metrics": ["lpips_vgg", "lpips_alex", "rfid"]}
    direct = evaluate_model(shards, model, **kw).document
    from_store = evaluate_pairs(shards, store, **kw).document
    from_pngs = evaluate_pairs(shards, tmp_path / "png", **kw).document
    assert direct["protocol"]["preprocessing"]["jpeg_draft"] is True
    for other in (from_store, from_pngs):
        assert other["n"] == direct["n"] == 2
        assert other["psnr"] == pytest.approx(direct["psnr"], abs=0.01)
    exact = evaluate_model(shards, model, jpeg_draft=False, **kw).document
    assert exact["protocol"]["preprocessing"]["jpeg_draft"] is False
    assert abs(exact["psnr"] - direct["psnr"]) > 0.01  # what exact decoding alone changes
