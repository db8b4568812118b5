"""Does the training loop keep the model busy? Whole `gtok train` loop vs the bare step.

Prints one JSON document:
- bare_images_per_s: `TrainStep` alone (tokenizer and discriminator forward + backward and
  both optimizer steps: the compute of one training step) on a batch already in memory;
- loop_images_per_s: `gtok.train.train` on the same settings reading tar shards (decoding
  and random-resized crops in `--workers` spawned processes, EMA update, per-step logging
  to metrics.jsonl, progress), measured over the steps after `--warmup` from the per-step
  records the run writes (the final checkpoint and export are outside the windows;
  `loop_images_per_s_with_startup` is the whole call, model building included);
- ratio = loop / bare (target >= 0.85).
Bare and loop runs alternate `--repeats` times and medians are reported, so both see the
same machine load. Both use the same preset, batch size, seed and step indices (so the
generator loss switches on at the same step), fp32, no LPIPS.

Images: /work/shared/data/photos64 train shards (real 64x64 JPEG crops) when present, else
generated 64x64 JPEG shards.

Usage: .venv/bin/python bench/train.py [--preset tiny] [--batch-size 8] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.console import set_quiet
from gtok.model.tokenizer import build_from_config
from gtok.train import TrainConfig, train
from gtok.train.config import tokenizer_config
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


def bare(cfg: TrainConfig, warmup: int) -> float:
    """Images/s of `TrainStep` on one in-memory batch, steps `warmup`.. excluded before."""
    resolved = cfg.resolve(None, 1)
    arch = tokenizer_config(cfg)
    seed_everything(cfg.seed)
    model = build_from_config(arch).train()
    disc, lecam = PatchDiscriminator().train(), LeCam()
    step = TrainStep(model, disc, lecam, None, resolved, Dist(0, 1, torch.device("cpu")), "fp32")
    images = torch.rand(cfg.batch_size, 3, arch.image_size, arch.image_size) * 2 - 1
    started = 0.0
    for index in range(resolved.steps):
        if index == warmup:
            started = time.perf_counter()
        step.set_lr(resolved.lr)
        step(images, index)
    return (resolved.steps - warmup) * cfg.batch_size / (time.perf_counter() - started)


def loop(cfg: TrainConfig, warmup: int, run_dir: Path) -> tuple[float, float]:
    """(images/s of the loop over the steps after `warmup`, images/s of the whole call)."""
    started = time.perf_counter()
    train(cfg, run_dir)
    whole = cfg.steps * cfg.batch_size / (time.perf_counter() - started)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in records if r["kind"] == "train" and r["step"] > warmup]
    seconds = sum(cfg.batch_size / rate for rate in rates)
    return len(rates) * cfg.batch_size / seconds, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    set_quiet(True)  # stdout holds the JSON document; the runs print nothing
    with tempfile.TemporaryDirectory() as tmp:
        shards, source = _shards(Path(tmp))
        cfg = _config(args, shards)
        bare_rates, loop_rates, whole_rates = [], [], []
        for repeat in range(args.repeats):
            bare_rates.append(bare(cfg, args.warmup))
            steady, whole = loop(cfg, args.warmup, Path(tmp) / f"run-{repeat}")
            loop_rates.append(steady)
            whole_rates.append(whole)
    bare_rate, loop_rate = statistics.median(bare_rates), statistics.median(loop_rates)
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
        "ratio": round(loop_rate / bare_rate, 3),
        "loop_images_per_s_with_startup": round(statistics.median(whole_rates), 3),
        "runs": {
            "bare": [round(r, 3) for r in bare_rates],
            "loop": [round(r, 3) for r in loop_rates],
        },
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
