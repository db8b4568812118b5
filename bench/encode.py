"""Is the encode pipeline the bottleneck, how big are stores, how fast do they read back?

Prints one JSON document:
- forward_images_per_s: `tok.encode` alone on decoded images already in memory, same batch
  size and device (the ceiling); encode_images_per_s: `encode_shards` end to end on the
  same images from their tar shards (decode + crop in `--workers` spawned processes, model,
  writing parts, finalize), for each worker count in `--workers`; ratio = encode / forward
  (target >= 0.9). decode_images_per_s: the decoding pipeline alone, no model.
- bytes_per_image on disk (every file of the finished store) vs raw_token_bytes_per_image
  (uint16 ids + float16 geometry, uncompressed).
- random-batch reads (rows/s, batches of `--read-batch` random rows): TokenStore from Zarr,
  TokenStore(in_memory=True), and numpy memmaps of the same arrays as .npy files (warm page
  cache, like a store read twice).

Images: the first `--images` samples of /work/shared/data/photos64 (real 64x64 JPEG crops)
when present, else generated 64x64 JPEGs. Model: `--model DIR`, else the `tiny` preset
(64 px, 64 Gaussians) randomly initialized with its codebook k-means-initialized on one
batch, so tokens use many codes as a trained model's do.

Usage: .venv/bin/python bench/encode.py [--images 2000] [--workers 0 1] > bench-encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import EncodeStream, Preprocess, expand_shards, loader, to_model_input
from gtok.data.tario import read_tar
from gtok.encode import encode_shards, load_encoding_model
from gtok.store import TokenStore

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos64"


def _write_shards(folder: Path, images: int, per_shard: int) -> tuple[list[Path], str]:
    """Tar shards holding the first `images` samples of photos64, or generated JPEGs."""
    import io
    import tarfile

    from PIL import Image

    sources = sorted(PHOTOS.glob("train-*.tar")) if PHOTOS.is_dir() else []
    payloads: list[tuple[str, bytes]] = []
    for shard in sources:
        for sample in read_tar(str(shard)):
            if len(payloads) < images and getattr(sample, "files", None) and "jpg" in sample.files:
                payloads.append((sample.key, sample.files["jpg"]))
    origin = f"photos64 ({PHOTOS})"
    if len(payloads) < images:
        origin = "generated 64x64 JPEGs (photos64 not found)"
        rng = np.random.default_rng(0)
        payloads = []
        for i in range(images):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=92)
            payloads.append((f"{i:06d}", buf.getvalue()))
    paths = []
    for start in range(0, images, per_shard):
        path = folder / f"bench-{start // per_shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, data in payloads[start : start + per_shard]:
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths, origin


def _bench_model(folder: Path) -> Path:
    import gtok

    tok = gtok.build_tokenizer("tiny", seed=0)
    size = tok.config.image_size
    images = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tok.train()
    with torch.no_grad():
        tok(images)  # k-means codebook init
    tok.eval().save_pretrained(folder)
    return folder


def _decoded(shards: list[Path], preprocess: Preprocess, batch_size: int, workers: int):
    """(uint8 batches as the model gets them, decode images/s) through the real pipeline."""
    stream = EncodeStream(expand_shards(shards), preprocess, batch_size)
    start = time.perf_counter()
    batches = [c.images for c in loader(stream, workers=workers) if len(c.keys)]
    elapsed = time.perf_counter() - start
    return batches, sum(len(b) for b in batches) / elapsed


def _forward_rate(model, batches: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        model.tokenizer.encode(to_model_input(batches[0].to(model.device)))  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            tokens = model.tokenizer.encode(to_model_input(batch.to(model.device)))
            tokens.indices.cpu()
        elapsed = time.perf_counter() - start
    return sum(len(b) for b in batches) / elapsed


def _read_rates(store_path: Path, scratch: Path, batch: int, batches: int) -> dict:
    """Rows/s of random batches: Zarr TokenStore, in-memory TokenStore, numpy memmap."""
    store = TokenStore(store_path)
    memory = TokenStore(store_path, in_memory=True)
    arrays = {name: store[0 : len(store)][name] for name in ("indices", "geometry")}
    maps = {}
    for name, values in arrays.items():
        np.save(scratch / f"{name}.npy", values)
        maps[name] = np.load(scratch / f"{name}.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(store), batch) for _ in range(batches)]

    def rate(read) -> float:
        read(picks[0])
        start = time.perf_counter()
        for rows in picks:
            read(rows)
        return batch * batches / (time.perf_counter() - start)

    zarr_rate = rate(lambda rows: store[rows])
    memory_rate = rate(lambda rows: memory[rows])
    memmap_rate = rate(lambda rows: {n: np.asarray(m[rows]) for n, m in maps.items()})
    return {
        "batch_rows": batch,
        "batches": batches,
        "tokenstore_zarr_rows_per_s": round(zarr_rate),
        "tokenstore_in_memory_rows_per_s": round(memory_rate),
        "numpy_memmap_rows_per_s": round(memmap_rate),
        "zarr_vs_memmap": round(zarr_rate / memmap_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument("--read-batch", type=int, default=256)
    parser.add_argument("--read-batches", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gtok-bench-encode-") as tmp:
        scratch = Path(tmp)
        model_dir = Path(args.model) if args.model else _bench_model(scratch / "model")
        shards, origin = _write_shards(scratch, args.images, args.per_shard)
        model = load_encoding_model(model_dir, args.device)
        preprocess = Preprocess(model.config.image_size)
        batches, decode_rate = _decoded(shards, preprocess, args.batch_size, max(args.workers))
        forward = _forward_rate(model, batches)
        runs = {}
        for workers in args.workers:
            out = scratch / f"tokens-w{workers}.zarr"
            summary = encode_shards(
                shards,
                out,
                model_dir,
                batch_size=args.batch_size,
                workers=workers,
                device=args.device,
            )
            runs[str(workers)] = {
                "encode_images_per_s": round(summary.images_per_second, 1),
                "ratio_to_forward": round(summary.images_per_second / forward, 3),
                "seconds": round(summary.seconds, 2),
            }
        best = max(runs, key=lambda w: runs[w]["encode_images_per_s"])
        info_store = scratch / f"tokens-w{best}.zarr"
        files = [p for p in info_store.rglob("*") if p.is_file()]
        store = TokenStore(info_store)
        raw = store.num_tokens * (2 + 5 * 2)
        report = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "device": str(model.device),
                "load_average": list(os.getloadavg()),
            },
            "data": {"images": len(store), "shards": len(shards), "origin": origin},
            "model": {
                "preset": model.config.preset,
                "image_size": model.config.image_size,
                "num_tokens": model.config.num_tokens,
            },
            "batch_size": args.batch_size,
            "forward_images_per_s": round(forward, 1),
            "decode_images_per_s": round(decode_rate, 1),
            "decode_workers": max(args.workers),
            "encode_by_workers": runs,
            "best_ratio": runs[best]["ratio_to_forward"],
            "store": {
                "bytes_per_image": round(sum(p.stat().st_size for p in files) / len(store), 1),
                "raw_token_bytes_per_image": raw,
                "files": len(files),
            },
            "random_reads": _read_rates(info_store, scratch, args.read_batch, args.read_batches),
        }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
