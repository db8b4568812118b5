"""GaussianToken against its VQ twin and trivial baselines on the same images: one JSON document.

For each image set (`--set NAME=SHARD[,SHARD...]`) every image is read and centre-cropped as
`gtok encode` does (`reference_batches`), then scored (mean per-image PSNR and SSIM,
`gtok.metrics`, uint8 images) as reconstructed by:

- each `--model` (encode + decode in float32; its reconstruction quantized to uint8), with
  the code usage and perplexity of all its tokens, the tokenizer's encode + decode img/s on
  one thread (the models timed alternately, `--repeats` times, the median kept) and the
  bytes of its tokens (bit-packed: log2(codebook) bits per id, plus 5 x 8 bits per Gaussian
  when the tokens carry geometry, as `gtok encode --geometry-bits 8` stores it);
- bicubic thumbnails: each image shrunk to T x T pixels and enlarged back (Pillow bicubic,
  antialiased), T in `--thumbnails`; bytes = 3 T^2 (raw RGB);
- JPEG at the bytes of each model's tokens: per image the highest quality (1-95, 4:2:0,
  optimized Huffman tables) whose entropy-coded data (the bytes after the start-of-scan
  header, so the tables a shared codec could omit are not counted) fits the budget; images
  where even quality 1 does not fit are counted in `unreachable` and scored at quality 1.

Usage (the numbers in docs/results.md):
    OMP_NUM_THREADS=1 .venv/bin/python bench/evidence.py \
        --model tiny=gtok/default_model --model vq-tiny=runs/vq-tiny/model \
        --set corpus-val=/work/corpus/val-000000.tar > evidence.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import to_model_input
from gtok.decode.pictures import uint8_images
from gtok.encode.model import load_encoding_model
from gtok.metrics import code_counts, codebook_stats, psnr, ssim
from gtok.model.tokenizer import BaseTokenizer as Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _images import read_images  # bench/_images.py

GEOMETRY_BITS = 8  # per geometry parameter in the byte count (gtok encode --geometry-bits 8)
JPEG_QUALITIES = (1, 95)


def scores(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of uint8 [N, 3, S, S] reconstructions."""
    return {
        "psnr": psnr(originals, reconstructions).mean().item(),
        "ssim": ssim(originals, reconstructions).mean().item(),
    }


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def thumbnails(images: torch.Tensor, side: int) -> torch.Tensor:
    """Each image shrunk to side x side and enlarged back (Pillow bicubic): uint8 like `images`."""
    size = images.shape[-1]
    out = []
    for image in images:
        small = _pil(image).resize((side, side), Image.Resampling.BICUBIC)
        out.append(_tensor(small.resize((size, size), Image.Resampling.BICUBIC)))
    return torch.stack(out)


def jpeg_payload(data: bytes) -> int:
    """Bytes of a baseline JPEG's entropy-coded data: after the SOS header, before EOI."""
    start = data.index(b"\xff\xda")
    header = int.from_bytes(data[start + 2 : start + 4], "big")
    return len(data) - (start + 2 + header) - 2


def _jpeg(image: Image.Image, quality: int) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2, optimize=True)
    data = buffer.getvalue()
    return data, jpeg_payload(data)


def jpeg_at_budget(image: torch.Tensor, budget: int) -> tuple[torch.Tensor, int, bool]:
    """The highest-quality JPEG of `image` whose payload fits `budget` bytes (binary search
    over quality; payload size grows with quality): (decoded uint8 [3, S, S], payload bytes,
    whether it fits; False means quality 1 was still over budget)."""
    picture = _pil(image)
    low, high = JPEG_QUALITIES
    best = _jpeg(picture, low)
    fits = best[1] <= budget
    while fits and low < high:
        middle = (low + high + 1) // 2
        data = _jpeg(picture, middle)
        if data[1] <= budget:
            best, low = data, middle
        else:
            high = middle - 1
    return _tensor(Image.open(io.BytesIO(best[0]))), best[1], fits


def jpeg_baseline(images: torch.Tensor, budget: int) -> dict:
    """JPEG of every image at `budget` payload bytes: scores, mean bytes, unreachable count."""
    decoded, sizes, unreachable = [], [], 0
    for image in images:
        out, size, fits = jpeg_at_budget(image, budget)
        decoded.append(out)
        sizes.append(size)
        unreachable += not fits
    result = scores(images, torch.stack(decoded))
    return result | {"budget_bytes": budget, "mean_bytes": statistics.fmean(sizes),
                     "unreachable": unreachable}  # fmt: skip


def token_bytes(tok: Tokenizer) -> float:
    """Bytes of one image's tokens, bit-packed (see the module doc)."""
    config = tok.config
    bits = math.ceil(math.log2(config.codebook_size))
    if config.kind == "gaussian":
        bits += 5 * GEOMETRY_BITS
    return tok.config.num_tokens * bits / 8


@torch.inference_mode()
def reconstruct(
    tok: Tokenizer, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 reconstructions [N, 3, S, S] and code ids [N, T] of `images`."""
    outs, ids = [], []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size].permute(0, 2, 3, 1))
        tokens = tok.encode(batch)
        outs.append(uint8_images(tok.decode(tokens)))
        ids.append(tokens.indices)
    return torch.cat(outs), torch.cat(ids)


@torch.inference_mode()
def _rate(tok: Tokenizer, images: torch.Tensor, batch_size: int) -> float:
    batch = to_model_input(images[:batch_size].permute(0, 2, 3, 1))
    started = time.perf_counter()
    tok.decode(tok.encode(batch))
    return len(batch) / (time.perf_counter() - started)


def rates(
    models: dict[str, Tokenizer], images: torch.Tensor, batch_size: int, repeats: int
) -> dict:
    """Encode + decode img/s of each model: median of `repeats` runs, models alternating."""
    for tok in models.values():
        _rate(tok, images, batch_size)  # warm-up: kernel compilation, allocator
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, tok in models.items():
            runs[name].append(_rate(tok, images, batch_size))
    return {name: statistics.median(values) for name, values in runs.items()}


def evaluate_set(
    models: dict[str, Tokenizer], images: torch.Tensor, args: argparse.Namespace
) -> dict:
    """Every model's and baseline's scores on one image set."""
    out: dict = {"images": len(images), "models": {}, "baselines": {}}
    speed = rates(models, images, args.batch_size, args.repeats)
    for name, tok in models.items():
        recon, ids = reconstruct(tok, images, args.batch_size)
        stats = codebook_stats(code_counts(ids, tok.config.codebook_size))
        out["models"][name] = scores(images, recon) | {
            "token_bytes": token_bytes(tok),
            "code_usage": stats.usage,
            "perplexity": stats.perplexity,
            "images_per_s": speed[name],
        }
    for side in args.thumbnails:
        entry = scores(images, thumbnails(images, side)) | {"bytes": 3 * side * side}
        out["baselines"][f"bicubic_{side}x{side}"] = entry
    by_budget: dict[int, dict] = {}  # models with equal token bytes share one JPEG search
    for name, tok in models.items():
        budget = int(token_bytes(tok))
        if budget not in by_budget:
            by_budget[budget] = jpeg_baseline(images, budget)
        out["baselines"][f"jpeg_at_{name}_bytes"] = by_budget[budget]
    return out


def _named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=_named, action="append", required=True,
                        help="NAME=MODEL_DIR (repeat; the first sets the image size)")  # fmt: skip
    parser.add_argument("--set", type=_named, action="append", required=True,
                        help="NAME=SHARD[,SHARD...] (repeat)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="images per set (at most)")
    parser.add_argument("--stride", type=int, default=1, help="take every K-th image")
    parser.add_argument("--thumbnails", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {name: load_encoding_model(path, "cpu").tokenizer for name, path in args.model}
    size = next(iter(models.values())).config.image_size
    document: dict = {"models": dict(args.model), "sets": {}}
    for name, shards in args.set:
        images = read_images(shards.split(","), size, args.limit, args.stride)
        document["sets"][name] = evaluate_set(models, images, args)
    json.dump(document, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
