"""Benchmark the Taichi rasterizer against the best dense PyTorch one, side by side.

Prints one JSON document: for the `cifar` (B=64, G=64, 16x16, C=3) and `imagenet` (B=64,
G=256, 32x32, C=8) shapes, the median forward and forward+backward wall times (ms) of
`gtok.kernels.rasterize` and of `bench/_dense.py`, measured interleaved in one process, with
their ratios; the first-call times of fresh processes with a cold and a warm offline
kernel cache; and the GPU figures of `bench/raster_gpu.py`, or why there are none.

Gaussians are drawn as the model produces them: means uniform in [-1, 1], rotations
uniform in [0, pi], scales 0.1 + 3.9 * sigmoid(N(0, 1)) map pixels, features N(0, 1).
The dense baseline runs with the torch thread count and chunk size that are fastest on
this machine at the moment (picked by a short trial before the measurement).

With `--arch vulkan` (or `metal`) it measures instead, in this process on that Taichi arch,
per shape: the median forward and forward+backward times of `gtok.kernels.rasterize` on CPU
tensors (which Taichi stages through host memory: copied into device buffers before each
launch and back after it), and the cost of that staging: each kernel launched on the
same tensors against on Taichi ndarrays that live on the device (no copies), the
difference being the staging. On Mesa's software Vulkan (lavapipe) the "device" is the
CPU too, so only the staging figures carry over to a GPU.

Usage: python bench/raster.py [--repeats N] [--arch vulkan|metal]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dense import rasterize_dense

from gtok import kernels

SHAPES = {"cifar": (64, 64, 16, 16, 3), "imagenet": (64, 256, 32, 32, 8)}  # B, G, H, W, C
TARGET_FWD_BWD_RATIO = {"cifar": 0.5, "imagenet": 0.15}
TARGET_FIRST_CALL_S = 0.5

_FIRST_CALL = """
import time, torch
from gtok import kernels
m = torch.zeros(1, 2, 2, requires_grad=True)
args = (m, torch.ones(1, 2, 2), torch.zeros(1, 2), torch.ones(1, 2, {channels}), 8, 8)
t0 = time.perf_counter()
kernels.start("cpu")
t1, c1 = time.perf_counter(), time.process_time()
kernels.rasterize(*args).sum().backward()
t2, c2 = time.perf_counter(), time.process_time()
print(t1 - t0, t2 - t1, c2 - c1)
"""


def gaussians(n_b: int, n_g: int, n_c: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Realistic (means [B, G, 2], scales [B, G, 2], rotations [B, G], features [B, G, C])."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n_b, n_g, 2, generator=gen) * 2 - 1
    scales = 0.1 + 3.9 * torch.sigmoid(torch.randn(n_b, n_g, 2, generator=gen))
    rotations = torch.rand(n_b, n_g, generator=gen) * math.pi
    features = torch.randn(n_b, n_g, n_c, generator=gen)
    return means, scales, rotations, features


def timed(fn) -> float:
    """Wall-clock milliseconds of one call."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def forward_and_backward(raster, inputs, height, width, grad):
    leaves = [t.clone().requires_grad_() for t in inputs]

    def run():
        raster(*leaves, height, width).backward(grad)

    return run


def pick_dense_config(inputs, height, width, grad) -> tuple[int, int]:
    """The (torch threads, chunk) pair with the fastest dense forward+backward right now."""
    best, best_ms = (torch.get_num_threads(), 8), math.inf
    threads = sorted({1, torch.get_num_threads()})
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for chunk in (4, 16, 64):
            run = forward_and_backward(
                lambda *a, c=chunk: rasterize_dense(*a, chunk=c), inputs, height, width, grad
            )
            run()
            ms = min(timed(run) for _ in range(2))
            if ms < best_ms:
                best, best_ms = (n_threads, chunk), ms
    return best


def bench_shape(name: str, repeats: int) -> dict:
    n_b, n_g, height, width, n_c = SHAPES[name]
    inputs = gaussians(n_b, n_g, n_c)
    grad = torch.randn(n_b, n_c, height, width, generator=torch.Generator().manual_seed(1))
    taichi_threads = torch.get_num_threads()
    n_threads, chunk = pick_dense_config(inputs, height, width, grad)

    def dense(*args):
        return rasterize_dense(*args, chunk=chunk)

    runs = {
        ("taichi", "forward"): lambda: kernels.rasterize(*inputs, height, width),
        ("torch", "forward"): lambda: dense(*inputs, height, width),
        ("taichi", "forward_backward"): forward_and_backward(
            kernels.rasterize, inputs, height, width, grad
        ),
        ("torch", "forward_backward"): forward_and_backward(dense, inputs, height, width, grad),
    }
    times: dict = {key: [] for key in runs}
    for rep in range(repeats + 1):  # the first round warms up (compiles) and is dropped
        for key, run in runs.items():
            torch.set_num_threads(n_threads if key[0] == "torch" else taichi_threads)
            ms = timed(run)
            if rep:
                times[key].append(ms)
    torch.set_num_threads(taichi_threads)
    med = {key: statistics.median(values) for key, values in times.items()}
    diff = (kernels.rasterize(*inputs, height, width) - dense(*inputs, height, width)).abs()
    result = {
        "shape": {"B": n_b, "G": n_g, "H": height, "W": width, "C": n_c},
        "torch_config": {"threads": n_threads, "chunk": chunk},
        "max_abs_diff_taichi_vs_torch": diff.max().item(),
        "target_ratio_forward_backward": TARGET_FWD_BWD_RATIO[name],
    }
    for impl in ("taichi", "torch"):
        result[impl] = {}
        for stage in ("forward", "forward_backward"):
            values = times[(impl, stage)]
            result[impl][f"{stage}_ms"] = round(med[(impl, stage)], 3)
            result[impl][f"{stage}_ms_min_max"] = [round(min(values), 3), round(max(values), 3)]
    for stage in ("forward", "forward_backward"):
        result[f"ratio_{stage}"] = round(med[("taichi", stage)] / med[("torch", stage)], 4)
    return result


def first_call(channels: int = 3) -> dict:
    """Seconds to start Taichi (import and init) and for the first forward+backward call
    after it, in fresh processes: with an empty kernel cache (compiling), then with the
    cache that run left (loading; also its process CPU time, which a busy machine does
    not inflate)."""
    code = _FIRST_CALL.format(channels=channels)
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"GTOK_KERNEL_CACHE": cache}
        cold = _run_python(code, env, root)
        warm = _run_python(code, env, root)
    return {
        "start_taichi_s": round(warm[0], 3),
        "first_call_cold_cache_s": round(cold[1], 3),
        "first_call_warm_cache_s": round(warm[1], 3),
        "first_call_warm_cache_cpu_s": round(warm[2], 3),
        "first_call_warm_cache_total_s": round(warm[0] + warm[1], 3),
        "target_first_call_warm_cache_s": TARGET_FIRST_CALL_S,
    }


def _run_python(code: str, env: dict, cwd: Path) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return [float(v) for v in out.stdout.split()]


def gpu() -> dict:
    """The GPU figures of bench/raster_gpu.py in a separate process (Taichi runs one arch
    per process), or why there are none."""
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA GPU available to torch on this machine"}
    script = Path(__file__).resolve().parent / "raster_gpu.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"available": True, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout)


def median_ms(fn, repeats: int) -> float:
    """Median wall-clock milliseconds of fn() over `repeats` calls, after one warm-up."""
    fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def bench_staging(name: str, repeats: int) -> dict:
    """On the running (GPU) arch: `gtok.kernels.rasterize` forward and forward+backward on CPU
    tensors, and its two kernels on those tensors (staged) against on device ndarrays."""
    import taichi as ti

    from gtok.kernels import runtime
    from gtok.kernels._raster_taichi import PARAMS, KernelKey, kernels_for

    n_b, n_g, height, width, n_c = SHAPES[name]
    inputs = gaussians(n_b, n_g, n_c)
    opacities = torch.ones(n_b, n_g)
    grad = torch.randn(n_b, n_c, height, width, generator=torch.Generator().manual_seed(1))
    host = {
        "forward": [*inputs, opacities, torch.empty(n_b, n_g, PARAMS + n_c),
                    torch.empty(n_b, n_c, height, width)],
        "backward": [torch.empty(n_b, n_g, PARAMS + n_c), grad,
                     torch.empty(n_b, height, width, n_c), torch.empty(n_b, n_g, PARAMS + n_c)],
    }  # fmt: skip
    device = {
        stage: [_on_device(ti, t, is_vector(stage, i)) for i, t in enumerate(tensors)]
        for stage, tensors in host.items()
    }
    kernel = kernels_for(KernelKey(n_c, torch.float32, False))
    launch = {"forward": kernel.forward_gather, "backward": kernel.backward_narrow}
    result: dict = {"shape": {"B": n_b, "G": n_g, "H": height, "W": width, "C": n_c}}
    with runtime.kernel_lock:
        for stage, fn in launch.items():
            staged = median_ms(lambda f=fn, a=host[stage]: f(*a), repeats)
            on_device = median_ms(lambda f=fn, a=device[stage]: (f(*a), ti.sync()), repeats)
            result[f"{stage}_kernel_host_tensors_ms"] = round(staged, 3)
            result[f"{stage}_kernel_device_ndarrays_ms"] = round(on_device, 3)
            result[f"{stage}_staging_ms"] = round(staged - on_device, 3)
            result[f"{stage}_staged_mib"] = round(
                sum(t.numel() * t.element_size() for t in host[stage]) / 2**20, 3
            )
    result["rasterize_forward_ms"] = round(
        median_ms(lambda: kernels.rasterize(*inputs, height, width), repeats), 3
    )
    result["rasterize_forward_backward_ms"] = round(
        median_ms(forward_and_backward(kernels.rasterize, inputs, height, width, grad), repeats),
        3,
    )
    return result


def is_vector(stage: str, index: int) -> bool:
    """Whether argument `index` of the `stage` kernel is an ndarray of vectors (its last
    torch axis), as `gtok.kernels._raster_taichi` declares it."""
    vectors = {"forward": {0, 1, 3, 5}, "backward": {0, 2, 3}}
    return index in vectors[stage]


def _on_device(ti, tensor: torch.Tensor, vector: bool):
    """A Taichi ndarray on the running arch's device holding `tensor` (its last axis as
    vectors when `vector`)."""
    if vector:
        array = ti.Vector.ndarray(tensor.shape[-1], ti.f32, tuple(tensor.shape[:-1]))
    else:
        array = ti.ndarray(ti.f32, tuple(tensor.shape))
    array.from_numpy(tensor.numpy())
    return array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--arch", choices=("vulkan", "metal"), help="measure staging there")
    args = parser.parse_args()
    if args.arch:
        kernels.runtime.request_arch(args.arch)
        kernels.start("cpu")
        staging = {
            "benchmark": f"rasterizer on Taichi's {args.arch} arch, CPU tensors staged",
            "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                        "load_average_1min": round(os.getloadavg()[0], 2)},
            "repeats": args.repeats,
            "shapes": {name: bench_staging(name, args.repeats) for name in SHAPES},
        }  # fmt: skip
        print(json.dumps(staging, indent=2))
        return
    report = {
        "benchmark": "rasterizer",
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "repeats": args.repeats,
        "shapes": {name: bench_shape(name, args.repeats) for name in SHAPES},
        "first_call": first_call(),
        "gpu": gpu(),
    }
    report["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
