"""`make gpu-check` (bench/gpu_check.py) is ready for its first GPU: without CUDA it exits 1
with one error line; every part runs on the CPU at tiny sizes (`--quick`) and reports what
the GPU run will report, including the device each part used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from scriptkit import BENCH, script_module

from gtok.kernels.selfcheck import probe

SCRIPT = BENCH / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    with script_module(SCRIPT) as module:
        yield module


@pytest.mark.subprocess
def test_without_a_cuda_gpu_it_exits_1_with_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU"), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.subprocess
def test_the_parts_run_on_the_cpu_and_record_their_device(gpu_check, tmp_path):
    check = gpu_check.Check(torch.device("cpu"), quick=True, scratch=tmp_path)
    kernels = gpu_check.run_part(check, "kernels")
    assert kernels["ok"] and kernels["failures"] == [], kernels
    errors = kernels["rasterize_max_relative_error"]
    assert set(errors) == {"quick_float32", "quick_float64"}
    assert max(errors["quick_float64"].values()) < 1e-10
    assert set(kernels["rasterize_times"]["quick"]) >= {"kernel_forward_backward_ms"}
    if "deform_attn_max_relative_error" in kernels:
        assert max(kernels["deform_attn_max_relative_error"]["quick_float64"].values()) < 1e-10

    train = gpu_check.run_part(check, "train_bf16")
    assert train["device"] == "cpu" and train["finite"] and train["steps"] == 4, train

    torchrun = gpu_check.run_part(check, "torchrun_train")
    assert torchrun["ok"] and torchrun["device"] == "cpu" and torchrun["steps"] == 2, torchrun

    coded = gpu_check.run_part(check, "encode_decode_eval")
    assert coded["ok"] and coded["device"] == "cpu", coded
    assert coded["encode_bf16"]["images"] == coded["encode_fp32"]["images"] == 36
    assert coded["eval"]["psnr"] > 10

    speed = gpu_check.run_part(check, "imagenet_encode")
    assert speed["bf16_images_per_s"] > 0 and speed["fp32_images_per_s"] > 0
    assert speed["meets_target"] is False and speed["device"] == "cpu"


def test_a_failing_part_is_recorded_and_the_others_still_run(gpu_check, tmp_path, monkeypatch):
    def broken(check):
        raise RuntimeError("kernel exploded")

    parts = {**gpu_check.PARTS, "kernels": (broken, 1)}
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    out = tmp_path / "check.json"
    argv = ["--device", "cpu", "--quick", "--out", str(out)]
    status = gpu_check.main([*argv, "--parts", "kernels", "imagenet_encode"])
    report = json.loads(out.read_text())
    assert status == 1 and report["ok"] is False
    assert report["parts"]["kernels"]["error"] == "RuntimeError: kernel exploded"
    assert report["parts"]["imagenet_encode"]["ok"] is True
    status = gpu_check.main([*argv, "--parts", "imagenet_encode", "--budget-s", "1"])
    skipped = json.loads(out.read_text())["parts"]["imagenet_encode"]
    assert status == 1 and "over budget" in skipped["skipped"]


def test_without_a_vulkan_loader_the_vulkan_part_says_so_and_passes(
    gpu_check, tmp_path, monkeypatch
):
    monkeypatch.setattr(gpu_check.ctypes.util, "find_library", lambda name: None)
    check = gpu_check.Check(torch.device("cpu"), quick=True, scratch=tmp_path)
    part = gpu_check.run_part(check, "vulkan_kernels")
    assert part["ok"] and part["ran"] is False and "libvulkan" in part["reason"], part


@pytest.mark.vulkan
def test_the_vulkan_part_checks_the_kernels_on_vulkan(gpu_check, tmp_path):
    """Where Taichi starts on Vulkan (Mesa's lavapipe in CI), the part runs
    bench/arch_check.py there and holds it to the tolerances; elsewhere it records why not."""
    found = probe("vulkan", timeout_s=gpu_check.VULKAN_TIMEOUT_S)
    if found["starts"] is False:
        pytest.skip(f"Taichi cannot start on Vulkan here: {found['error']}")
    check = gpu_check.Check(torch.device("cpu"), quick=True, scratch=tmp_path)
    part = gpu_check.run_part(check, "vulkan_kernels")
    assert part["ok"] and part["ran"] and part["failures"] == [], part
    assert set(part["max_relative_error"]) == {
        "rasterize_quick",
        "rasterize_quick_opacities",
        "deform_attn_quick",
    }
    assert part["narrow_clipped"] < 0.5
