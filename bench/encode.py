"""Is the encode pipeline the bottleneck, how big are stores, how fast do they read back?

Prints one JSON document:
- forward_images_per_s: `tok.encode` alone on decoded images already in memory, same batch
  size and device (the ceiling); encode_images_per_s: `encode_shards` end to end on the
  same images from their tar shards (decode + crop in `--workers` spawned processes, model,
  writing parts, finalize; model loading and hashing included), for each worker count in
  `--workers`; ratio = encode / forward (target >= 0.9). Forward and encode runs alternate
  `--repeats` times and medians are reported, so both see the same machine load.
  decode_images_per_s_one_core: the decoding pipeline alone in this process, no model.
  cpu_seconds_per_image: CPU time of this process per image, forward alone vs encode with
  `--workers 0` (all work in-process), and their ratio: on a shared, loaded machine wall
  clock rates swing by 2x between runs, CPU time much less.
- large_jpegs: the image path on large photographs (2-31 MP JPEGs installed on this machine,
  `bench/_photos.py`), at each target side in `--large-sizes`: decode + resize + centre crop
  images/s per core (CPU time of this process, one thread), exact vs JPEG draft
  (`Preprocess.jpeg_draft`), and the draft crops' PSNR against the exact ones (min, median);
  then `encode_shards` of `--large-images` of them (repeated) with each `--workers` count,
  draft on and off: whether the decoding workers keep up with the model.
- input_formats: the same images as tar shards and as Parquet files (img2dataset's shape: a
  binary `jpg` column, one file per tar, row groups of `--row-group` rows): decode images/s
  in this process alone (the reader + decode + crop, no model), then `encode_shards` img/s
  for each `--workers` count, tar and Parquet runs alternating `--repeats` times (medians);
  parquet_vs_tar = Parquet / tar (target >= 0.9). With `--inputs-only`, only this section
  (and the machine and data) is measured.
- bytes_per_image on disk (every file of the finished store) vs raw_token_bytes_per_image
  (uint16 ids + float16 geometry, uncompressed).
- random-batch reads (rows/s of indices + geometry, batches of `--read-batch` random rows)
  from a store of `--read-rows` rows (the encoded rows repeated, written like any store):
  TokenStore from the Zarr files (its direct shard reader, and zarr-python's path),
  TokenStore(in_memory=True), and numpy memmaps of the same arrays as .npy files (warm page
  cache, like a store read twice).

Images: the first `--images` samples of /work/shared/data/photos64 (real 64x64 JPEG crops)
when present, else generated 64x64 JPEGs. Model: `--model DIR`, else the `tiny` preset
(64 px, 64 Gaussians) randomly initialized with its codebook k-means-initialized on one
batch, so tokens use many codes as a trained model's do.

On a machine shared with other jobs, pass `--threads 1`: with more torch threads than free
cores, OpenMP threads spin while they wait and both wall and CPU time swing by 2-5x.

Usage: .venv/bin/python bench/encode.py [--images 1024] [--workers 0 1 3] [--threads 1]
[--inputs-only] > out.json
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _photos import large_jpegs

from gtok.data import EncodeStream, Preprocess, expand_shards, loader, to_model_input
from gtok.data.samples import center_prepare
from gtok.data.tario import RawSample, read_tar
from gtok.encode import default_workers, encode_shards, load_encoding_model
from gtok.store import TokenStore

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos64"


def _tar(path: Path, payloads: list[tuple[str, bytes]]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, data in payloads:
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _write_shards(folder: Path, images: int, per_shard: int) -> tuple[list[Path], str]:
    """Tar shards holding the first `images` samples of photos64, or generated JPEGs."""
    import io

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
    paths = [
        _tar(folder / f"bench-{start // per_shard:04d}.tar", payloads[start : start + per_shard])
        for start in range(0, images, per_shard)
    ]
    return paths, origin


def _parquet_copies(shards: list[Path], folder: Path, row_group: int) -> list[Path]:
    """Each tar's samples as a Parquet file of img2dataset's shape (`key`, binary `jpg`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    paths = []
    for shard in shards:
        samples = [s for s in read_tar(str(shard)) if isinstance(s, RawSample)]
        table = pa.table(
            {"key": [s.key for s in samples], "jpg": pa.array([s.files["jpg"] for s in samples])}
        )
        paths.append(folder / f"{shard.stem}.parquet")
        pq.write_table(table, paths[-1], row_group_size=row_group)
    return paths


def _input_formats(args, model_dir: Path, shards: list[Path], scratch: Path) -> dict:
    """Tar vs Parquet input of the same images: decode rate in this process, then encode
    img/s per worker count, the two formats alternating (medians of `--repeats`)."""
    inputs = {"tar": shards, "parquet": _parquet_copies(shards, scratch / "pq", args.row_group)}
    preprocess = Preprocess(load_encoding_model(model_dir, "cpu").config.image_size)
    decode: dict[str, list[float]] = {name: [] for name in inputs}
    encode: dict[str, dict[int, list[float]]] = {n: {w: [] for w in args.workers} for n in inputs}
    for repeat in range(args.repeats):
        for name, paths in inputs.items():
            decode[name].append(_decoded(paths, preprocess, args.batch_size, 0)[1])
            for workers in args.workers:
                summary = encode_shards(
                    paths,
                    scratch / f"inputs-{name}-w{workers}-{repeat}.zarr",
                    model_dir,
                    batch_size=args.batch_size,
                    workers=workers,
                    device=args.device,
                )
                encode[name][workers].append(summary.images_per_second)

    def median(rates: list[float]) -> float:
        return round(float(np.median(rates)), 1)

    return {
        "row_group_rows": args.row_group,
        "decode_images_per_s_one_core": {n: median(r) for n, r in decode.items()},
        "decode_parquet_vs_tar": round(median(decode["parquet"]) / median(decode["tar"]), 3),
        "encode_by_workers": {
            str(w): {
                "tar_images_per_s": median(encode["tar"][w]),
                "parquet_images_per_s": median(encode["parquet"][w]),
                "parquet_vs_tar": round(median(encode["parquet"][w]) / median(encode["tar"][w]), 3),
                "each_run": {n: [round(r, 1) for r in encode[n][w]] for n in inputs},
            }
            for w in args.workers
        },
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255**2 / mse))


def _crops(payloads: list[tuple[str, bytes]], preprocess: Preprocess):
    """(centre crops of every payload, images per CPU second of this process)."""
    prepare = center_prepare(preprocess)
    cpu = time.process_time()
    crops = [prepare(RawSample(key, {"jpg": data}), 0).image for key, data in payloads]
    return crops, len(payloads) / (time.process_time() - cpu)


def _draft_figures(payloads: list[tuple[str, bytes]], size: int) -> dict:
    """Decode + resize + crop rates per core, exact vs draft, and the draft crops' PSNR."""
    exact, exact_rate = _crops(payloads, Preprocess(size))
    drafted, draft_rate = _crops(payloads, Preprocess(size, jpeg_draft=True))
    psnr = [_psnr(a, b) for a, b in zip(exact, drafted, strict=True)]
    return {
        "exact_images_per_s_per_core": round(exact_rate, 2),
        "draft_images_per_s_per_core": round(draft_rate, 2),
        "speedup": round(draft_rate / exact_rate, 2),
        "draft_psnr_db": {"min": round(min(psnr), 2), "median": round(float(np.median(psnr)), 2)},
        "drafted": sum(not np.array_equal(a, b) for a, b in zip(exact, drafted, strict=True)),
    }


def _large_jpegs(args, model_dir: Path, scratch: Path) -> dict:
    """The image path on large photographs: per-core rates and PSNR per target side, then
    encode_shards with each worker count, draft on and off."""
    paths = large_jpegs()
    if not paths:
        return {"skipped": "no large JPEGs found (see bench/_photos.py)"}
    payloads = [(f"{i:06d}", p.read_bytes()) for i, p in enumerate(paths)]
    megapixels = []
    for path in paths:
        with Image.open(path) as img:
            megapixels.append(img.width * img.height / 1e6)
    report = {
        "photos": len(paths),
        "megapixels": {k: round(float(f(megapixels)), 1) for k, f in _STATS.items()},
        "by_target_side": {str(s): _draft_figures(payloads, s) for s in args.large_sizes},
    }
    repeated = [(f"{i:06d}", payloads[i % len(payloads)][1]) for i in range(args.large_images)]
    folder = scratch / "large"
    folder.mkdir()
    shards = [
        _tar(folder / f"large-{start:06d}.tar", repeated[start : start + 8])
        for start in range(0, len(repeated), 8)
    ]
    runs: dict[str, dict[str, float]] = {}
    for workers in args.workers:
        for draft in (True, False):
            summary = encode_shards(
                shards,
                scratch / f"large-w{workers}-{draft}.zarr",
                model_dir,
                batch_size=args.batch_size,
                workers=workers,
                device=args.device,
                jpeg_draft=draft,
            )
            name = "draft_images_per_s" if draft else "exact_images_per_s"
            runs.setdefault(str(workers), {})[name] = round(summary.images_per_second, 2)
    report["encode_by_workers"] = runs
    report["encode_images"] = args.large_images
    return report


_STATS = {"min": np.min, "median": np.median, "max": np.max}


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


def _forward_rate(model, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(images/s, CPU seconds of this process per image) of the model alone."""
    with torch.inference_mode():
        model.tokenizer.encode(to_model_input(batches[0].to(model.device)))  # warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            tokens = model.tokenizer.encode(to_model_input(batch.to(model.device)))
            tokens.indices.cpu()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    images = sum(len(b) for b in batches)
    return images / elapsed, cpu / images


def _tiled_store(source: Path, out: Path, rows: int) -> Path:
    """A store of `rows` rows made by repeating `source`'s rows, written like any store."""
    from dataclasses import replace

    from gtok.store import Location, Part, StoreWriter, finalize_store
    from gtok.store.opening import open_root, read_header

    small = TokenStore(source, fields=("indices", "geometry", "keys"))
    everything = small[0 : len(small)]
    header, _ = read_header(open_root(Location(str(source))))
    per_part = 16384
    names = tuple(f"tile-{i:04d}.tar" for i in range(-(-rows // per_part)))
    writer = StoreWriter.open(str(out), replace(header, shard_names=names, shard_urls=names))
    for number, name in enumerate(names):
        count = min(per_part, rows - number * per_part)
        take = np.arange(count) % len(small)
        writer.write_part(
            Part(
                shard=name,
                indices=everything["indices"][take],
                geometry=everything["geometry"][take],
                keys=[f"{name}/{i:06d}" for i in range(count)],
                labels=np.full(count, -1, np.int32),
                samples=count,
            )
        )
    finalize_store(str(out))
    return out


def _read_rates(store_path: Path, scratch: Path, batch: int, batches: int) -> dict:
    """Rows/s of random batches (indices + geometry): TokenStore from the Zarr files (direct
    shard reader, and zarr-python's path), TokenStore(in_memory=True), numpy memmaps."""
    from gtok.store import rowread

    fields = ("indices", "geometry")
    store = TokenStore(store_path, fields=fields)
    memory = TokenStore(store_path, fields=fields, in_memory=True)
    maps = {}
    for name in fields:
        np.save(scratch / f"{name}.npy", store[0 : len(store)][name])
        maps[name] = np.load(scratch / f"{name}.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(store), batch) for _ in range(batches)]

    def rate(read) -> float:
        read(picks[0])
        start = time.perf_counter()
        for rows in picks:
            read(rows)
        return batch * batches / (time.perf_counter() - start)

    direct = rate(lambda rows: store[rows])
    original = rowread.RowReader.open
    rowread.RowReader.open = classmethod(lambda cls, folder, array: None)
    try:
        via_zarr_store = TokenStore(store_path, fields=fields)
        via_zarr = rate(lambda rows: via_zarr_store[rows])
    finally:
        rowread.RowReader.open = original
    in_memory = rate(lambda rows: memory[rows])
    memmap = rate(lambda rows: {n: np.asarray(m[rows]) for n, m in maps.items()})
    return {
        "rows_in_store": len(store),
        "batch_rows": batch,
        "batches": batches,
        "tokenstore_rows_per_s": round(direct),
        "tokenstore_via_zarr_python_rows_per_s": round(via_zarr),
        "tokenstore_in_memory_rows_per_s": round(in_memory),
        "numpy_memmap_rows_per_s": round(memmap),
        "tokenstore_vs_memmap": round(direct / memmap, 4),
        "in_memory_vs_memmap": round(in_memory / memmap, 3),
    }


def _machine(device: str) -> dict:
    from gtok.devices import select_device

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(select_device(device)),
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, 1, default_workers()}))
    parser.add_argument("--large-sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--large-images", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument("--read-batch", type=int, default=256)
    parser.add_argument("--read-rows", type=int, default=200_000)
    parser.add_argument("--read-batches", type=int, default=50)
    parser.add_argument("--row-group", type=int, default=128, help="rows per Parquet row group")
    parser.add_argument(
        "--inputs-only", action="store_true", help="measure only tar vs Parquet input"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gtok-bench-encode-") as tmp:
        scratch = Path(tmp)
        model_dir = Path(args.model) if args.model else _bench_model(scratch / "model")
        shards, origin = _write_shards(scratch, args.images, args.per_shard)
        if args.inputs_only:
            report = {
                "machine": _machine(args.device),
                "data": {"images": args.images, "shards": len(shards), "origin": origin},
                "batch_size": args.batch_size,
                "input_formats": _input_formats(args, model_dir, shards, scratch),
            }
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return
        model = load_encoding_model(model_dir, args.device)
        preprocess = Preprocess(model.config.image_size)
        batches, decode_rate = _decoded(shards, preprocess, args.batch_size, 0)
        forward_rates: list[float] = []
        forward_cpu: list[float] = []
        encode_rates: dict[int, list[float]] = {w: [] for w in args.workers}
        encode_cpu: list[float] = []
        for repeat in range(args.repeats):  # interleaved: both see the same machine load
            rate, cpu = _forward_rate(model, batches)
            forward_rates.append(rate)
            forward_cpu.append(cpu)
            for workers in args.workers:
                out = scratch / f"tokens-w{workers}-{repeat}.zarr"
                cpu_start = time.process_time()
                summary = encode_shards(
                    shards,
                    out,
                    model_dir,
                    batch_size=args.batch_size,
                    workers=workers,
                    device=args.device,
                )
                encode_rates[workers].append(summary.images_per_second)
                if workers == 0:  # everything in this process: its CPU time is the whole cost
                    encode_cpu.append((time.process_time() - cpu_start) / summary.encoded)
        forward = float(np.median(forward_rates))
        runs = {
            str(w): {
                "encode_images_per_s": round(float(np.median(rates)), 1),
                "ratio_to_forward": round(float(np.median(rates)) / forward, 3),
                "each_run": [round(r, 1) for r in rates],
            }
            for w, rates in encode_rates.items()
        }
        best = max(runs, key=lambda w: runs[w]["encode_images_per_s"])
        info_store = scratch / f"tokens-w{best}-0.zarr"
        files = [p for p in info_store.rglob("*") if p.is_file()]
        store = TokenStore(info_store)
        raw = store.num_tokens * (2 + 5 * 2)
        report = {
            "machine": _machine(args.device),
            "data": {"images": len(store), "shards": len(shards), "origin": origin},
            "model": {
                "preset": model.config.preset,
                "image_size": model.config.image_size,
                "num_tokens": model.config.num_tokens,
            },
            "batch_size": args.batch_size,
            "forward_images_per_s": round(forward, 1),
            "forward_each_run": [round(r, 1) for r in forward_rates],
            "decode_images_per_s_one_core": round(decode_rate, 1),
            "encode_by_workers": runs,
            "best_ratio": runs[best]["ratio_to_forward"],
            "cpu_seconds_per_image": {
                "forward": round(float(np.median(forward_cpu)), 4),
                "encode_workers_0": round(float(np.median(encode_cpu)), 4) if encode_cpu else None,
                "ratio": round(float(np.median(forward_cpu) / np.median(encode_cpu)), 3)
                if encode_cpu
                else None,
            },
            "input_formats": _input_formats(args, model_dir, shards, scratch),
            "store": {
                "bytes_per_image": round(sum(p.stat().st_size for p in files) / len(store), 1),
                "raw_token_bytes_per_image": raw,
                "files": len(files),
            },
            "large_jpegs": _large_jpegs(args, model_dir, scratch),
            "random_reads": _read_rates(
                _tiled_store(info_store, scratch / "tiled.zarr", args.read_rows),
                scratch,
                args.read_batch,
                args.read_batches,
            ),
        }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
