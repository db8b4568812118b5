"""What `gtok encode --geometry-bits B` costs in reconstruction PSNR: prints one JSON document.

For every image of the shards: encode once with the model (float32 geometry), then decode
the same code ids with the geometry as a store would hold it: float16 (a plain store, the
baseline), and the dequantized B-bit bins (`GeometryBinning`, then float16, exactly what a
`--geometry-bits B` store's `geometry` holds) for each B of `--bits`. Reports the mean
per-image PSNR (`gtok.metrics.psnr`, uint8 images) of each, its difference to float16, and
the bytes per image of each token layout: raw (uint16 ids + float16 or uint8/16 bins) and
bit-packed (log2(codebook) bits per id + 5 B bits per Gaussian).

Usage: .venv/bin/python bench/geometry_bits.py SHARDS... [--model DIR] [--bits 4 5 6 8 10]
    [--limit N] > out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import Preprocess, to_model_input
from gtok.decode.pictures import uint8_images
from gtok.encode.model import load_encoding_model
from gtok.evaluate.sources import reference_batches
from gtok.metrics.psnr import psnr
from gtok.model.tokenizer import Tokens
from gtok.store.geometry_bins import GeometryBinning


def _variants(geometry: torch.Tensor, binnings: dict[int, GeometryBinning]) -> dict:
    """name -> the float32 geometry [B, G, 5] a store of that kind hands to decode."""
    out = {"float16": geometry.half().float()}
    for bits, binning in binnings.items():
        codes = binning.quantize(geometry.numpy())
        out[f"bits{bits}"] = torch.from_numpy(binning.dequantize(codes)).half().float()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+")
    parser.add_argument("--model", default=None)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = load_encoding_model(args.model, "cpu")
    tok = model.tokenizer
    binnings = {b: GeometryBinning.for_model(b, tok) for b in args.bits}
    scores: dict[str, list[torch.Tensor]] = {}
    preprocess = Preprocess(tok.config.image_size)
    for batch in reference_batches(
        args.shards, preprocess, batch_size=args.batch_size, limit=args.limit
    ):
        if not batch.keys:  # a shard's end can come as a batch of no images
            continue
        with torch.inference_mode():
            tokens = tok.encode(to_model_input(batch.images.permute(0, 2, 3, 1)))
            for name, geometry in _variants(tokens.geometry, binnings).items():
                images = uint8_images(tok.decode(Tokens(tokens.indices, geometry)))
                scores.setdefault(name, []).append(psnr(images, batch.images))
    means = {name: float(torch.cat(values).mean()) for name, values in scores.items()}
    tokens_per_image = tok.config.num_tokens
    raw = {"float16": tokens_per_image * (2 + 5 * 2)}
    raw |= {f"bits{b}": tokens_per_image * (2 + 5 * binnings[b].dtype.itemsize) for b in args.bits}
    report = {
        "model": str(model.path),
        "shards": args.shards,
        "images": int(sum(len(v) for v in scores["float16"])),
        "r_max": binnings[args.bits[0]].scale_max,
        "psnr_db": means,
        "delta_vs_float16_db": {n: means[n] - means["float16"] for n in means},
        "raw_token_bytes_per_image": raw,
        "packed_token_bytes_per_image": {  # log2(codebook) bits per id + 5 B bits
            f"bits{b}": tokens_per_image * (math.log2(tok.config.codebook_size) + 5 * b) / 8
            for b in args.bits
        },
        "seconds": time.perf_counter() - started,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
