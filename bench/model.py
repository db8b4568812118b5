"""Throughput of every tokenizer preset on this machine's CPU; prints one JSON document.

For each preset: forward images/s (eval mode, no grad: the encode/decode path) and
forward+backward images/s (training mode, loss = mean |reconstruction| + commitment; no
optimizer step), the median over a few timed iterations after one warm-up, and for the
GaussianToken presets the share of one profiled forward+backward spent in the rasterizer
(`gtok.kernels.rasterize` forward + backward, from torch.profiler). torch's default thread count.
Process CPU milliseconds per image are reported beside the rates: on a machine shared with
other jobs (see the load averages) wall-clock rates drop, CPU time much less.

OpenMP threads spin while they wait by default; when other jobs share the cores, a spinning
thread steals the time its partner needs and a 2-thread run on this machine fell to a third
of its 1-thread speed. So unless OMP_WAIT_POLICY is already set, this script sets it to
PASSIVE (threads sleep while they wait) before torch starts; the JSON records the policy.

`tiny_vs_vq_tiny`: `tiny` with the Taichi deformable-attention kernel,
`tiny` with the PyTorch reference path and `vq-tiny`, each with the model settings of
`--recipe` (default: small, the recipe `gtok train` gives these presets: no GaussianEmbed
dropout, 8 GroupNorm groups; `authors`: the presets as the authors define them), timed
side by side, interleaved
(`SIDE_REPEATS` rounds, medians), forward and forward+backward at batch 32, with the
ratios tiny / vq-tiny against the 0.9 targets and GaussianEmbed's share of tiny's
forward+backward (GaussianEmbed's own forward+backward on the encoder's feature map, timed in
the same rounds, over tiny's forward+backward).

`imagenet` and `vq-imagenet` run at batch 1 without warm-up, once each (about 3 TFLOP per
image forward+backward): enough for an order of magnitude, not for a precise figure. Pass
`--skip-imagenet` to leave them out. The whole run takes about 2-3 minutes on 2 cores.

Usage: .venv/bin/python bench/model.py [--skip-imagenet] [--presets tiny vq-tiny]
    [--recipe small|authors] > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import torch
from torch.profiler import ProfilerActivity, profile

import gtok
from gtok.model.deform_attn import set_implementation
from gtok.train.recipe import RECIPES, default_recipe

# preset -> (batch, timed iterations, warm-up iterations)
PLAN = {
    "tiny": (32, 3, 1),
    "vq-tiny": (32, 3, 1),
    "cifar": (8, 2, 1),
    "vq-cifar": (8, 2, 1),
    "imagenet": (1, 1, 0),
    "vq-imagenet": (1, 1, 0),
}
SIDE_BATCH, SIDE_REPEATS, TARGET_RATIO = 32, 5, 0.9
RASTER_EVENTS = ("gtok::rasterize_forward", "gtok::rasterize_backward")  # the custom ops


def _train_step(model: torch.nn.Module, images: torch.Tensor) -> None:
    out = model(images)
    (out.reconstruction.abs().mean() + out.commit_loss).backward()


def _rates(fn, images: torch.Tensor, iters: int, warmup: int) -> dict[str, float]:
    """Images/s (median and best iteration) and process CPU milliseconds per image."""
    for _ in range(warmup):
        fn(images)
    times = []
    cpu_start = time.process_time()
    for _ in range(iters):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    batch = images.shape[0]
    return {
        "median": batch / statistics.median(times),
        "best": batch / min(times),
        "cpu_ms": 1e3 * (time.process_time() - cpu_start) / (iters * batch),
    }


def _profiled_step(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Wall seconds of one profiled forward+backward, and the share spent in the rasterizer."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        _train_step(model, images)
        total = time.perf_counter() - start
    raster_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.name in RASTER_EVENTS)
    return total, raster_us / 1e6 / total


def bench_preset(name: str, batch: int, iters: int, warmup: int) -> dict:
    """Rates of one preset; with one iteration and no warm-up (the 256px presets) the single
    forward+backward is the profiled one."""
    model = gtok.build_tokenizer(name, seed=0)
    size = model.config.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result: dict = {
        "batch": batch,
        "image_size": size,
        "tokens": model.config.num_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "timed_iterations": iters,
    }
    model.train()
    with torch.no_grad():  # the first training forward runs the codebook's k-means init
        model(images[:1])
    gaussian = model.config.kind == "gaussian"
    if iters == 1 and warmup == 0:
        cpu_start = time.process_time()
        seconds, share = _profiled_step(model, images)
        cpu_ms = 1e3 * (time.process_time() - cpu_start) / batch
        train = {"median": batch / seconds, "best": batch / seconds, "cpu_ms": cpu_ms}
    else:
        train = _rates(lambda x: _train_step(model, x), images, iters, warmup)
        share = _profiled_step(model, images)[1]
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        infer = _rates(model, images, iters, warmup)
    result["forward_img_s"] = round(infer["median"], 2)
    result["forward_img_s_best"] = round(infer["best"], 2)
    result["forward_backward_img_s"] = round(train["median"], 2)
    result["forward_backward_img_s_best"] = round(train["best"], 2)
    result["forward_cpu_ms_per_img"] = round(infer["cpu_ms"], 1)
    result["forward_backward_cpu_ms_per_img"] = round(train["cpu_ms"], 1)
    if gaussian:
        result["rasterizer_share_of_forward_backward"] = round(share, 4)
    return result


def _trained_once(name: str, images: torch.Tensor, recipe: str) -> torch.nn.Module:
    kind = gtok.build_tokenizer(name).config.kind
    overrides = RECIPES[recipe].model_overrides(kind)
    model = gtok.build_tokenizer(name, seed=0, **overrides).train()
    with torch.no_grad():  # the codebook's k-means init
        model(images[:1])
    return model


def _jobs(models: dict[str, torch.nn.Module], images: torch.Tensor) -> dict:
    """name -> callable: forward (eval, no grad) and forward+backward of every model, and
    GaussianEmbed's own forward+backward on tiny's feature map."""

    def forward(model):
        model.eval()
        with torch.no_grad():
            model(images)
        model.train()

    def train(model):
        _train_step(model, images)
        model.zero_grad(set_to_none=True)

    tiny = models["tiny"]
    with torch.no_grad():
        feature_map = tiny.encoder(images)

    def embed():
        g = tiny.gaussian_embed(feature_map.clone().requires_grad_())
        sum(t.sum() for t in g).backward()
        tiny.zero_grad(set_to_none=True)

    jobs = {f"{n}/forward": (lambda m=m: forward(m)) for n, m in models.items()}
    jobs |= {f"{n}/forward_backward": (lambda m=m: train(m)) for n, m in models.items()}
    jobs["tiny/gaussian_embed_forward_backward"] = embed
    return jobs


def side_by_side(recipe: str) -> dict:
    """tiny (kernel), tiny (reference path) and vq-tiny with `recipe`'s model settings,
    interleaved; medians in img/s."""
    images = torch.rand(SIDE_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = images * 2 - 1
    models = {n: _trained_once(n, images, recipe) for n in ("tiny", "vq-tiny")}
    models["tiny-reference"] = _trained_once("tiny", images, recipe)
    set_implementation(models["tiny-reference"], "reference")
    jobs = _jobs(models, images)
    for job in jobs.values():  # warm-up (compiles the kernels)
        job()
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(SIDE_REPEATS):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            seconds[name].append(time.perf_counter() - start)
    rates = {n: round(SIDE_BATCH / statistics.median(t), 2) for n, t in seconds.items()}
    out: dict = {"batch": SIDE_BATCH, "repeats": SIDE_REPEATS, "recipe": recipe}
    out |= {"img_s": rates, "targets": {}}
    for kind in ("forward", "forward_backward"):
        for tiny in ("tiny", "tiny-reference"):
            ratio = rates[f"{tiny}/{kind}"] / rates[f"vq-tiny/{kind}"]
            out["targets"][f"{tiny}/{kind}_ratio"] = round(ratio, 3)
        met = out["targets"][f"tiny/{kind}_ratio"] >= TARGET_RATIO
        out["targets"][f"tiny/{kind}_meets_{TARGET_RATIO}"] = met
    embed = statistics.median(seconds["tiny/gaussian_embed_forward_backward"])
    out["gaussian_embed_share_of_tiny_forward_backward"] = round(
        embed / statistics.median(seconds["tiny/forward_backward"]), 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-imagenet", action="store_true", help="leave out the 256px presets")
    parser.add_argument("--presets", nargs="+", choices=list(PLAN), default=list(PLAN))
    parser.add_argument("--recipe", choices=list(RECIPES), default=default_recipe("tiny"))
    args = parser.parse_args()
    report: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "presets": {},
    }
    began = time.perf_counter()
    for name in args.presets:
        batch, iters, warmup = PLAN[name]
        if args.skip_imagenet and name.endswith("imagenet"):
            report["presets"][name] = {"skipped": "--skip-imagenet"}
            continue
        print(f"bench: {name} (batch {batch})", file=sys.stderr, flush=True)
        report["presets"][name] = bench_preset(name, batch, iters, warmup)
    if {"tiny", "vq-tiny"} <= set(args.presets):
        print("bench: tiny vs vq-tiny side by side", file=sys.stderr, flush=True)
        report["tiny_vs_vq_tiny"] = side_by_side(args.recipe)
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
