"""Check every Taichi kernel on one arch against its PyTorch reference, in this process.

Taichi runs one arch per process, so the Vulkan tests (tests/test_vulkan.py) run this in a
process of its own. Prints one JSON document: per case, the largest difference of the
output and of every gradient relative to the reference's largest value (float32; CPU
tensors, staged through host memory on a GPU arch), for `gtok.kernels.rasterize` (with and
without opacities) and `gtok.kernels.deform_attn` at the cifar shape and a reduced imagenet
shape (4 images instead of 64); and `narrow_clipped`, the most pixels of weight >= 1/255
that `backward_narrow`'s float32 bounds leave out of one Gaussian, over Gaussians chosen to
strain them (0, to float32 rounding, when they clip none). Exits 3 with one line on stderr
when Taichi cannot start on the arch (e.g. no Vulkan driver), 1 on any other error.

Usage: python bench/arch_check.py --arch vulkan [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from raster_gpu import gaussians  # noqa: E402

from gtok import kernels  # noqa: E402
from gtok.kernels import reference, runtime  # noqa: E402
from gtok.kernels._raster_taichi import PARAMS, KernelKey, kernels_for  # noqa: E402

# B, G, H, W, C of the rasterizer; B, H, W, Nq of deformable attention
RASTER_SHAPES = {"cifar": (64, 64, 16, 16, 3), "imagenet_reduced": (4, 256, 32, 32, 8)}
DEFORM_SHAPES = {"cifar": (64, 16, 16, 64), "imagenet_reduced": (4, 32, 32, 1024)}
QUICK_RASTER = {"quick": (2, 8, 8, 8, 3)}
QUICK_DEFORM = {"quick": (2, 6, 5, 7)}
HEADS, HEAD_DIM, POINTS = 4, 16, 4  # GaussianEmbed's deformable attention (one fixed point)
NO_ARCH = 3  # exit status when Taichi cannot start on the arch


def relative(got: list[torch.Tensor], want: list[torch.Tensor], names) -> dict[str, float]:
    """Largest |got - want| / max(largest |want|, 1e-12) of each named pair."""
    return {
        name: ((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
        for name, g, w in zip(names, got, want, strict=True)
    }


def raster_case(shape, opacities: bool) -> dict[str, float]:
    """The rasterizer's map and gradients against the reference, float32."""
    n_b, n_g, height, width, n_c = shape
    inputs = gaussians(n_b, n_g, n_c, torch.float32, "cpu")
    if not opacities:
        inputs[4] = None
    upstream = torch.randn(n_b, n_c, height, width, generator=torch.Generator().manual_seed(1))
    names = ["map", "means", "scales", "rotations", "features", "opacities"][: 5 + opacities]

    def results(raster):
        leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
        out = raster(*leaves[:4], height, width, leaves[4])
        return [out, *torch.autograd.grad(out, [t for t in leaves if t is not None], upstream)]

    return relative(results(kernels.rasterize), results(reference.rasterize), names)


def deform_case(shape) -> dict[str, float]:
    """Deformable attention's output and gradients against the reference, float32, with
    GaussianEmbed's heads, points and one fixed point."""
    n_b, height, width, n_q = shape
    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(n_b, height * width, HEADS, HEAD_DIM, generator=gen),
        torch.rand(n_b, n_q, 2, generator=gen),
        2 * torch.randn(n_b, n_q, HEADS, POINTS, 2, generator=gen),
        torch.randn(n_b, n_q, HEADS, 1 + POINTS, generator=gen),
    ]
    fixed = torch.zeros(1, 2)
    upstream = torch.randn(n_b, n_q, HEADS, HEAD_DIM, generator=gen)

    def results(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(leaves[0], height, width, leaves[1], leaves[2], leaves[3], fixed)
        return [out, *torch.autograd.grad(out, leaves, upstream)]

    names = ("output", "value", "reference", "offsets", "logits")
    return relative(results(kernels.deform_attn), results(reference.deform_attn), names)


def strained_gaussians(n: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """n single Gaussians (one per image, one all-ones feature, float32) that strain the
    bounds: scales log-uniform from 1e-3 to 1e3 map pixels, a third as thin as 1e-2 along
    one axis and 1e2 along the other, any rotation, means up to twice off the map,
    opacities from 0.01 to 2 (weights clamped at 1); and half of them pinned to the cut-off:
    the opacity puts the weight of a random pixel on the map at 1/255 (float64, within a
    relative 1e-6 above), so float32's rounding decides whether it counts, where the bounds
    are tightest."""
    gen = torch.Generator().manual_seed(seed)
    scales = 10 ** (6 * torch.rand(n, 1, 2, generator=gen, dtype=torch.float64) - 3)
    thin = torch.rand(n, generator=gen) < 0.3
    scales[thin] = torch.tensor([1e-2, 1e2], dtype=torch.float64) * (
        1 + torch.rand(int(thin.sum()), 1, 2, generator=gen, dtype=torch.float64)
    )
    rotations = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 4 * math.pi
    means = (torch.rand(n, 1, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 2
    opacities = 0.01 + 2 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    pinned = torch.rand(n, generator=gen) < 0.5
    # pixel (column, row) on the map, and the centre a few scales from it
    pixel = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])
    pixel = pixel.floor()
    cos, sin = torch.cos(rotations[:, 0]), torch.sin(rotations[:, 0])
    frame_offset = scales[:, 0] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    offset = torch.stack(  # (u, v) -> (dx, dy), inverting u = c dx - s dy, v = s dx + c dy
        [cos * frame_offset[:, 0] + sin * frame_offset[:, 1],
         -sin * frame_offset[:, 0] + cos * frame_offset[:, 1]], dim=1
    )  # fmt: skip
    centre = pixel + offset
    pinned_means = torch.stack([centre[:, 0] / width, centre[:, 1] / height], 1) * 2 - 1
    means[pinned, 0] = pinned_means[pinned]
    means, scales, rotations = (t.float().double() for t in (means, scales, rotations))
    # sigma at the pixel, from the float32 parameters, as `gtok.kernels.reference` computes it
    cos, sin = torch.cos(rotations[:, 0]), torch.sin(rotations[:, 0])
    dx = (means[:, 0, 0] + 1) * 0.5 * width - pixel[:, 0]
    dy = (means[:, 0, 1] + 1) * 0.5 * height - pixel[:, 1]
    u, v = cos * dx - sin * dy, sin * dx + cos * dy
    sigma = 0.5 * (u**2 / scales[:, 0, 0] ** 2 + v**2 / scales[:, 0, 1] ** 2)
    jitter = 1 + 2e-7 * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
    opacities[pinned, 0] = (torch.exp(sigma) / 255 * jitter)[pinned]
    tensors = [means, scales, rotations, torch.ones(n, 1, 1), opacities]
    return [t.float().contiguous() for t in tensors]


def narrow_clipped(n: int, height: int, width: int) -> float:
    """Most pixels that `backward_narrow`'s float32 bounds clip, over `strained_gaussians`
    rendered alone by `forward_gather` (which tests every pixel): under the output
    gradient 1 / map where the map is > 0 (else 0), the one feature's gradient is the
    number of pixels that the backward kept, each adding 1 (to float32 rounding), so the
    count of pixels on the map minus it is the number it clipped (0 when it clips none)."""
    inputs = strained_gaussians(n, height, width)
    params = torch.empty(n, 1, PARAMS + 1)
    out = torch.empty(n, 1, height, width)
    kernel = kernels_for(KernelKey(1, torch.float32, True))
    grads = torch.empty_like(params)
    with runtime.kernel_lock:
        kernel.forward_gather(*inputs, params, out)
        upstream = torch.where(out > 0, 1 / out, torch.zeros_like(out))
        scratch = torch.empty(n, height, width, 1)
        kernel.backward_narrow(params, upstream, scratch, grads)
    return ((out > 0).sum(dim=(1, 2, 3)) - grads[:, 0, PARAMS]).max().item()


def check(arch: str, quick: bool) -> dict:
    """Every case on `arch`, which Taichi is running on; see the module docstring."""
    raster_shapes = QUICK_RASTER if quick else RASTER_SHAPES
    deform_shapes = QUICK_DEFORM if quick else DEFORM_SHAPES
    report: dict = {"arch": arch}
    for name, shape in raster_shapes.items():
        for opacities in (False, True):
            label = f"rasterize_{name}" + ("_opacities" if opacities else "")
            report[label] = raster_case(shape, opacities)
    for name, shape in deform_shapes.items():
        report[f"deform_attn_{name}"] = deform_case(shape)
    report["narrow_clipped"] = narrow_clipped(64 if quick else 512, 37, 53)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=runtime.ARCHES, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for tests)")
    args = parser.parse_args()
    runtime.request_arch(args.arch)
    try:
        runtime.start("cuda" if args.arch == "cuda" else "cpu")
    except runtime.ArchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(NO_ARCH) from None
    print(json.dumps(check(args.arch, args.quick), indent=2))


if __name__ == "__main__":
    main()
