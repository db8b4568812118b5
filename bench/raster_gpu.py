"""Check the rasterizer on a CUDA GPU against the reference and time it there.

Prints one JSON document: for the `cifar` and `imagenet` shapes (see bench/raster.py), the
largest differences between `gtok.kernels.rasterize` on CUDA (Taichi's cuda arch, zero-copy on
torch's CUDA tensors) and `gtok.kernels.reference.rasterize` (map and every gradient, float32
and float64); per rasterizer the median forward and forward+backward time of one call (ms
per batch of 64, CUDA events: for these small kernels mostly the host's launch overhead,
about eleven tensor arguments per Taichi launch) and beside it the kernel time (`*_kernel_ms`:
the GPU's time in kernels per call, by torch.profiler); and whether the imagenet
forward+backward call meets its goal (<= 0.5 ms).
Exits with status 1 and one line on stderr when no CUDA device is present, or when a
difference exceeds its tolerance (the JSON is printed first).

Usage: python bench/raster_gpu.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dense import rasterize_dense

from gtok import kernels
from gtok.kernels import reference

SHAPES = {"cifar": (64, 64, 16, 16, 3), "imagenet": (64, 256, 32, 32, 8)}  # B, G, H, W, C
GOAL_IMAGENET_FWD_BWD_MS = 0.5
# Relative to the largest value. In float32 a weight within rounding of the 1/255 cut-off
# can land on either side in the two implementations (a jump of 1/255 of a feature), so
# float32 gets room for a few such pixels; an error in the kernels is of order 1.
TOLERANCE = {torch.float32: 1e-2, torch.float64: 1e-10}


def gaussians(n_b, n_g, n_c, dtype, device, seed=0):
    """Realistic Gaussians (as bench/raster.py draws them), with opacities in [0.2, 1.8]."""
    gen = torch.Generator().manual_seed(seed)
    tensors = (
        torch.rand(n_b, n_g, 2, generator=gen) * 2 - 1,
        0.1 + 3.9 * torch.sigmoid(torch.randn(n_b, n_g, 2, generator=gen)),
        torch.rand(n_b, n_g, generator=gen) * math.pi,
        torch.randn(n_b, n_g, n_c, generator=gen),
        0.2 + 1.6 * torch.rand(n_b, n_g, generator=gen),
    )
    return [t.to(device=device, dtype=dtype) for t in tensors]


def run(raster, inputs, height, width, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = raster(*leaves[:4], height, width, leaves[4])
    return [out, *torch.autograd.grad(out, leaves, upstream)]


def check(name: str, dtype: torch.dtype) -> dict:
    n_b, n_g, height, width, n_c = SHAPES[name]
    inputs = gaussians(n_b, n_g, n_c, dtype, "cuda")
    upstream = torch.randn(n_b, n_c, height, width, dtype=dtype, device="cuda")
    got = run(kernels.rasterize, inputs, height, width, upstream)
    want = run(reference.rasterize, inputs, height, width, upstream)
    names = ("map", "means", "scales", "rotations", "features", "opacities")
    return {
        label: ((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
        for label, g, w in zip(names, got, want, strict=True)
    }


def cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of one fn() call on the GPU, by CUDA events, after two warm-up
    calls. For small kernels this is mostly the host's launch overhead (the GPU waits for
    the launches between the events)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_ms(fn, repeats: int, activity=ProfilerActivity.CUDA) -> float:
    """Mean milliseconds per fn() call that the device spends in kernels (the sum of every
    kernel's duration, by the profiler): the time without host launch overhead."""
    fn()
    kind = DeviceType.CUDA if activity == ProfilerActivity.CUDA else DeviceType.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(repeats):
            fn()
        if kind == DeviceType.CUDA:
            torch.cuda.synchronize()
    micros = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == kind)
    return micros / 1000 / repeats


def timings(name: str, repeats: int) -> dict:
    n_b, n_g, height, width, n_c = SHAPES[name]
    inputs = gaussians(n_b, n_g, n_c, torch.float32, "cuda")[:4]
    upstream = torch.randn(n_b, n_c, height, width, device="cuda")
    leaves = [t.clone().requires_grad_() for t in inputs]
    result = {}
    rasterizers = {
        "taichi": kernels.rasterize,
        "torch_dense_gemm": rasterize_dense,
        "torch_reference": reference.rasterize,
    }
    for label, raster in rasterizers.items():
        calls = {
            "forward": lambda r=raster: r(*inputs, height, width),
            # autograd.grad: nothing accumulates in leaves' .grad across repeats
            "forward_backward": lambda r=raster: torch.autograd.grad(
                r(*leaves, height, width), leaves, upstream
            ),
        }
        result[label] = {}
        for call, fn in calls.items():
            result[label][f"{call}_ms"] = round(cuda_ms(fn, repeats), 4)
            result[label][f"{call}_kernel_ms"] = round(kernel_ms(fn, repeats), 4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible to torch; run this on a machine with an NVIDIA GPU.",
            file=sys.stderr,
        )
        return 1
    kernels.start("cuda")
    report = {
        "device": torch.cuda.get_device_name(0),
        "max_relative_error": {
            f"{name}_{str(dtype).removeprefix('torch.')}": check(name, dtype)
            for name in SHAPES
            for dtype in (torch.float32, torch.float64)
        },
        "timings": {name: timings(name, args.repeats) for name in SHAPES},
        "goal_imagenet_forward_backward_ms": GOAL_IMAGENET_FWD_BWD_MS,
    }
    imagenet = report["timings"]["imagenet"]["taichi"]["forward_backward_ms"]
    report["goal_met"] = imagenet <= GOAL_IMAGENET_FWD_BWD_MS
    print(json.dumps(report, indent=2))
    worst = [
        (case, label, err)
        for case, errs in report["max_relative_error"].items()
        for label, err in errs.items()
        if not err <= TOLERANCE[torch.float64 if case.endswith("float64") else torch.float32]
    ]
    if worst:
        print(f"error: CUDA results differ from the reference: {worst}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
