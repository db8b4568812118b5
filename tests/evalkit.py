"""Fixtures shared by the test modules (a plugin of conftest.py: use them by name).

A small random-initialized GaussianToken at 32x32 (AlexNet-LPIPS needs 31 px): test_encode's
SMALL config at 32 px, its codebook k-means-initialized on one batch so that tokens use many
codes (test_encode's `_save_model` does that at 16 px only); two clean shards
of 5 labeled 40x32 JPEGs plus one tar with two unusable samples; a token store of them with
float32 geometry; and metric weight folders: empty, or holding stand-in files of the
standard layouts (seeded random weights, test_metrics_nets' layouts).
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shardmaker import clean_samples, jpeg, write_clean_shards, write_tar
from test_encode import SMALL

from gtok.data import center_crop, decode_rgb, to_tensor
from gtok.encode import encode_shards

SMALL32 = SMALL | {"image_size": 32, "ch_mult": (1, 2, 2)}
PER_SHARD = 5
WEIGHT_VARS = (
    "GTOK_VGG16_WEIGHTS",
    "GTOK_LPIPS_WEIGHTS",
    "GTOK_ALEXNET_WEIGHTS",
    "GTOK_LPIPS_ALEX_WEIGHTS",
    "GTOK_INCEPTION_WEIGHTS",
)


VQ32 = {k: SMALL32[k] for k in ("image_size", "ch", "ch_mult", "map_size", "num_res_blocks")}
VQ32["codebook_size"] = SMALL32["codebook_size"]


def save_model(folder: Path, seed: int, preset: str = "tiny", **config) -> Path:
    """A tokenizer (default: SMALL32) with a k-means-initialized codebook, saved in `folder`."""
    import gtok

    tok = gtok.build_tokenizer(preset, seed=seed, **(config or SMALL32))
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    tok.train()
    with torch.no_grad():
        tok(images)  # k-means initializes the codebook
    tok.eval().save_pretrained(folder)
    return folder


def _openblas():
    """numpy's bundled OpenBLAS (already loaded by numpy), or None for another BLAS."""
    folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(folder, "libscipy_openblas*.so")):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "scipy_openblas_set_num_threads64_"):
            return lib
    return None


@pytest.fixture
def one_blas_thread():
    """One OpenBLAS thread while a test runs: OpenBLAS starts a thread per core it sees and
    oversubscribes this small shared machine (an FID's 2048 x 2048 eigh takes 4x longer)."""
    lib = _openblas()
    if lib is None:
        yield
        return
    before = lib.scipy_openblas_get_num_threads64_()
    lib.scipy_openblas_set_num_threads64_(1)
    yield
    lib.scipy_openblas_set_num_threads64_(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("other"), seed=1)


@pytest.fixture(scope="module")
def vq_model(tmp_path_factory) -> Path:
    """The VQGAN baseline at 32 px: an 8x8 map of 64 tokens, no Gaussians."""
    return save_model(tmp_path_factory.mktemp("vq"), seed=0, preset="vq-tiny", **VQ32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """shard-0000.tar, shard-0001.tar (5 clean samples each) and bad.tar: one good sample and
    two that cannot be decoded."""
    folder = tmp_path_factory.mktemp("shards")
    write_clean_shards(folder, 2, PER_SHARD)
    good = clean_samples(1, start=50)
    write_tar(
        folder / "bad.tar",
        [
            ("broken", {"jpg": b"this is not an image at all"}),
            *good,
            ("cut", {"jpg": jpeg(3)[:300]}),
        ],
    )
    return folder


def _encode(shards: Path, out: Path, model: Path) -> Path:
    encode_shards([shards], out, model, batch_size=4, workers=0, geometry_dtype="float32")
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, shards, model) -> Path:
    return _encode(shards, tmp_path_factory.mktemp("store") / "tokens.zarr", model)


@pytest.fixture(scope="module")
def vq_store(tmp_path_factory, shards, vq_model) -> Path:
    """The shards encoded with the VQ model (no Gaussians)."""
    return _encode(shards, tmp_path_factory.mktemp("vq") / "tokens.zarr", vq_model)


def crops(shards: Path, size: int = 32) -> dict[str, torch.Tensor]:
    """key -> the centre crop every usable sample becomes, float [3, S, S] in [-1, 1],
    computed from the tar contents written above (independently of the stream code)."""
    out = {}
    for shard in range(2):
        for key, files in clean_samples(PER_SHARD, start=shard * PER_SHARD):
            crop, _ = center_crop(decode_rgb(files["jpg"]), size)
            out[f"shard-{shard:04d}.tar/{key}"] = to_tensor(crop)
    for key, files in clean_samples(1, start=50):
        out[f"bad.tar/{key}"] = to_tensor(center_crop(decode_rgb(files["jpg"]), size)[0])
    return out


def read_png(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] of an RGB PNG."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """Metric weights looked up only in empty temporary folders."""
    monkeypatch.setenv("GTOK_WEIGHTS", str(tmp_path / "gtok-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in WEIGHT_VARS:
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "gtok-weights"


@pytest.fixture(scope="module")
def standin_folder(tmp_path_factory) -> Path:
    """A folder holding all five metric weight files under their standard names, with
    seeded random weights of the standard layouts."""
    from test_metrics_nets import (
        ALEX_HEAD,
        ALEXNET,
        INCEPTION,
        VGG16,
        VGG_HEAD,
        deterministic_state,
    )

    folder = tmp_path_factory.mktemp("weights")
    for layout, name, seed in (
        (VGG16, "vgg16-397923af.pth", 0),
        (VGG_HEAD, "vgg.pth", 1),
        (ALEXNET, "alexnet-owt-7be5be79.pth", 2),
        (ALEX_HEAD, "alex.pth", 3),
        (INCEPTION, "pt_inception-2015-12-05-6726825d.pth", 4),
    ):
        torch.save(deterministic_state(layout, seed), folder / name)
    return folder


@pytest.fixture
def standin_weights(standin_folder, tmp_path, monkeypatch, one_blas_thread) -> Path:
    """Metric weights found in `standin_folder` (as $GTOK_WEIGHTS); one BLAS thread for FID."""
    monkeypatch.setenv("GTOK_WEIGHTS", str(standin_folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in WEIGHT_VARS:
        monkeypatch.delenv(var, raising=False)
    return standin_folder
