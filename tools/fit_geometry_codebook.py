"""Fit a geometry codebook for `gtok encode --layout codebook` on a training token store.

The store must hold a GaussianToken model's geometry in bins (`gtok encode --geometry-bits
8`: its header gives the scale range the codebook works in). k-means in the shape space of
`gtok.store.geometry_codebook` (`--shape-weight` w), entropy-constrained by `--rate-weight`
lambda (0: plain k-means), with a fixed seed, so a rerun writes the same centroids. The
defaults are the setting docs/results.md recommends. Prints the file's sha256, its
entries, the mean residual error and the mean length of the store's ids (bits).

    gtok encode 'corpus/train-*.tar' -o train-b8.zarr --geometry-bits 8
    python tools/fit_geometry_codebook.py train-b8.zarr -o codebook.npz
    gtok encode 'corpus/train-*.tar' -o train-cb.zarr --layout codebook \\
        --geometry-codebook codebook.npz
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from gtok.errors import GtokError
from gtok.store import TokenStore
from gtok.store.geometry_codebook import RATE_WEIGHT, SHAPE_WEIGHT, fit_codebook


def fit(store_path: str, size: int, out: str, seed: int, sample: int, shape_weight: float,
        rate_weight: float) -> dict:  # fmt: skip
    """Fit a codebook of at most `size` entries on the store at `store_path`, save it to
    `out`; returns the file's sha256, its entries, the fit's mean squared residual error
    (shape space) and the mean length of the store's geometry ids (bits per Gaussian)."""
    store = TokenStore(store_path, fields=("geometry",))
    binning = store.geometry_binning
    if binning is None:
        raise GtokError(
            f"{store_path} has no geometry bins to take the scale range from; encode it with "
            "--geometry-bits 8."
        )
    geometry = np.concatenate([b["geometry"] for b in store.batches(4096)]).astype(np.float32)
    codebook = fit_codebook(
        geometry,
        size,
        binning.scale_min,
        binning.scale_max,
        shape_weight=shape_weight,
        rate_weight=rate_weight,
        seed=seed,
        sample=sample,
    )
    sha256 = codebook.save(out)
    ids = codebook.quantize(geometry).astype(np.int64)
    error = codebook.residuals(geometry) - codebook.centroids[ids]
    return {"codebook": out, "sha256": sha256, "size": size, "entries": codebook.size,
            "shape_weight": shape_weight, "rate_weight": rate_weight, "rows": len(geometry),
            "mean_squared_error": float((error**2).sum(-1).mean()),
            "bits_per_gaussian": float(codebook.entry_bits[ids].mean())}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="training store encoded with --geometry-bits")
    parser.add_argument("--size", type=int, default=1024, help="codebook entries K (at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=200_000, help="Gaussians k-means sees")
    parser.add_argument(
        "--shape-weight", type=float, default=SHAPE_WEIGHT, help="w: shape against position"
    )
    parser.add_argument(
        "--rate-weight", type=float, default=RATE_WEIGHT, help="lambda: distance per bit (0: plain)"
    )
    parser.add_argument("-o", "--out", required=True, help="codebook file to write (.npz)")
    args = parser.parse_args(argv)
    result = fit(
        args.store, args.size, args.out, args.seed, args.sample, args.shape_weight, args.rate_weight
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
