"""Throughput of `gtok decode` and `gtok eval` on this machine: prints one JSON document.

    .venv/bin/python bench/eval.py [--images 128] [--batch-size 32] [--workers 0] [--repeats 3]

- decode_images_per_s: `decode_store` end to end (open the store, load and hash the model,
  read tokens, decode, quantize, write one PNG per image), PNG folder output;
  decode_forward_images_per_s: `tokenizer.decode` alone on the same tokens (the ceiling),
  runs alternating with the end-to-end ones.
- eval_images_per_s.psnr_ssim: `evaluate_model` end to end (read and crop the images from
  tar shards, encode + decode with the model, PSNR and SSIM, codebook and geometry
  statistics), every weight-backed metric skipped;
  eval_images_per_s.psnr_ssim_lpips_vgg: the same plus LPIPS-VGG, whose weight files are
  seeded random stand-ins of the standard layouts (same cost as the real ones).

Model: the `tiny` preset (64 px, 64 Gaussians), randomly initialized with a k-means codebook;
images: the first `--images` samples of /work/shared/data/photos64 when present, else
generated 64x64 JPEGs (both as in bench/encode.py, whose helpers are reused). Each figure
is the median of `--repeats` runs; the runs compared with each other alternate, so that
both see the same machine load (this machine is shared: note `load_average_1min`).
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
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from encode import _bench_model, _write_shards  # noqa: E402  (bench/encode.py)
from metrics import randomize  # noqa: E402  (bench/metrics.py)

from gtok.decode import decode_store  # noqa: E402
from gtok.encode import encode_shards, load_encoding_model  # noqa: E402
from gtok.evaluate import evaluate_model  # noqa: E402
from gtok.metrics import LPIPS  # noqa: E402
from gtok.store import TokenStore  # noqa: E402


def _standin_lpips_vgg(folder: Path) -> None:
    """vgg16-397923af.pth and vgg.pth with seeded random weights of the standard layouts."""
    model = randomize(LPIPS("vgg"))
    state = model.state_dict()
    torch.save({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")},
               folder / "vgg16-397923af.pth")  # fmt: skip
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / "vgg.pth")


def _decode_forward_rate(model_dir: Path, store: Path, batch_size: int) -> float:
    from gtok.decode import decode_batch

    model = load_encoding_model(model_dir, "cpu")
    tokens = TokenStore(store, format="torch")
    batches = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    decode_batch(model, batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches:
        decode_batch(model, batch)
    return len(tokens) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="eval's decoding processes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "shards").mkdir()
        shards, origin = _write_shards(root / "shards", args.images, per_shard=64)
        model = _bench_model(root / "model")
        store = root / "tokens.zarr"
        encode_shards(shards, store, model, batch_size=args.batch_size, workers=0)
        weights = root / "weights"
        weights.mkdir()
        os.environ["GTOK_WEIGHTS"] = str(weights)
        os.environ["TORCH_HOME"] = str(root / "torch")

        def decode_rate() -> float:
            out = root / f"recon-{time.perf_counter_ns()}"
            summary = decode_store(store, out, batch_size=args.batch_size, device="cpu")
            return summary.images_per_second

        def eval_rate(skip: list[str]) -> float:
            result = evaluate_model(
                shards,
                model,
                skip_metrics=skip,
                batch_size=args.batch_size,
                workers=args.workers,
                device="cpu",
                grid_images=0,
            )
            return result.document["images_per_second"]

        # alternate, so that both see the same machine load
        rates = [(decode_rate(), _decode_forward_rate(model, store, args.batch_size))
                 for _ in range(args.repeats)]  # fmt: skip
        decode = round(statistics.median(r[0] for r in rates), 2)
        forward = round(statistics.median(r[1] for r in rates), 2)
        _standin_lpips_vgg(weights)
        evals = [(eval_rate(["lpips_vgg", "lpips_alex", "rfid"]), eval_rate(["lpips_alex", "rfid"]))
                 for _ in range(args.repeats)]  # fmt: skip
        plain = round(statistics.median(r[0] for r in evals), 2)
        with_lpips = round(statistics.median(r[1] for r in evals), 2)
    print(
        json.dumps(
            {
                "unit": "images/s",
                "preset": "tiny",
                "image_size": 64,
                "images": args.images,
                "image_source": origin,
                "batch_size": args.batch_size,
                "eval_workers": args.workers,
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "cpu": platform.processor() or platform.machine(),
                "repeats": args.repeats,
                "decode_images_per_s": decode,
                "decode_forward_images_per_s": forward,
                "eval_images_per_s": {"psnr_ssim": plain, "psnr_ssim_lpips_vgg": with_lpips},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
