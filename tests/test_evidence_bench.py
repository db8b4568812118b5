"""bench/evidence.py's baselines (docs/results.md's evidence table): the JPEG payload count, the
JPEG search at a byte budget, the thumbnails, the token byte count, and one run of the
script on generated shards."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from scriptkit import BENCH, script_module

import gtok


@pytest.fixture(scope="module")
def evidence():
    with script_module(BENCH / "evidence.py") as module:
        yield module


def _photo_like(seed: int = 0) -> torch.Tensor:
    """A smooth random 64x64 picture with some noise: uint8 [3, 64, 64]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=64, mode="bicubic")[0]
    noisy = smooth + 0.05 * torch.randn(3, 64, 64, generator=g)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def test_the_payload_is_the_entropy_coded_data(evidence):
    picture = Image.fromarray(_photo_like().permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=50)
    data = buffer.getvalue()
    sos = data.index(b"\xff\xda")
    scan_header = 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    assert data[-2:] == b"\xff\xd9"  # EOI
    assert evidence.jpeg_payload(data) == len(data) - sos - scan_header - 2
    assert 0 < evidence.jpeg_payload(data) < len(data) - 300  # the tables are not counted


def test_jpeg_at_budget_fits_and_is_the_best_quality_that_fits(evidence):
    image = _photo_like()
    decoded, size, fits = evidence.jpeg_at_budget(image, 600)
    assert fits and size <= 600 and decoded.shape == image.shape
    qualities = [q for q in range(1, 96) if evidence._jpeg(evidence._pil(image), q)[1] <= 600]
    best = evidence._jpeg(evidence._pil(image), max(qualities))
    assert size == best[1]
    _, tiny, fits = evidence.jpeg_at_budget(image, 10)  # not even quality 1 fits
    assert not fits and tiny > 10
    report = evidence.jpeg_baseline(torch.stack([image, _photo_like(1)]), 10)
    assert report["unreachable"] == 2 and report["budget_bytes"] == 10


def test_thumbnails_keep_flat_images_and_lose_detail(evidence):
    flat = torch.full((1, 3, 64, 64), 77, dtype=torch.uint8)
    assert torch.equal(evidence.thumbnails(flat, 4), flat)
    image = _photo_like()[None]
    small, large = (
        evidence.scores(image, evidence.thumbnails(image, 4)),
        evidence.scores(image, evidence.thumbnails(image, 16)),
    )
    assert small["psnr"] < large["psnr"]


def test_token_bytes_counts_ids_and_8_bit_geometry(evidence):
    gaussian = gtok.build_tokenizer("tiny", seed=0)
    vq = gtok.build_tokenizer("vq-tiny", seed=0)
    assert evidence.token_bytes(gaussian) == 64 * (10 + 5 * 8) / 8
    assert evidence.token_bytes(vq) == vq.config.num_tokens * 10 / 8


@pytest.mark.subprocess
def test_the_script_prints_one_document(tmp_path, shards):
    model = tmp_path / "model"
    gtok.build_tokenizer("tiny", seed=0).eval().save_pretrained(model)
    done = subprocess.run(
        [sys.executable, str(BENCH / "evidence.py"), "--model", f"tiny={model}",
         "--set", f"gen={shards}/shard-0000.tar", "--repeats", "1", "--thumbnails", "8"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    document = json.loads(done.stdout)
    result = document["sets"]["gen"]
    assert result["images"] > 0 and set(result["models"]) == {"tiny"}
    assert set(result["baselines"]) == {"bicubic_8x8", "jpeg_at_tiny_bytes"}
    assert result["models"]["tiny"]["token_bytes"] == 400
