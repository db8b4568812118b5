"""Throughput of the gtok metrics on this machine: prints one JSON document.

    .venv/bin/python bench/metrics.py [--batch 32] [--size 256] [--repeats 3] [--device cpu]

Images/s of PSNR and SSIM (uint8 pairs), LPIPS-VGG (forward, and forward + backward as a
training loss) and FID Inception features, at one batch size. The networks use seeded
random weights of the standard shapes (same cost as the real ones; no weight files needed).
Each figure is the median over `repeats` timed batches after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from gtok.metrics import LPIPS, FIDInceptionV3, psnr, ssim


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights (He-scaled convs, BatchNorm statistics near identity)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.ndim >= 2:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
    module.load_state_dict(state)
    return module


def rate(fn: Callable[[], object], images: int, repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return round(images / statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    a = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)
    b = (a.int() + torch.randint(-20, 21, shape, generator=gen).to(device)).clamp(0, 255)
    b = b.to(torch.uint8)
    x = a.float() / 127.5 - 1
    y = b.float() / 127.5 - 1

    lpips = randomize(LPIPS("vgg")).to(device)
    inception = randomize(FIDInceptionV3()).to(device)

    def lpips_train_step() -> None:
        xg = x.clone().requires_grad_(True)
        lpips(xg, y).mean().backward()

    n, r = args.batch, args.repeats
    with torch.no_grad():
        results = {
            "psnr": rate(lambda: psnr(a, b), n, r, device),
            "ssim": rate(lambda: ssim(a, b), n, r, device),
            "ssim_float64": rate(lambda: ssim(a, b, dtype=torch.float64), n, r, device),
            "lpips_vgg": rate(lambda: lpips(x, y), n, r, device),
            "inception_features": rate(lambda: inception(a), n, r, device),
        }
    results["lpips_vgg_forward_backward"] = rate(lpips_train_step, n, r, device)
    print(
        json.dumps(
            {
                "unit": "images/s",
                "batch": n,
                "image_size": args.size,
                "inception_input": 299,
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cpu": platform.processor() or platform.machine(),
                "repeats": r,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
