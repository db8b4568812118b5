"""Choosing Taichi's arch (`GTOK_KERNEL_ARCH`, `--kernel-arch`): kernels.runtime's rules,
its one-sentence refusals, and float64 refused where the arch has none. Nothing here starts
Taichi on another arch (one per process): tests/test_vulkan.py runs Vulkan in subprocesses."""

import re
from types import SimpleNamespace

import pytest
import torch

from gtok import kernels
from gtok.kernels import runtime


@pytest.fixture
def request_arch(monkeypatch):
    """Set the requested arch for one test (undone after it)."""
    monkeypatch.delenv(runtime.ARCH_ENV, raising=False)
    monkeypatch.setattr(runtime, "_requested", None)
    return runtime.request_arch


@pytest.mark.parametrize(
    ("request_", "device", "expected"),
    [
        ("auto", "cpu", "cpu"),
        ("auto", "cuda", "cuda"),
        ("auto", "mps", "metal"),
        ("cpu", "cpu", "cpu"),
        ("vulkan", "cpu", "vulkan"),
        ("metal", "cpu", "metal"),
        ("metal", "mps", "metal"),
        ("cuda", "cuda:0", "cuda"),
        ("vulkan", "auto", "vulkan"),
    ],
)
def test_the_arch_for_each_request_and_device(request_arch, request_, device, expected):
    request_arch(request_)
    assert runtime.resolve_arch(device) == expected


@pytest.mark.parametrize(
    ("request_", "device", "message"),
    [
        ("cuda", "cpu", "cuda cannot take tensors on cpu (it takes cuda tensors)"),
        ("vulkan", "cuda", "vulkan cannot take tensors on cuda (it takes cpu tensors)"),
        ("cpu", "cuda", "cpu cannot take tensors on cuda"),
        ("vulkan", "mps", "vulkan cannot take tensors on mps"),
        ("auto", "meta", "not on meta"),
        ("vulkan", "cuda:1", "first visible CUDA device"),
    ],
)
def test_a_request_the_tensors_cannot_meet_is_one_sentence(request_arch, request_, device, message):
    request_arch(request_)
    with pytest.raises(runtime.ArchError, match=re.escape(message)) as caught:
        runtime.resolve_arch(device)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_the_environment_variable_and_its_override(request_arch, monkeypatch):
    monkeypatch.setenv(runtime.ARCH_ENV, " Vulkan ")
    assert runtime.requested_arch() == "vulkan"
    request_arch("cpu")
    assert runtime.requested_arch() == "cpu"
    request_arch(None)
    monkeypatch.setenv(runtime.ARCH_ENV, "opengl")
    with pytest.raises(runtime.ArchError, match="Unknown kernel arch 'opengl'"):
        runtime.resolve_arch("cpu")
    with pytest.raises(runtime.ArchError, match="choose auto, cpu, cuda, vulkan, metal"):
        request_arch("gpu")


@pytest.mark.parametrize(
    ("want", "missing"),
    [("vulkan", "no Vulkan driver or device was found"), ("metal", "Metal needs macOS")],
)
def test_an_arch_taichi_served_on_the_cpu_names_what_is_missing(monkeypatch, want, missing):
    """Taichi falls back to the CPU without a word: the start checks the arch it got."""
    import taichi as ti

    monkeypatch.setattr(ti, "init", lambda **kwargs: None)
    monkeypatch.setattr(ti.lang.impl, "current_cfg", lambda: SimpleNamespace(arch=ti.x64))
    with pytest.raises(runtime.ArchError) as caught:
        runtime._init_taichi(want)
    message = str(caught.value)
    assert f"asked to start on {want} but started on cpu: {missing}" in message
    assert message.endswith("here).") and message.count("\n") == 0


def test_float64_is_refused_on_an_arch_without_float64(request_arch, monkeypatch):
    """On vulkan or metal, float64 tensors are a one-sentence ArchError (before a launch)."""
    request_arch("vulkan")
    monkeypatch.setattr(runtime, "_started", "vulkan")  # as if Taichi ran on Vulkan
    f64 = {"dtype": torch.float64}
    geometry = (torch.zeros(1, 2, 2, **f64), torch.ones(1, 2, 2, **f64), torch.zeros(1, 2, **f64))
    with pytest.raises(runtime.ArchError, match="vulkan arch has no float64 math"):
        kernels.rasterize(*geometry, torch.ones(1, 2, 3, **f64), 4, 4)
    value = torch.zeros(1, 6, 1, 2, **f64)
    reference = torch.zeros(1, 1, 2, **f64)
    offsets = torch.zeros(1, 1, 1, 1, 2, **f64)
    with pytest.raises(runtime.ArchError, match="choose --kernel-arch cpu or cuda"):
        kernels.deform_attn(value, 2, 3, reference, offsets, torch.zeros(1, 1, 1, 1, **f64))
