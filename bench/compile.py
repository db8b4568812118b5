"""Decode throughput of the default model on the CPU, eager against `torch.compile`: prints
one JSON document.

    .venv/bin/python bench/compile.py [--batch-size 32] [--batches 8] [--repeats 3]

- eager_images_per_s: `tok.decode(tokens)` as it runs without compiling (Taichi rasterizer);
- compiled_images_per_s: `torch.compile(tok.decode, fullgraph=True)` (inductor), the
  rasterizer an opaque custom op; compile_s: its first call (compiling), not in the rate.
Tokens: the default model's encode of seeded random images. Both rates are the median of
`--repeats` runs of `--batches` batches, the eager and compiled runs alternating so that
both see the same machine load (this machine is shared: note `load_average_1min`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gtok
from gtok.model import Tokens


def _rate(decode: Callable[[Tokens], torch.Tensor], tokens: Tokens, batches: int) -> float:
    """Images per second of `batches` calls of `decode` on `tokens`."""
    start = time.perf_counter()
    for _ in range(batches):
        decode(tokens)
    return batches * len(tokens.indices) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = gtok.load_tokenizer()
    size = tok.config.image_size
    gen = torch.Generator().manual_seed(0)
    tokens = tok.encode(torch.rand(args.batch_size, 3, size, size, generator=gen) * 2 - 1)
    compiled = torch.compile(tok.decode, fullgraph=True)
    start = time.perf_counter()
    max_diff = float((compiled(tokens) - tok.decode(tokens)).abs().max())
    compile_s = time.perf_counter() - start
    eager, fast = [], []
    for _ in range(args.repeats):
        eager.append(_rate(tok.decode, tokens, args.batches))
        fast.append(_rate(compiled, tokens, args.batches))
    eager_rate, fast_rate = statistics.median(eager), statistics.median(fast)
    print(
        json.dumps(
            {
                "model": tok.config.preset,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "torch": torch.__version__,
                "eager_images_per_s": round(eager_rate, 1),
                "compiled_images_per_s": round(fast_rate, 1),
                "compiled_vs_eager": round(fast_rate / eager_rate, 3),
                "compile_s": round(compile_s, 1),
                "max_abs_diff": max_diff,
                "machine": platform.machine(),
                "load_average_1min": os.getloadavg()[0],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
