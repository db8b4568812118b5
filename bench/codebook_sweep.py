"""Geometry codebook settings, cheaply: PSNR lost and id entropy per (K, w, lambda); one JSON.

For each setting K:W:LAMBDA (at most K entries, shape weight w, rate weight lambda) it fits a
codebook on a training store's geometry (`gtok.store.geometry_codebook.fit_codebook`, seed
0), quantizes the geometry of a validation store through it, decodes the validation tokens
with their own code ids and the codebook's geometry, and reports:

- `psnr_loss_db`: mean per-image PSNR (`gtok.metrics.psnr`, uint8) of that decode against
  the validation images, minus the same for the store's own geometry (negative: lost);
- `bits_per_image`: the sum over the G positions of the empirical entropy of the
  validation ids at that position (bits), the per-position unigram a sequence model
  starts from (bench/rate_distortion.py measures what a trained prior pays);
- `entries` used and the mean squared residual error in the shape space.

This is what chose the shape weight and the rate weights of bench/rate_distortion.py's
rows (docs/results.md); it needs no encode and no prior, seconds to minutes per setting.

    OMP_NUM_THREADS=1 python bench/codebook_sweep.py --train-store fields-b8-train.zarr \\
        --val-store val-f32.zarr --val-shards val-000000.tar --settings 256:0.4:0 256:0.4:2e-5
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gtok  # noqa: E402
from gtok.metrics.images import to_uint8  # noqa: E402
from gtok.metrics.psnr import psnr  # noqa: E402
from gtok.store.geometry_codebook import fit_codebook  # noqa: E402

BATCH = 100  # images per decode


def _images(shards: list[str], keys: list[str], tok) -> torch.Tensor:
    """The validation images of the store's `keys` ("<shard name>/<sample key>"), as the
    model takes them: float [N, 3, S, S] in [-1, 1]."""
    by_key: dict[str, Image.Image] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                stem, _, extension = member.name.rpartition(".")
                if extension in ("jpg", "jpeg", "png", "webp"):
                    image = Image.open(tar.extractfile(member))  # type: ignore[arg-type]
                    by_key[f"{Path(shard).name}/{stem}"] = image.convert("RGB")
    return torch.cat([tok.preprocess(by_key[key]) for key in keys])


def _psnr(tok, indices: np.ndarray, geometry: np.ndarray, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of the decoded tokens against `images`."""
    scores = []
    for start in range(0, len(indices), BATCH):
        part = slice(start, start + BATCH)
        decoded = tok.decode((torch.from_numpy(indices[part]), torch.from_numpy(geometry[part])))
        scores.append(psnr(to_uint8(decoded.clamp(-1, 1)), to_uint8(images[part])))
    return float(torch.cat(scores).mean())


def per_position_bits(ids: np.ndarray) -> float:
    """ids [N, G] -> the sum over positions of each position's empirical entropy (bits)."""
    total = 0.0
    for column in ids.T:
        shares = np.bincount(column.astype(np.int64)) / len(column)
        shares = shares[shares > 0]
        total += float(-(shares * np.log2(shares)).sum())
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", nargs="+", required=True, help="K:W:LAMBDA, e.g. 256:0.4:2e-5"
    )
    parser.add_argument("--train-store", required=True, help="store with --geometry-bits 8")
    parser.add_argument("--val-store", required=True, help="val store (float32 geometry best)")
    parser.add_argument("--val-shards", nargs="+", required=True, help="its tar shards")
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tok = gtok.load_tokenizer(args.model).eval()
    train = gtok.TokenStore(args.train_store, fields=("geometry",))
    binning = train.geometry_binning
    if binning is None:
        parser.error(f"{args.train_store} has no geometry bins; encode it with --geometry-bits 8")
    fitted = np.concatenate([b["geometry"] for b in train.batches(4096)]).astype(np.float32)
    val = gtok.TokenStore(args.val_store)
    rows = val[0 : len(val)]
    indices, geometry = rows["indices"].astype(np.int64), rows["geometry"].astype(np.float32)
    images = _images(args.val_shards, val.keys(), tok)
    exact = _psnr(tok, indices, geometry, images)
    results = []
    for setting in args.settings:
        size, shape_weight, rate_weight = setting.split(":")
        started = time.perf_counter()
        codebook = fit_codebook(
            fitted, int(size), binning.scale_min, binning.scale_max,
            shape_weight=float(shape_weight), rate_weight=float(rate_weight),
        )  # fmt: skip
        ids = codebook.quantize(geometry)
        error = codebook.residuals(geometry) - codebook.centroids[ids.astype(np.int64)]
        result = {
            "size": int(size),
            "shape_weight": float(shape_weight),
            "rate_weight": float(rate_weight),
            "entries": codebook.size,
            "psnr_loss_db": _psnr(tok, indices, codebook.dequantize(ids), images) - exact,
            "bits_per_image": per_position_bits(ids),
            "mean_squared_error": float((error**2).sum(-1).mean()),
            "seconds": time.perf_counter() - started,
        }
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    document = {"train_store": args.train_store, "val_store": args.val_store,
                "val_images": len(indices), "psnr_db": exact, "settings": results}  # fmt: skip
    json.dump(document, sys.stdout, indent=2)
    print()
    return document


if __name__ == "__main__":
    main()
