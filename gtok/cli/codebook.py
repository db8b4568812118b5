"""`gtok fit-codebook`: a geometry codebook for `gtok encode --layout codebook`."""

from __future__ import annotations

from typing import Annotated

import typer

from gtok.cli._arguments import StoreArgument
from gtok.cli._common import JsonFlag, print_json


def fit_codebook(
    store: StoreArgument,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Codebook file to write (.npz); must be new.")
    ],
    size: Annotated[int, typer.Option(help="Entries at most (K).")] = 1024,
    shape_weight: Annotated[
        float, typer.Option(help="Weight of shape against position (w).")
    ] = 0.4,
    rate_weight: Annotated[
        float, typer.Option(help="Squared distance per bit of id (lambda); 0: plain k-means.")
    ] = 3e-5,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the start.")] = 0,
    sample: Annotated[int, typer.Option(help="Gaussians k-means fits on, at most.")] = 200_000,
    json_output: JsonFlag = False,
) -> None:
    """Fit a geometry codebook for --layout codebook on a --geometry-bits store.

    One learned geometry id per Gaussian, so that `gtok encode --layout codebook` makes a
    Gaussian 2 ids: k-means over each Gaussian's offset from its index's typical place and
    shape, entropy-constrained by --rate-weight (docs/stores.md, "Tokens for sequence
    models").

    Example: gtok fit-codebook train-b8.zarr -o codebook.npz
    """
    from gtok.store.codebook_fit import fit_store_codebook

    result = fit_store_codebook(
        store, output, size=size, shape_weight=shape_weight, rate_weight=rate_weight,
        seed=seed, sample=sample,
    )  # fmt: skip
    if json_output:
        print_json(result)
        return
    typer.echo(
        f"{result['codebook']}: {result['entries']} entries (of at most {size}) from "
        f"{result['rows']:,} rows; ids {result['bits_per_gaussian']:.2f} bits per Gaussian; "
        f"sha256 {result['sha256'][:16]}"
    )
