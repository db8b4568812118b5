"""`kernels.rasterize` (Taichi, CPU arch) against `kernels.reference.rasterize` (dense PyTorch)."""

import functools
import importlib
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scriptkit import BENCH, script_module

from gtok import kernels
from gtok.kernels import reference, runtime
from gtok.kernels._raster_taichi import PARAMS, KernelKey, kernels_for

NAMES = ("means", "scales", "rotations", "features", "opacities")
# `kernels.rasterize` is the function, so the module is imported by name
RASTER_MODULE = importlib.import_module("gtok.kernels.rasterize")


def gaussians(n_b, n_g, n_c, *, seed=0, dtype=torch.float32, opacities=False, spread=1.0, big=4.0):
    """Realistic Gaussians as the model produces them: means in [-spread, spread], scales
    0.1 + (big - 0.1) * sigmoid(N(0, 1)) map pixels, rotations in [0, pi], features N(0, 1),
    opacities (when asked) in [0.2, 1.8] so that some weights are clamped at 1."""
    gen = torch.Generator().manual_seed(seed)
    out = {
        "means": (torch.rand(n_b, n_g, 2, generator=gen) * 2 - 1) * spread,
        "scales": 0.1 + (big - 0.1) * torch.sigmoid(torch.randn(n_b, n_g, 2, generator=gen)),
        "rotations": torch.rand(n_b, n_g, generator=gen) * math.pi,
        "features": torch.randn(n_b, n_g, n_c, generator=gen),
        "opacities": 0.2 + 1.6 * torch.rand(n_b, n_g, generator=gen) if opacities else None,
    }
    return {k: None if v is None else v.to(dtype) for k, v in out.items()}


def render(raster, g, height, width):
    return raster(
        g["means"], g["scales"], g["rotations"], g["features"], height, width, g["opacities"]
    )


def grads_of(raster, g, height, width, upstream):
    """(map, gradients of <map, upstream> w.r.t. every tensor input) for `raster`."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in g.items()}
    out = render(raster, leaves, height, width)
    inputs = [v for v in leaves.values() if v is not None]
    return out, torch.autograd.grad(out, inputs, upstream)


def max_rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def smooth_gaussians(n_b, n_g, n_c, height, width, *, opacities):
    """float64 anisotropic, rotated Gaussians where no pixel's weight sits within 1e-5 of
    the 1/255 cut-off or of the clamp at 1 (a step of 1e-6 in any input moves a weight by
    less than 1e-7), so finite differences see a smooth function (the first seed that
    gives such parameters)."""
    for seed in range(500):
        gen = torch.Generator().manual_seed(seed)
        g = {
            "means": torch.rand(n_b, n_g, 2, generator=gen) * 1.6 - 0.8,
            "scales": 0.6 + 2.4 * torch.rand(n_b, n_g, 2, generator=gen),
            "rotations": torch.rand(n_b, n_g, generator=gen) * math.pi,
            "features": torch.randn(n_b, n_g, n_c, generator=gen),
            "opacities": 0.3 + 1.2 * torch.rand(n_b, n_g, generator=gen) if opacities else None,
        }
        g = {k: None if v is None else v.double() for k, v in g.items()}
        w = torch.stack(
            [single_weights(g, b, k, height, width) for b in range(n_b) for k in range(n_g)]
        )
        smooth = ((w - reference.MIN_WEIGHT).abs() > 1e-5).all() and ((w - 1).abs() > 1e-5).all()
        anisotropic = ((g["scales"][..., 0] - g["scales"][..., 1]).abs() > 0.2).all()
        rotated = ((g["rotations"] % (math.pi / 2) - math.pi / 4).abs() < math.pi / 4 - 0.1).all()
        if smooth and anisotropic and rotated:
            return g
    raise AssertionError("no smooth parameters found")


def single_weights(g, b, k, height, width):
    """opacity * exp(-sigma) of Gaussian (b, k) at every pixel [H, W], float64."""
    cos, sin = torch.cos(g["rotations"][b, k]), torch.sin(g["rotations"][b, k])
    dx = (g["means"][b, k, 0] + 1) * 0.5 * width - torch.arange(width, dtype=torch.float64)
    dy = (g["means"][b, k, 1] + 1) * 0.5 * height - torch.arange(height, dtype=torch.float64)
    u = cos * dx - sin * dy[:, None]
    v = sin * dx + cos * dy[:, None]
    sx, sy = g["scales"][b, k]
    opacity = 1.0 if g["opacities"] is None else g["opacities"][b, k]
    return opacity * torch.exp(-0.5 * (u * u / sx**2 + v * v / sy**2))


# ---- forward against the reference ---------------------------------------------------


@pytest.mark.parametrize(
    ("n_b", "n_g", "height", "width", "n_c", "opacities"),
    [
        (8, 64, 16, 16, 3, False),  # cifar-like
        (4, 256, 32, 32, 8, False),  # imagenet-like
        (3, 40, 13, 21, 5, True),  # non-square, opacities with clamping
    ],
)
def test_forward_float32_matches_reference(n_b, n_g, height, width, n_c, opacities):
    g = gaussians(n_b, n_g, n_c, opacities=opacities, seed=n_g)
    got = render(kernels.rasterize, g, height, width)
    want = render(reference.rasterize, g, height, width)
    assert got.shape == (n_b, n_c, height, width) and got.dtype == torch.float32
    assert got.is_contiguous()
    assert max_rel_err(got, want) <= 1e-5


def test_forward_float64_matches_reference_closely():
    g = gaussians(3, 50, 4, dtype=torch.float64, opacities=True, seed=3, spread=1.3, big=8)
    got = render(kernels.rasterize, g, 20, 24)
    want = render(reference.rasterize, g, 20, 24)
    assert got.dtype == torch.float64
    assert max_rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("opacities", [False, True])
def test_gather_forward_for_cuda_matches_reference(opacities):
    """The one-thread-per-pixel forward that CUDA uses, run on the CPU arch."""
    g = gaussians(3, 30, 4, opacities=opacities, seed=5)
    n_b, n_g, n_c = g["features"].shape
    params = torch.empty(n_b, n_g, PARAMS + n_c)
    out = torch.empty(n_b, n_c, 11, 14)
    gather = kernels_for(KernelKey(n_c, torch.float32, opacities)).forward_gather
    runtime.start("cpu")
    with runtime.kernel_lock:
        gather(*(g[k] if g[k] is not None else g["rotations"] for k in NAMES), params, out)
    assert max_rel_err(out, render(reference.rasterize, g, 11, 14)) <= 1e-5
    packed = torch.cat([g["means"], g["scales"], g["rotations"][..., None]], -1)
    assert torch.equal(params[..., :5], packed)
    assert torch.equal(params[..., PARAMS:], g["features"])


# ---- gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("opacities", [False, True])
def test_gradcheck_float64_every_input(opacities):
    n_b, n_g, n_c, height, width = 2, 3, 2, 9, 7
    g = smooth_gaussians(n_b, n_g, n_c, height, width, opacities=opacities)
    names = [k for k in NAMES if g[k] is not None]

    def fn(*tensors):
        args = dict(zip(names, tensors, strict=True))
        return render(kernels.rasterize, args | {"opacities": args.get("opacities")}, 9, 7)

    inputs = tuple(g[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_match_reference_with_random_upstream(dtype):
    g = gaussians(4, 48, 6, dtype=dtype, opacities=True, seed=11)
    upstream = torch.randn(4, 6, 18, 15, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, grads = grads_of(kernels.rasterize, g, 18, 15, upstream)
    ref_out, ref_grads = grads_of(reference.rasterize, g, 18, 15, upstream)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert max_rel_err(out, ref_out) <= tol
    for name, got, want in zip(NAMES, grads, ref_grads, strict=True):
        assert got.shape == want.shape, name
        assert max_rel_err(got, want) <= tol, name


def test_gradients_only_for_inputs_that_require_them():
    g = gaussians(2, 10, 3, seed=4)
    means = g["means"].clone().requires_grad_()
    features = g["features"].clone().requires_grad_()
    out = kernels.rasterize(means, g["scales"], g["rotations"], features, 12, 12)
    out.square().sum().backward()
    ref_means = g["means"].clone().requires_grad_()
    ref_features = g["features"].clone().requires_grad_()
    ref = reference.rasterize(ref_means, g["scales"], g["rotations"], ref_features, 12, 12)
    ref.square().sum().backward()
    assert max_rel_err(means.grad, ref_means.grad) <= 1e-4
    assert max_rel_err(features.grad, ref_features.grad) <= 1e-4
    assert g["scales"].grad is None and g["rotations"].grad is None


def test_computed_inputs_raise_no_warning(recwarn):
    """Inputs that are outputs of other ops (as in the model) must not make Taichi touch their
    `.grad` (torch warns about reading `.grad` of non-leaf tensors)."""
    g = gaussians(2, 5, 3)
    leaves = {k: v.clone().requires_grad_() for k, v in g.items() if v is not None}
    computed = {k: v * 1.0 for k, v in leaves.items()}
    kernels.rasterize(**computed, height=8, width=8).sum().backward()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    assert all(v.grad is not None for v in leaves.values())


def test_no_input_requires_grad_gives_a_plain_tensor():
    g = gaussians(2, 5, 3)
    out = render(kernels.rasterize, g, 8, 8)
    assert not out.requires_grad and out.grad_fn is None


# ---- properties over random shapes and parameters ------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n_b=st.integers(1, 3),
    n_g=st.integers(1, 6),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    n_c=st.sampled_from([1, 3]),
    with_opacities=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-3.0, 2.0),
    spread=st.floats(0.0, 3.0),
)
def test_property_forward_and_backward_match_reference(
    n_b, n_g, height, width, n_c, with_opacities, seed, log_scale, spread
):
    """float64, so the two implementations agree to rounding everywhere (also at the
    cut-off): scales log-uniform around 10^log_scale (from sub-pixel to wider than the
    map), means up to `spread` (off the map), any rotation."""
    gen = torch.Generator().manual_seed(seed)
    g = {
        "means": (torch.rand(n_b, n_g, 2, generator=gen) * 2 - 1) * spread,
        "scales": 10 ** (log_scale + torch.rand(n_b, n_g, 2, generator=gen)),
        "rotations": (torch.rand(n_b, n_g, generator=gen) - 0.5) * 4 * math.pi,
        "features": torch.randn(n_b, n_g, n_c, generator=gen),
        "opacities": 0.05 + 2 * torch.rand(n_b, n_g, generator=gen) if with_opacities else None,
    }
    g = {k: None if v is None else v.double() for k, v in g.items()}
    upstream = torch.randn(n_b, n_c, height, width, generator=gen, dtype=torch.float64)
    out, grads = grads_of(kernels.rasterize, g, height, width, upstream)
    ref_out, ref_grads = grads_of(reference.rasterize, g, height, width, upstream)
    assert out.shape == (n_b, n_c, height, width)
    assert torch.allclose(out, ref_out, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads, ref_grads, strict=True):
        scale = want.abs().max().clamp_min(1.0)
        assert torch.isfinite(got).all()
        assert ((got - want).abs() <= 1e-8 * scale).all()


# ---- determinism and threads ---------------------------------------------------------


def test_two_runs_are_bitwise_equal():
    g = gaussians(16, 128, 8, opacities=True, seed=21)
    upstream = torch.randn(16, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    first = grads_of(kernels.rasterize, g, 32, 32, upstream)
    second = grads_of(kernels.rasterize, g, 32, 32, upstream)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)


def test_concurrent_calls_from_threads_agree():
    g = gaussians(4, 32, 3, seed=8)
    want = render(kernels.rasterize, g, 16, 16)
    results = [None] * 4

    def work(k):
        results[k] = render(kernels.rasterize, g, 16, 16)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, want) for r in results)


# ---- robustness ----------------------------------------------------------------------


def edge_cases():
    g = gaussians(2, 6, 3, opacities=True, seed=9)
    cases = {}
    zero = {**g, "scales": g["scales"].clone()}
    zero["scales"][0, :3] = torch.tensor([[0.0, 0.0], [1e-8, 2.0], [3.0, 1e-20]])
    zero["means"] = g["means"].clone()
    zero["means"][0, 0] = torch.tensor([0.0, 0.0])  # centre exactly on a pixel
    cases["degenerate scales"] = zero
    far = {**g, "means": g["means"].clone()}
    far["means"][0] = torch.tensor(
        [[50.0, 0.0], [-1e6, 3.0], [0.2, 1e30], [-3.0, -3.0], [1.2, -1.1], [-1.05, 1.05]]
    )
    cases["far off the map"] = far
    huge = {**g, "scales": g["scales"].clone()}
    huge["scales"][0] = torch.tensor(
        [[1e6, 0.5], [1e30, 1e30], [3e4, 3e4], [1e19, 0.3], [0.3, 1e12], [200.0, 0.05]]
    )
    cases["huge scales"] = huge
    tiny_opacity = {**g, "opacities": g["opacities"].clone()}
    tiny_opacity["opacities"][0] = torch.tensor([0.0, 1e-9, 1 / 255, 1e-3, 30.0, 1e6])
    cases["extreme opacities"] = tiny_opacity
    return cases


@pytest.mark.parametrize("case", list(edge_cases()))
def test_edge_cases_are_finite_and_match_reference(case):
    g = edge_cases()[case]
    upstream = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    out, grads = grads_of(kernels.rasterize, g, 10, 12, upstream)
    ref_out, _ = grads_of(reference.rasterize, g, 10, 12, upstream)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(grad).all() for grad in grads)
    assert max_rel_err(out, ref_out) <= 1e-5


def test_huge_scale_costs_no_more_than_a_map_sized_gaussian():
    """The walk is clipped to the map: a Gaussian wider than the map takes no longer."""
    import time

    g = gaussians(8, 64, 4, seed=2)
    wide = {**g, "scales": torch.full_like(g["scales"], 1e3)}
    huge = {**g, "scales": torch.full_like(g["scales"], 1e30)}
    render(kernels.rasterize, wide, 32, 32)

    def best(case):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            render(kernels.rasterize, case, 32, 32)
            times.append(time.perf_counter() - start)
        return min(times)

    assert best(huge) < 3 * best(wide) + 0.01


@pytest.mark.parametrize(("n_b", "n_g", "n_c"), [(1, 1, 1), (1, 7, 64), (5, 1, 2), (2, 3, 17)])
def test_small_and_odd_shapes(n_b, n_g, n_c):
    g = gaussians(n_b, n_g, n_c, seed=n_c, dtype=torch.float64)
    upstream = torch.randn(n_b, n_c, 6, 9, dtype=torch.float64)
    out, grads = grads_of(kernels.rasterize, g, 6, 9, upstream)
    ref_out, ref_grads = grads_of(reference.rasterize, g, 6, 9, upstream)
    assert max_rel_err(out, ref_out) <= 1e-12
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_empty_batch_and_no_gaussians():
    for n_b, n_g in ((0, 4), (3, 0)):
        g = gaussians(n_b, n_g, 2)
        means = g["means"].requires_grad_()
        out = kernels.rasterize(means, g["scales"], g["rotations"], g["features"], 5, 4)
        assert out.shape == (n_b, 2, 5, 4) and not out.any()
        out.sum().backward()
        assert means.grad.shape == means.shape and not means.grad.any()


@pytest.mark.parametrize("opacities", [True, False])
def test_non_contiguous_inputs(opacities):
    g = gaussians(3, 8, 4, opacities=opacities, seed=6)
    strided = {
        k: None if v is None else torch.stack([v, -v], dim=-1)[..., 0]  # stride 2
        for k, v in g.items()
    }
    assert not any(t.is_contiguous() for t in strided.values() if t is not None)
    want = render(reference.rasterize, g, 9, 9)
    got = render(kernels.rasterize, strided, 9, 9)
    assert max_rel_err(got, want) <= 1e-5


def test_grad_out_that_is_not_contiguous():
    g = gaussians(2, 9, 3, seed=13)
    features = g["features"].clone().requires_grad_()
    out = kernels.rasterize(g["means"], g["scales"], g["rotations"], features, 8, 8)
    out.sum().backward()  # upstream gradient is an expanded scalar (all strides 0)
    ref = g["features"].clone().requires_grad_()
    reference.rasterize(g["means"], g["scales"], g["rotations"], ref, 8, 8).sum().backward()
    assert max_rel_err(features.grad, ref.grad) <= 1e-5


# ---- argument errors -----------------------------------------------------------------


def test_shape_mismatch_names_the_shapes():
    g = gaussians(2, 5, 3)
    with pytest.raises(ValueError, match=r"means \[2, 4, 2\].*features \[2, 5, 3\]"):
        kernels.rasterize(g["means"][:, :4], g["scales"], g["rotations"], g["features"], 8, 8)
    with pytest.raises(ValueError, match=r"opacities \[2, 6\]"):
        kernels.rasterize(*list(g.values())[:4], 8, 8, torch.ones(2, 6))
    with pytest.raises(ValueError, match="features must be"):
        kernels.rasterize(g["means"], g["scales"], g["rotations"], g["features"][0], 8, 8)
    with pytest.raises(ValueError, match="height must be a positive int"):
        kernels.rasterize(*list(g.values())[:4], 0, 8)
    with pytest.raises(ValueError, match="width must be a positive int"):
        kernels.rasterize(*list(g.values())[:4], 8, 2.5)


def test_dtype_mismatch_is_an_error():
    g = gaussians(1, 2, 3)
    with pytest.raises(ValueError, match=r"means torch.float64.*features torch.float32"):
        kernels.rasterize(g["means"].double(), g["scales"], g["rotations"], g["features"], 8, 8)
    with pytest.raises(ValueError, match="must have one float dtype"):
        names = ("means", "scales", "rotations", "features")
        kernels.rasterize(*(g[name].long() for name in names), 8, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_returned_as_given(dtype):
    g = {k: v for k, v in gaussians(2, 5, 3).items() if v is not None}
    low = {k: v.to(dtype).requires_grad_() for k, v in g.items()}
    out = kernels.rasterize(*low.values(), 8, 8)
    assert out.dtype == dtype
    want = kernels.rasterize(*(v.detach().float() for v in low.values()), 8, 8)
    assert torch.equal(out, want.to(dtype))
    out.float().sum().backward()
    assert all(v.grad is not None and v.grad.dtype == dtype for v in low.values())


def test_tensors_on_different_devices_are_an_error():
    g = gaussians(1, 2, 3)
    with pytest.raises(ValueError, match="one device"):
        kernels.rasterize(g["means"], g["scales"], g["rotations"], g["features"].to("meta"), 8, 8)


def test_device_that_does_not_match_the_running_arch(monkeypatch):
    """Taichi running on CUDA in this process and CPU tensors: an ArchError, no copy."""
    monkeypatch.setattr(runtime, "_started", "cuda")
    g = gaussians(1, 2, 3)
    with pytest.raises(kernels.ArchError, match="running on cuda"):
        render(kernels.rasterize, g, 8, 8)


def test_unsupported_device_type():
    g = {k: v.to("meta") for k, v in gaussians(1, 2, 3).items() if v is not None}
    with pytest.raises(kernels.ArchError, match="cpu, cuda or mps tensors"):
        kernels.rasterize(*g.values(), 8, 8)


# ---- the float32-only backward of SPIR-V arches, run on the cpu arch -------------------


@pytest.fixture
def narrow(monkeypatch):
    """gtok.kernels.rasterize with the backward that vulkan and metal run (`backward_narrow`)."""
    monkeypatch.setattr(RASTER_MODULE, "has_float64", lambda arch: False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_narrow_backward_matches_reference(narrow, dtype):
    g = gaussians(4, 48, 6, dtype=dtype, opacities=True, seed=11)
    upstream = torch.randn(4, 6, 18, 15, generator=torch.Generator().manual_seed(2)).to(dtype)
    _, grads = grads_of(kernels.rasterize, g, 18, 15, upstream)
    _, ref_grads = grads_of(reference.rasterize, g, 18, 15, upstream)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for name, got, want in zip(NAMES, grads, ref_grads, strict=True):
        assert max_rel_err(got, want) <= tol, name


@pytest.mark.parametrize("opacities", [False, True])
def test_narrow_backward_gradcheck_float64(narrow, opacities):
    g = smooth_gaussians(2, 3, 2, 9, 7, opacities=opacities)
    names = [k for k in NAMES if g[k] is not None]

    def fn(*tensors):
        args = dict(zip(names, tensors, strict=True))
        return render(kernels.rasterize, args | {"opacities": args.get("opacities")}, 9, 7)

    inputs = tuple(g[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", list(edge_cases()))
def test_narrow_backward_edge_cases_match_the_float64_walk(case):
    """Degenerate, far, huge and extreme Gaussians: the narrow backward's gradients equal
    those of the float64 row walk (float64 inputs, so the two keep the same pixels)."""
    g = {k: v.double() for k, v in edge_cases()[case].items()}
    upstream = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(1)).double()
    _, want = grads_of(kernels.rasterize, g, 10, 12, upstream)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RASTER_MODULE, "has_float64", lambda arch: False)
        _, got = grads_of(kernels.rasterize, g, 10, 12, upstream)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert torch.isfinite(a).all(), name
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item()), name


def test_narrow_bounds_clip_no_pixel_and_the_check_sees_a_clip(monkeypatch):
    """bench/arch_check.py's count of pixels of weight >= 1/255 that the float32 bounds
    leave out, over Gaussians pinned to the cut-off: none with the stated margins, and at
    least one without them (so the check can fail)."""
    from gtok.kernels import _raster_taichi as raster_taichi

    runtime.start("cpu")
    with script_module(BENCH / "arch_check.py") as arch_check:
        assert arch_check.narrow_clipped(2048, 37, 53) < 0.5
        for name in ("_NARROW_REL_SLACK", "_NARROW_ABS_SLACK", "_NARROW_POS_SLACK"):
            monkeypatch.setattr(raster_taichi, name, 0.0)
        fresh = functools.cache(raster_taichi.kernels_for.__wrapped__)  # built anew, unpadded
        monkeypatch.setattr(arch_check, "kernels_for", fresh)
        assert arch_check.narrow_clipped(2048, 37, 53) >= 1


# ---- package behaviour ---------------------------------------------------------------


@pytest.mark.subprocess
def test_importing_kernels_starts_and_compiles_nothing():
    code = (
        "import sys\nfrom gtok import kernels\n"
        "assert 'taichi' not in sys.modules, 'taichi imported'\n"
        "assert kernels.runtime.started_arch() is None\n"
        "assert kernels._raster_taichi.kernels_for.cache_info().currsize == 0\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "clean\n"


def test_selfcheck_reports_ok():
    assert kernels.selfcheck("cpu") == "ok"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_reference_in_its_own_process():
    """Taichi runs one arch per process (CPU here), so CUDA is checked in another one."""
    script = Path(__file__).resolve().parent.parent / "bench" / "raster_gpu.py"
    out = subprocess.run(
        [sys.executable, str(script), "--repeats", "3"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


# ---- normalized splatting (opt-in) -----------------------------------------------------


def test_normalized_forward_is_the_weighted_mean_and_matches_reference():
    g = gaussians(2, 12, 3, seed=5)
    plain = render(reference.rasterize, g, 10, 13)
    weights = reference.rasterize(
        g["means"], g["scales"], g["rotations"], torch.ones(2, 12, 1), 10, 13
    )
    want = plain / (weights + kernels.NORMALIZE_EPS)
    args = (g["means"], g["scales"], g["rotations"], g["features"], 10, 13)
    ref = reference.rasterize(*args, normalize=True)
    assert max_rel_err(ref, want) <= 1e-6
    assert max_rel_err(kernels.rasterize(*args, normalize=True), ref) <= 1e-5


def test_normalized_gradcheck_float64_every_input():
    g = smooth_gaussians(2, 3, 2, 9, 7, opacities=True)
    names = [k for k in NAMES if g[k] is not None]

    def fn(means, scales, rotations, features, opacities):
        return kernels.rasterize(means, scales, rotations, features, 9, 7, opacities, True)

    inputs = tuple(g[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    upstream = torch.randn(2, 2, 9, 7, generator=torch.Generator().manual_seed(1)).double()
    got = torch.autograd.grad(fn(*inputs), inputs, upstream)
    want = torch.autograd.grad(
        reference.rasterize(*inputs[:4], 9, 7, inputs[4], normalize=True), inputs, upstream
    )
    for name, a, b in zip(names, got, want, strict=True):
        assert max_rel_err(a, b) <= 1e-10, name
