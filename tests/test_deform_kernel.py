"""`kernels.deform_attn` (Taichi, CPU arch) against `kernels.reference.deform_attn`
(grid_sample)."""

import pytest
import torch

from gtok import kernels
from gtok.kernels import reference, runtime
from gtok.kernels._deform_taichi import DeformKey, kernels_for

GRAD_NAMES = ("value", "reference", "offsets", "logits")


def inputs(n_b=2, n_q=5, heads=3, points=2, fixed=1, head_dim=4, height=5, width=6, **kw):
    """Random arguments: references partly off the map, offsets of a few pixels so that
    points fall between pixels, on the borders and off the map."""
    gen = torch.Generator().manual_seed(kw.get("seed", 0))
    dtype = kw.get("dtype", torch.float64)
    args = {
        "value": torch.randn(n_b, height * width, heads, head_dim, generator=gen),
        "height": height,
        "width": width,
        "reference": torch.rand(n_b, n_q, 2, generator=gen) * 1.2 - 0.1,
        "offsets": torch.randn(n_b, n_q, heads, points, 2, generator=gen) * 2,
        "logits": torch.randn(n_b, n_q, heads, fixed + points, generator=gen),
        "fixed_offsets": torch.randn(fixed, 2, generator=gen) if fixed else None,
    }
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def run(fn, args, upstream):
    """(output, gradients of <output, upstream> w.r.t. GRAD_NAMES) of `fn`."""
    leaves = {k: v.clone().requires_grad_() if k in GRAD_NAMES else v for k, v in args.items()}
    out = fn(**leaves)
    return out, torch.autograd.grad(out, [leaves[k] for k in GRAD_NAMES], upstream)


def assert_matches_reference(args, tol):
    upstream = torch.randn(
        *args["offsets"].shape[:3], args["value"].shape[3], dtype=args["value"].dtype
    )
    got, got_grads = run(kernels.deform_attn, args, upstream)
    want, want_grads = run(reference.deform_attn, args, upstream)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for name, a, b in zip(GRAD_NAMES, got_grads, want_grads, strict=True):
        scale = max(b.abs().max().item(), 1.0)
        assert (a - b).abs().max().item() <= tol * scale, name


GTOK_SHAPE = {"heads": 4, "points": 4, "head_dim": 16, "height": 16, "width": 16}  # the model's


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ({}, torch.float64),  # one fixed point, non-square map
        ({}, torch.float32),
        ({"fixed": 0, "points": 3}, torch.float64),  # plain MSDA
        ({"fixed": 2, "points": 1, "height": 1, "width": 7}, torch.float64),  # one row
        ({"n_b": 3, "n_q": 40, **GTOK_SHAPE}, torch.float64),
        ({"n_b": 3, "n_q": 40, **GTOK_SHAPE}, torch.float32),
    ],
)
def test_forward_and_gradients_match_reference(shape, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_matches_reference(inputs(dtype=dtype, **shape), tol)


def test_gradcheck_float64():
    args = inputs(n_b=2, n_q=3, heads=2, height=4, width=5)

    def fn(*tensors):
        return kernels.deform_attn(**(args | dict(zip(GRAD_NAMES, tensors, strict=True))))

    leaves = tuple(args[k].clone().requires_grad_() for k in GRAD_NAMES)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_atomic_backward_for_cuda_matches_serial():
    """The one-thread-per-query backward that CUDA uses, run on the CPU arch."""
    args = inputs(n_b=3, n_q=30, **(GTOK_SHAPE | {"height": 7, "width": 9}), seed=3)
    upstream = torch.randn(3, 30, 4, 16, dtype=torch.float64)
    _, want = run(kernels.deform_attn, args, upstream)
    value, reference_, offsets, logits = (args[k] for k in GRAD_NAMES)
    weights = logits.softmax(-1)
    grads = [torch.zeros_like(t) for t in (value, reference_, offsets, logits)]
    runtime.start("cpu")
    with runtime.kernel_lock:
        kernels_for(DeformKey(16, 4, 1, torch.float64)).backward_atomic(
            value, reference_, offsets, args["fixed_offsets"], weights, upstream, 7, 9, *grads
        )
    for name, a, b in zip(GRAD_NAMES, grads, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_points_off_the_map_and_non_finite_locations_read_zero():
    args = inputs(n_b=1, n_q=4, heads=2, height=4, width=4)
    args["reference"][0] = torch.tensor(
        [[5.0, 0.5], [-3.0, -3.0], [float("nan"), 0.5], [0.5, float("inf")]], dtype=torch.float64
    )
    args["offsets"].zero_()
    args["fixed_offsets"].zero_()
    out, grads = run(kernels.deform_attn, args, torch.ones(1, 4, 2, 4, dtype=torch.float64))
    assert torch.equal(out, torch.zeros_like(out))
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert torch.equal(grads[0], torch.zeros_like(grads[0]))


def test_points_on_the_borders_match_reference():
    """Sampling points exactly on pixel centres, cell edges and the map's border."""
    args = inputs(n_b=1, n_q=6, heads=1, points=3, fixed=0, height=3, width=4)
    xs = torch.tensor([0.0, 0.125, 0.5, 1.0, -0.125, 1.125], dtype=torch.float64)
    args["reference"] = torch.stack([xs, xs.flip(0)], -1)[None]
    args["offsets"] = torch.zeros_like(args["offsets"])
    args["offsets"][..., 1, 0] = 0.5  # half a pixel right, onto the cell edges
    args["offsets"][..., 2, 1] = -1.0  # one pixel up, onto other pixel centres
    assert_matches_reference(args, 1e-12)


def test_two_runs_are_bitwise_equal():
    args = inputs(n_b=4, n_q=64, **GTOK_SHAPE, seed=5)
    args = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    upstream = torch.randn(4, 64, 4, 16)
    first, second = (run(kernels.deform_attn, args, upstream) for _ in range(2))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))


def test_only_requested_gradients_and_no_fixed_offset_gradient():
    args = inputs()
    value = args["value"].clone().requires_grad_()
    fixed = args["fixed_offsets"].clone().requires_grad_()
    out = kernels.deform_attn(**(args | {"value": value, "fixed_offsets": fixed}))
    out.sum().backward()
    assert value.grad is not None and fixed.grad is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"height": 4}, "Shapes do not agree"),
        ({"logits": torch.zeros(2, 5, 3, 4, dtype=torch.float64)}, "Shapes do not agree"),
        ({"fixed_offsets": torch.zeros(2, 2, dtype=torch.float64)}, "Shapes do not agree"),
        ({"value": torch.zeros(2, 30, 3)}, r"value must be \[B, H\*W, M, Dh\]"),
        ({"reference": torch.zeros(2, 5, 2)}, "one float dtype"),
        ({"width": 0}, "positive int"),
    ],
)
def test_bad_arguments_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        kernels.deform_attn(**(inputs() | change))


def test_empty_batch():
    args = inputs(n_b=0)
    out, grads = run(kernels.deform_attn, args, torch.zeros(0, 5, 3, 4, dtype=torch.float64))
    assert out.shape == (0, 5, 3, 4)
    assert all(g.numel() == 0 for g in grads)
