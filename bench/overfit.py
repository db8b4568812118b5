"""Can a preset overfit 16 fixed real crops? PSNR per step of a bare reconstruction loop.

The loop (the same for every preset): Adam (betas 0.9, 0.999, no weight decay) at `--lr`,
loss = L1 + 0.25 * commitment, batch = the 16 crops every step, fp32 on the CPU, seed 0. Every
`--every` steps the model is put in eval mode (no dropout, codebook frozen) and the mean
per-image PSNR (uint8, `gtok.metrics.psnr`) of the 16 reconstructions is recorded; the
training-mode L1, code usage and r_max of that step are recorded too.

Options: --recipe authors|small (`gtok.train.recipe.RECIPES`: the quantizer's dead-code
rule, GaussianEmbed's dropout and learning-rate scale; default: the authors') and, one at a
time, --restart-used yes|no, --dropout, --embed-lr-scale, --dead-threshold; --warmup (linear
warm-up steps, default 0) and --grad-clip (max global norm, default 0: off) are the
`TrainConfig` settings every recipe shares (`gtok train` warms up for steps // 30 and clips
at 1.0). --cosine decays the rate to 0 after the warm-up as `gtok train` does (default:
constant, as in the measurement in docs/results.md).

Crops: 16 samples spread over /work/corpus/train-000000.tar (every 250th), else over the
first train shard of /work/shared/data/photos64.

Prints one JSON document: settings, then "curve": [{"step", "psnr", "l1", "usage", ...}].

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/overfit.py --preset tiny --steps 600
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.metrics import psnr
from gtok.metrics.images import to_uint8
from gtok.model.config import PRESETS
from gtok.model.tokenizer import build_tokenizer
from gtok.train.recipe import RECIPES, param_groups
from gtok.train.schedule import lr_at

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "corpus" / "train-000000.tar", ROOT / "shared" / "data" / "photos64")
NUM_CROPS = 16
SPACING = 250  # take every SPACING-th JPEG of the shard (fewer when the shard is small)


def _shard(crops: str | None = None) -> Path:
    for source in (Path(crops),) if crops else SOURCES:
        if source.is_file():
            return source
        if source.is_dir():
            shards = sorted(source.glob("train*.tar"))
            if shards:
                return shards[0]
    raise SystemExit(f"no crops found in {', '.join(map(str, SOURCES))}")


def load_crops(shard: Path, size: int = 64) -> torch.Tensor:
    """16 JPEGs spread over `shard` -> [16, 3, size, size] float32 in [-1, 1]."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
        step = max(1, min(SPACING, len(members) // NUM_CROPS))
        chosen = members[::step][:NUM_CROPS]
        if len(chosen) < NUM_CROPS:
            raise SystemExit(f"{shard} holds fewer than {NUM_CROPS} JPEGs")
        arrays = []
        for member in chosen:
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            arrays.append(np.asarray(image.resize((size, size), Image.BICUBIC)))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def _settings(args: argparse.Namespace, kind: str) -> tuple[dict, float]:
    """(model overrides, GaussianEmbed lr scale) of the recipe and the single-factor flags."""
    recipe = RECIPES[args.recipe]
    overrides = recipe.model_overrides(kind)
    if args.restart_used is not None:
        overrides["restart_used_codes"] = args.restart_used == "yes"
    if args.dropout is not None and kind == "gaussian":
        overrides["dropout"] = args.dropout
    if args.dead_threshold is not None:
        overrides["dead_threshold"] = args.dead_threshold
    if args.norm_groups is not None:
        overrides["norm_groups"] = args.norm_groups
    scale = recipe.embed_lr_scale if args.embed_lr_scale is None else args.embed_lr_scale
    return overrides, scale


@torch.no_grad()
def _measure(model, images: torch.Tensor) -> float:
    model.eval()
    recon = model(images).reconstruction
    model.train()
    return float(psnr(to_uint8(recon), to_uint8(images)).mean())


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    images = load_crops(_shard(args.crops))
    overrides, embed_lr_scale = _settings(args, PRESETS[args.preset].kind)
    model = build_tokenizer(args.preset, seed=0, **overrides)
    opt = torch.optim.Adam(param_groups(model, embed_lr_scale), lr=args.lr)
    curve, start = [], time.perf_counter()
    for step in range(args.steps):
        lr = lr_at(step, args.lr, args.warmup, args.steps) if args.cosine else args.lr
        if not args.cosine and step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        out = model(images)
        l1 = (out.reconstruction - images).abs().mean()
        loss = l1 + 0.25 * out.commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
        opt.step()
        if (step + 1) % args.every == 0:
            point = {
                "step": step + 1,
                "psnr": round(_measure(model, images), 2),
                "l1": round(float(l1.detach()), 4),
                "commit": round(float(out.commit_loss), 4),
                "usage": round(float(out.usage), 4),
                "perplexity": round(float(out.perplexity), 1),
                "grad_norm": round(float(norm), 3),
                "seconds": round(time.perf_counter() - start, 1),
            }
            if out.gaussians is not None:
                point["r_max"] = round(float(model.gaussian_embed.scale_range.r_max), 3)
            curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
    return {
        "preset": args.preset,
        "steps": args.steps,
        "lr": args.lr,
        "schedule": "warmup+cosine" if args.cosine else "warmup+constant",
        "recipe": args.recipe,
        "warmup": args.warmup,
        "grad_clip": args.grad_clip,
        "embed_lr_scale": embed_lr_scale,
        "model_overrides": overrides,
        "crops": str(_shard(args.crops)),
        "threads": torch.get_num_threads(),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--crops", help="a tar shard or a folder of train*.tar shards")
    parser.add_argument("--every", type=int, default=100, help="steps between PSNR points")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="authors")
    parser.add_argument("--cosine", action="store_true", help="cosine decay after warm-up")
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    parser.add_argument("--grad-clip", type=float, default=0.0, help="max norm (0: off)")
    parser.add_argument("--embed-lr-scale", type=float, help="GaussianEmbed lr = lr * this")
    parser.add_argument("--dropout", type=float, help="GaussianEmbed dropout")
    parser.add_argument("--dead-threshold", type=float, help="quantizer restart threshold")
    parser.add_argument("--restart-used", choices=("yes", "no"), help="restart used codes")
    parser.add_argument("--norm-groups", type=int, help="GroupNorm groups of CNN and lifter")
    print(json.dumps(run(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
