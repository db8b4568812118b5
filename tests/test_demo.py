"""`gtok demo` end to end on the shipped photographs with a stand-in default model (the fast
variant of `make demo` that `make test` runs): every part of the output folder exists and
agrees with the others, a rerun replaces it, a folder of other files is refused."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gtok.cli.main import app
from gtok.data import center_crop, decode_rgb
from gtok.demo import DEMO_PHOTOS, run_demo
from gtok.errors import GtokError
from gtok.store import TokenStore

pytestmark = pytest.mark.slow

PHOTOS = sorted(DEMO_PHOTOS.glob("*.jpg"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return min(100.0, 10 * np.log10(255.0**2 / mse)) if mse else 100.0


def test_demo_end_to_end(runner, tmp_path, standin_default, no_weights):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    assert f"using the default model {standin_default}" in result.stderr
    demo = json.loads(result.stdout)
    assert demo == json.loads((out / "demo.json").read_text())
    assert (demo["images"], demo["skipped"], demo["tokens_per_image"]) == (36, 0, 64)
    assert demo["model"] == str(standin_default)
    assert set(demo["unavailable"]) == {"lpips_vgg", "lpips_alex", "rfid"}
    assert set(demo["steps"]) == {"pack", "encode", "decode", "eval"}
    # the shards hold the 36 photographs, the store one row of tokens per photograph
    assert len(PHOTOS) == 36
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    store = TokenStore(out / "tokens.zarr")
    assert len(store) == 36
    assert store.model_path == str(standin_default.resolve())
    # report: the page, metrics, a grid of the 2 best, 2 median and 2 worst photographs by
    # PSNR, one CSV row per photograph
    assert demo["page_file"] == str(out / "report" / "index.html")
    assert "PSNR" in Path(demo["page_file"]).read_text()
    metrics = json.loads(Path(demo["metrics_file"]).read_text())
    assert metrics["n"] == 36 and metrics["psnr"] == demo["psnr"]
    assert metrics["grid"]["roles"] == ["best"] * 2 + ["median"] * 2 + ["worst"] * 2
    assert metrics["grid"]["columns"] == ["original", "reconstruction", "gaussians"]
    grid = Image.open(demo["grid_file"])
    assert grid.height > 6 * 256 and grid.width > 3 * 256
    with open(out / "report" / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 36
    # the decoded PNGs score as the report says, computed here from the photographs
    scores = {}
    for photo in PHOTOS:
        shard = f"shard-{PHOTOS.index(photo) // 12:06d}.tar"
        recon = out / "recon" / shard / f"{photo.stem}.png"
        assert recon.with_name(f"{photo.stem}.gaussians.png").is_file()
        original, _ = center_crop(decode_rgb(photo.read_bytes()), 64)
        pixels = np.asarray(Image.open(recon).convert("RGB"))
        scores[f"{shard}/{photo.stem}"] = _psnr(np.asarray(original), pixels)
    assert np.mean(list(scores.values())) == pytest.approx(demo["psnr"], abs=0.05)
    ranked = sorted(scores, key=lambda k: -scores[k])
    keys = metrics["grid"]["keys"]
    assert keys[:2] == ranked[:2] and keys[-2:] == ranked[-2:]
    assert metrics["grid"]["ranks"][2:4] == [18, 19]  # the median of 36 lies between them


def test_demo_rerun_replaces_and_refuses_other_folders(
    runner, tmp_path, standin_default, no_weights
):
    mine = tmp_path / "mine"
    mine.mkdir()
    for photo in PHOTOS[:3]:
        shutil.copy(photo, mine / photo.name)
    out = tmp_path / "demo"
    first = run_demo(out, photos=mine)
    (mine / PHOTOS[0].name).unlink()
    args = ["demo", "-o", str(out), "--photos", str(mine)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert first.images == 3
    assert result.stdout.startswith("2 images, 64 tokens each: PSNR ")
    assert "not computed: lpips_vgg, lpips_alex, rfid (their weight files" in result.stdout
    page = re.compile(rf"  {re.escape(str(out))}/report/index\.html +the report: open it in")
    assert page.search(result.stdout), result.stdout
    assert len(TokenStore(out / "tokens.zarr")) == 2
    assert not list((out / "recon").rglob(f"{PHOTOS[0].stem}.png"))  # the old run is gone
    (out / "notes.txt").write_text("keep")
    with pytest.raises(GtokError, match=r"notes\.txt"):
        run_demo(out, photos=mine)
    assert (out / "notes.txt").exists() and (out / "tokens.zarr").exists()


def test_demo_with_refinement_shows_the_refined_gaussians(tmp_path, standin_default, no_weights):
    from gtok.model.refine import RefineSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in PHOTOS[:2]:
        shutil.copy(photo, photos / photo.name)
    plain = run_demo(tmp_path / "plain", photos=photos)
    refined = run_demo(tmp_path / "refined", photos=photos, refine=RefineSettings(steps=3))
    assert plain.refinement is None and refined.refinement["steps"] == 3
    assert TokenStore(refined.store).refinement["steps"] == 3
    assert refined.psnr > plain.psnr  # the refined tokens decode closer to the photographs
    name = f"shard-000000.tar/{PHOTOS[0].stem}.gaussians.png"
    pictures = [np.asarray(Image.open(Path(d.recon) / name)) for d in (plain, refined)]
    assert pictures[0].shape == pictures[1].shape and not np.array_equal(*pictures)
