"""The kernels on Taichi's vulkan arch (Mesa's software lavapipe in CI: `.ci/run` installs it),
each run in a process of its own (Taichi runs one arch per process) under a timeout, so a
Vulkan run that hangs (at exit, say) fails instead of stalling the suite. They skip, naming
the reason, only where Taichi cannot start on Vulkan (no Vulkan driver or device).

`pytest -m vulkan` runs just these."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from defaultkit import save_standin
from scriptkit import BENCH, ROOT

from gtok.demo import DEMO_PHOTOS, PER_SHARD
from gtok.kernels.selfcheck import probe
from gtok.pack import pack_images
from gtok.store import TokenStore

pytestmark = pytest.mark.vulkan

TIMEOUT_S = 600  # a cold lavapipe compiles every kernel: ~1 minute on a busy 2-core machine
# the float32 tolerances of the CPU tests (tests/test_rasterize.py, tests/test_deform_kernel.py)
RASTER_MAP_TOL, RASTER_GRAD_TOL, DEFORM_TOL = 1e-5, 1e-4, 1e-5


@pytest.fixture(scope="module")
def vulkan() -> None:
    """Skip unless Taichi starts on Vulkan here; fail if it starts but its kernels differ."""
    found = probe("vulkan", timeout_s=TIMEOUT_S)
    if found["starts"] is False:
        pytest.skip(f"Taichi cannot start on Vulkan here: {found['error']}")
    assert found["starts"] and found["kernels"] == "ok", found  # not a hang, nor a crash


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run to completion within TIMEOUT_S (a hang is a failure), exit status 0."""
    done = subprocess.run(
        command, capture_output=True, text=True, env=_env(**env), timeout=TIMEOUT_S, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def report(vulkan) -> dict:
    """bench/arch_check.py's differences from the reference, computed on Vulkan."""
    done = _run([sys.executable, str(BENCH / "arch_check.py"), "--arch", "vulkan"])
    result = json.loads(done.stdout)
    assert result["arch"] == "vulkan"
    return result


@pytest.mark.parametrize("shape", ["cifar", "imagenet_reduced"])
@pytest.mark.parametrize("opacities", [False, True])
def test_rasterize_forward_and_every_gradient_match_the_reference(report, shape, opacities):
    case = report[f"rasterize_{shape}" + ("_opacities" if opacities else "")]
    names = {"map", "means", "scales", "rotations", "features"} | (
        {"opacities"} if opacities else set()
    )
    assert set(case) == names
    assert case["map"] <= RASTER_MAP_TOL
    for name in names - {"map"}:
        assert case[name] <= RASTER_GRAD_TOL, name


@pytest.mark.parametrize("shape", ["cifar", "imagenet_reduced"])
def test_deform_attn_forward_and_every_gradient_match_the_reference(report, shape):
    case = report[f"deform_attn_{shape}"]
    assert set(case) == {"output", "value", "reference", "offsets", "logits"}
    for name, err in case.items():
        assert err <= DEFORM_TOL, name


def test_float32_bounds_clip_no_pixel_on_vulkan(report):
    assert report["narrow_clipped"] < 0.5


def _encode(shards, store, model, arch: str) -> TokenStore:
    command = [
        sys.executable,
        "-c",
        "from gtok.cli.main import main; main()",
        "encode",
        str(shards),
    ]
    options = ["-o", str(store), "--model", str(model), "--device", "cpu", "-q"]
    _run([*command, *options, "--geometry-dtype", "float32"], GTOK_KERNEL_ARCH=arch)
    return TokenStore(store)


def test_encode_on_vulkan_equals_the_cpu_arch(vulkan, tmp_path):
    """`GTOK_KERNEL_ARCH=vulkan gtok encode` of the demo shards: the same code ids as the
    cpu arch for >= 99.9% of tokens, geometry within 1e-3; the process ends by itself."""
    shards = tmp_path / "shards"
    pack_images(DEMO_PHOTOS, shards, per_shard=PER_SHARD)
    model = save_standin(tmp_path / "model")
    on_cpu = _encode(shards, tmp_path / "cpu.zarr", model, "cpu")
    on_vulkan = _encode(shards, tmp_path / "vulkan.zarr", model, "vulkan")
    assert len(on_cpu) == len(on_vulkan) == 36 and on_cpu.keys() == on_vulkan.keys()
    cpu, vk = on_cpu[0:36], on_vulkan[0:36]
    same = np.mean(cpu["indices"] == vk["indices"])
    assert same >= 0.999, same
    assert np.abs(cpu["geometry"] - vk["geometry"]).max() <= 1e-3
