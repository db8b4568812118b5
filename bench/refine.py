"""What encode-time geometry refinement gains, and what it costs.

Prints one JSON document: for each `--steps` N, the mean per-image PSNR (dB) of the decoded
tokens against the originals (uint8 pixels, as `gtok eval` scores them: round(clamp((x + 1)
/ 2) * 255), 10 log10(255^2 / MSE)), its gain over N = 0, `tok.encode(x, refine_steps=N)`
images per second (wall clock and CPU seconds per image of this process: on a shared
machine wall clock swings, CPU time much less) and the geometry statistics that show
whether the Gaussians adapt (rotation spread, anisotropy, centre movement).

Images: the first `--images` usable samples of the shards (every `--stride`-th sample: the
corpus val shard holds 200 crops of each photograph in a row), preprocessed as `gtok encode`
does (shorter side to the model's size, centre crop), in batches of `--batch-size`.

Usage: .venv/bin/python bench/refine.py /work/corpus/val-000000.tar --images 256 [--stride 5]
    [--steps 0 10 25 50 100] [--lr 0.1] [--loss mse|l1] [--model DIR] > out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import to_model_input
from gtok.metrics import psnr, to_uint8
from gtok.metrics.geometry import geometry_stats, training_summary
from gtok.model import default_model_dir, load_tokenizer
from gtok.model.refine import DEFAULT_REFINE_LOSS, DEFAULT_REFINE_LR, REFINE_LOSSES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import read_images  # bench/_images.py


def _run(tok, batches, steps: int, lr: float, loss: str) -> dict:
    scores, geometry, wall, cpu = [], [], 0.0, 0.0
    for pixels in batches:
        x = to_model_input(pixels.permute(0, 2, 3, 1))
        began, began_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            tokens = tok.encode(x, refine_steps=steps, refine_lr=lr, refine_loss=loss)
        wall += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        with torch.inference_mode():
            decoded = to_uint8(tok.decode(tokens))
        scores.append(psnr(pixels, decoded))
        geometry.append(tokens.geometry)
    n = sum(len(s) for s in scores)
    summary = training_summary(geometry_stats(torch.cat(geometry)), tok.config.map_size)
    return {
        "steps": steps,
        "lr": lr,
        "loss": loss,
        "images": n,
        "psnr": float(torch.cat(scores).mean()),
        "encode_images_per_s": n / wall,
        "encode_cpu_s_per_image": cpu / n,
        **summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--stride", type=int, default=1, help="take every K-th image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 25, 50, 100])
    parser.add_argument("--lr", type=float, default=DEFAULT_REFINE_LR)
    parser.add_argument("--loss", choices=REFINE_LOSSES, default=DEFAULT_REFINE_LOSS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or default_model_dir()
    tok = load_tokenizer(model).eval()
    images = read_images(args.shards, tok.config.image_size, args.images, args.stride)
    batches = list(images.split(args.batch_size))
    runs = []
    for steps in args.steps:
        runs.append(_run(tok, batches, steps, args.lr, args.loss))
        base = runs[0]["psnr"] if runs[0]["steps"] == 0 else None
        runs[-1]["psnr_gain"] = None if base is None else runs[-1]["psnr"] - base
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    document = {
        "model": str(model),
        "shards": args.shards,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "runs": runs,
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
