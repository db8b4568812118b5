"""Does the training loop keep the model busy? Whole `gtok train` loop vs the bare step.

Prints one JSON document (rates are medians over the runs):
- bare_images_per_s: `TrainStep` alone (tokenizer and discriminator forward + backward and
  both optimizer steps: the compute of one training step) on training batches decoded
  beforehand and held in memory;
- loop_images_per_s: `gtok.train.train` on the same settings reading tar shards (decoding
  and random-resized crops in `--workers` spawned processes, EMA update, per-step logging
  to metrics.jsonl, progress), measured over the steps after `--warmup` from the per-step
  records the run writes (the final checkpoint and export are outside the windows;
  `loop_images_per_s_with_startup` is the whole call, model building included);
- ratio = loop / bare (target >= 0.85): a bare run and a loop run are made back to back
  (in alternating order) `--repeats` times, after one unmeasured bare run that pays the
  process's one-time costs (kernel compilation, first-call allocations), and the ratio is
  the median of the pairs' ratios, so that each compares two runs under about the same
  load on a machine shared with other work; every run is listed, with the 1-minute load
  average before and after;
- ratio_from_cpu_time: the same ratio from CPU seconds per image, which other processes
  barely change: bare step / (loop's main process + data decoding, measured here in one
  process). On a machine whose cores the training keeps busy this is the throughput
  ratio; it is pessimistic where workers decode on cycles the step leaves idle.
Both use the same preset, batch size, seed and step indices (so the generator loss
switches on at the same step), fp32, no LPIPS.

Images: /work/shared/data/photos64 train shards (real 64x64 JPEG crops) when present, else
generated 64x64 JPEG shards.

Usage: .venv/bin/python bench/train.py [--preset tiny] [--batch-size 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.console import set_quiet
from gtok.data.shards import expand_shards
from gtok.model.tokenizer import build_from_config
from gtok.train import TrainConfig, train
from gtok.train.config import tokenizer_config
from gtok.train.data import StreamSpec, stream_batches, to_model_input
from gtok.train.discriminator import PatchDiscriminator
from gtok.train.distributed import Dist
from gtok.train.losses import LeCam
from gtok.train.rng import seed_everything
from gtok.train.step import TrainStep

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos64"


def _shards(folder: Path) -> tuple[list[str], str]:
    """photos64's training shards, or 4 generated shards of 256 64x64 JPEGs."""
    if PHOTOS.is_dir() and sorted(PHOTOS.glob("train-*.tar")):
        return [str(p) for p in sorted(PHOTOS.glob("train-*.tar"))], "photos64 train shards"
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for s in range(4):
        path = folder / f"train-{s}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(256):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BICUBIC)
                data = io.BytesIO()
                img.save(data, "JPEG", quality=92)
                info = tarfile.TarInfo(f"{s:02d}{i:04d}.jpg")
                info.size = data.tell()
                data.seek(0)
                tar.addfile(info, data)
        paths.append(str(path))
    return paths, "generated 64x64 JPEG shards"


def _config(args, shards: list[str]) -> TrainConfig:
    steps = args.warmup + args.steps
    return TrainConfig(
        preset=args.preset,
        shards=tuple(shards),
        steps=steps,
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu",
        precision="fp32",
        lpips_weight=0.0,
        log_every=1,
        eval_every=steps,
        sample_every=steps,
        checkpoint_every=steps,
    )


@dataclass
class Run:
    """Images/s (wall clock) and CPU seconds per image of one measured run."""

    images_per_s: float
    cpu_s_per_image: float


def bare(cfg: TrainConfig, warmup: int, batches: list[torch.Tensor]) -> Run:
    """`TrainStep` on batches already in memory, over the steps after `warmup`."""
    resolved = cfg.resolve(None, 1)
    arch = tokenizer_config(cfg)
    seed_everything(cfg.seed)
    model = build_from_config(arch).train()
    disc, lecam = PatchDiscriminator().train(), LeCam()
    step = TrainStep(model, disc, lecam, None, resolved, Dist(0, 1, torch.device("cpu")), "fp32")
    started = cpu = 0.0
    for index in range(resolved.steps):
        if index == warmup:
            started, cpu = time.perf_counter(), time.process_time()
        step.set_lr(resolved.lr)
        step(batches[index], index)
    count = (resolved.steps - warmup) * cfg.batch_size
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Run(count / wall, cpu / count)


def loop(cfg: TrainConfig, warmup: int, run_dir: Path) -> tuple[Run, float]:
    """The loop over the steps after `warmup` (its main process's CPU only), and the
    images/s of the whole call."""
    started = time.perf_counter()
    train(cfg, run_dir)
    whole = cfg.steps * cfg.batch_size / (time.perf_counter() - started)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["kind"] == "train" and r["step"] > warmup]
    count = len(steady) * cfg.batch_size
    seconds = sum(cfg.batch_size / r["img_per_s"] for r in steady)
    return Run(count / seconds, sum(r["process_cpu_s"] for r in steady) / count), whole


def decode(cfg: TrainConfig, shards: list[str], count: int) -> tuple[list[torch.Tensor], float]:
    """`count` training batches decoded in this process, as the model takes them, and the CPU
    seconds per image of doing so (what a data worker does: read, decode, random crop)."""
    resolved = cfg.resolve(None, 1)
    spec = StreamSpec(
        tuple(expand_shards(shards)),
        tokenizer_config(cfg).image_size,
        cfg.batch_size,
        cfg.seed,
        0,
        resolved.augment,
        resolved.crop_scale,
    )
    stream = stream_batches(spec, 0)
    next(stream)  # the first draw's shuffle buffer fills here, once per shard read
    cpu = time.process_time()
    batches = [to_model_input(next(stream).pixels, torch.device("cpu")) for _ in range(count)]
    return batches, (time.process_time() - cpu) / (count * cfg.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    set_quiet(True)  # stdout holds the JSON document; the runs print nothing
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        shards, source = _shards(Path(tmp))
        cfg = _config(args, shards)
        batches, decode_cpu = decode(cfg, shards, cfg.steps)
        bare(cfg, args.warmup, batches)  # not measured: the process's first run is slower
        bares, loops, whole_rates = [], [], []
        for repeat in range(args.repeats):
            if repeat % 2:  # alternate the order within pairs
                bares.append(bare(cfg, args.warmup, batches))
            steady, whole = loop(cfg, args.warmup, Path(tmp) / f"run-{repeat}")
            loops.append(steady)
            whole_rates.append(whole)
            if not repeat % 2:
                bares.append(bare(cfg, args.warmup, batches))
    bare_rates = [r.images_per_s for r in bares]
    loop_rates = [r.images_per_s for r in loops]
    pairs = [loop / bare for bare, loop in zip(bare_rates, loop_rates, strict=True)]
    bare_rate, loop_rate = statistics.median(bare_rates), statistics.median(loop_rates)
    bare_cpu = statistics.median(r.cpu_s_per_image for r in bares)
    loop_cpu = statistics.median(r.cpu_s_per_image for r in loops)
    document = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "measured_steps": args.steps,
        "warmup_steps": args.warmup,
        "images": source,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "bare_images_per_s": round(bare_rate, 3),
        "loop_images_per_s": round(loop_rate, 3),
        "ratio": round(statistics.median(pairs), 3),
        "loop_images_per_s_with_startup": round(statistics.median(whole_rates), 3),
        "cpu_s_per_image": {
            "bare": round(bare_cpu, 4),
            "loop_main_process": round(loop_cpu, 4),
            "data_worker": round(decode_cpu, 4),
        },
        "ratio_from_cpu_time": round(bare_cpu / (loop_cpu + decode_cpu), 3),
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "runs": {
            "bare": [round(r, 3) for r in bare_rates],
            "loop": [round(r, 3) for r in loop_rates],
            "ratio": [round(r, 3) for r in pairs],
        },
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
