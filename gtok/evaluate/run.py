"""`evaluate_model` and `evaluate_pairs`: what `gtok eval` runs.

- `evaluate_model(shards, model, compare=None)`: every usable image of the shards is
  tokenized and reconstructed by the model (and by `compare`, on the same crops), and scored.
- `evaluate_pairs(reference, reconstructed)`: originals from the reference shards are paired
  by key with reconstructions in a folder (`<key path>.png`, as `gtok decode` writes) or a
  token store (decoded with its model), and scored.

Both return one JSON-ready document: the metrics of the (first) tokenizer at top level
(`n`, `psnr`, `ssim`, `lpips_vgg`, `lpips_alex`, `rfid`, `codebook`, `geometry`, each present
when it could be computed, else its reason under `unavailable`), the samples that could not
be scored with their reasons, the protocol (preprocessing, image size, metric definitions,
gtok version, weights sha256 of the model(s) and of the metric networks) and, with
`compare`, the second tokenizer's metrics under `compare`. `EvalResult` also keeps, for
`write_report`, the grid's images (best, median and worst by PSNR, `gtok.evaluate.picks`),
each tokenizer's code histogram and token geometry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtok._version import __version__
from gtok.console import console, is_quiet, progress
from gtok.data import Preprocess
from gtok.data.images import DEFAULT_MAX_PIXELS
from gtok.data.parquetio import DEFAULT_COLUMNS, Columns
from gtok.data.transforms import check_resize
from gtok.decode import model_for_store
from gtok.devices import exact_fp32, select_device, tf32_settings
from gtok.encode.model import load_encoding_model
from gtok.errors import ArgumentError, GtokError
from gtok.evaluate.nets import load_metric_nets
from gtok.evaluate.picks import GridPicker
from gtok.evaluate.scores import Scorer
from gtok.evaluate.sources import (
    FolderReconstructor,
    ModelReconstructor,
    Reconstruction,
    Reconstructor,
    ReferenceBatch,
    StoreReconstructor,
    folder_image_size,
    reference_batches,
)
from gtok.model.refine import RefineSettings
from gtok.store import TokenStore

__all__ = ["PROTOCOL", "EvalResult", "GridSample", "evaluate_model", "evaluate_pairs"]

PROTOCOL = {
    "pixels": "metrics compare uint8 images; reconstructions are quantized as a saved PNG "
    "holds them: round(clamp((x + 1) / 2, 0, 1) * 255)",
    "psnr": "per image: 10 log10(255^2 / MSE) over all channels and pixels, capped at 100 dB; "
    "mean over images",
    "ssim": "per image, as skimage.metrics.structural_similarity(gaussian_weights=True, "
    "sigma=1.5, data_range=255, channel_axis=-1) (11x11 window, K1 0.01, K2 0.03, sample "
    "covariance); mean over images",
    "lpips": "LPIPS v0.1 (lpips package, VGG16 / AlexNet, linear heads) on u / 127.5 - 1 per "
    "image; mean over images",
    "rfid": "as pytorch-fid: FID Inception-v3 (pt_inception-2015-12-05) 2048-d pool features, "
    "u / 255 bilinearly resized to 299x299, Frechet distance between the Gaussians fitted to "
    "the originals' and the reconstructions' features (biased for small n)",
    "codebook": "usage, entropy (bits) and perplexity of the histogram of every token's code",
    "geometry": "distributions of the tokens' Gaussian scales (map pixels), anisotropy, "
    "rotation (radians), centres ([-1, 1]) and grid coverage",
}


@dataclass
class GridSample:
    """One image for the report grid: original and reconstruction(s), uint8 [3, S, S], each
    reconstruction's tokens (indices [G], geometry [G, 5]) when it has Gaussians and per-image
    metrics ({"psnr", "ssim", ...}); role ("best", "median", "worst") and rank (1 = highest
    PSNR) by the first tokenizer's PSNR."""

    key: str
    original: torch.Tensor
    reconstructions: list[torch.Tensor]
    tokens: list[tuple[torch.Tensor, torch.Tensor] | None]
    scores: list[dict[str, float]] = field(default_factory=list)
    role: str = ""
    rank: int = 0


@dataclass
class EvalResult:
    document: dict  # the JSON document (see the module doc)
    per_image: list[dict]  # {"key", "psnr", "ssim", ...} per scored image, of each tokenizer
    grid: list[GridSample] = field(default_factory=list)
    map_sizes: list[int | None] = field(default_factory=list)  # per tokenizer
    code_histograms: list[np.ndarray | None] = field(default_factory=list)  # int64 [K] each
    geometry: list[np.ndarray | None] = field(default_factory=list)  # float32 [N, G, 5] each


def _model_info(reconstructor: Reconstructor) -> dict:
    model = reconstructor.model
    if model is None:
        return {"reconstructions": reconstructor.name}
    info: dict[str, Any] = {
        "path": str(model.path.resolve()),
        "weights_sha256": model.weights_sha256,
    }
    info.update(preset=model.config.preset, kind=model.config.kind)
    info["refinement"] = model.refine.to_dict() if model.refine.enabled else None
    return info


def _evaluate(
    shards: Sequence[str | os.PathLike],
    preprocess: Preprocess,
    reconstructors: list[Reconstructor],
    *,
    weights: Mapping[str, str | os.PathLike | None] | None,
    skip_metrics: Iterable[str],
    batch_size: int,
    workers: int,
    limit: int | None,
    device: torch.device,
    grid_images: int,
    columns: Columns,
) -> EvalResult:
    """Score every reconstructor on the originals of `shards` (the shared driver)."""
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be at least 1, got {batch_size}.", "batch_size")
    if grid_images < 0:
        raise ArgumentError(f"grid_images must be at least 0, got {grid_images}.", "grid_images")
    if limit is not None and limit < 1:
        raise ArgumentError(f"limit must be at least 1, got {limit}.", "limit")
    started = time.perf_counter()
    nets = load_metric_nets(weights, skip=skip_metrics, device=device)
    scorers: list[Scorer] = []
    for r in reconstructors:  # the second shares the first's Inception statistics
        reference = scorers[0] if scorers else None
        scorers.append(
            Scorer(
                nets,
                codebook_size=r.codebook_size,
                has_geometry=r.has_geometry,
                reference=reference,
                device=device,
            )
        )
    batches = reference_batches(
        shards, preprocess, batch_size=batch_size, workers=workers, limit=limit, columns=columns
    )
    skipped, grid = _score(batches, reconstructors, scorers, limit, grid_images)
    if scorers[0].n == 0:
        raise GtokError(
            f"no image could be scored ({len(skipped)} samples skipped"
            + (f", e.g. {skipped[0]['key']}: {skipped[0]['reason']}" if skipped else "")
            + "); check the shards and the reconstructions."
        )
    document = scorers[0].result()
    document["model"] = _model_info(reconstructors[0])
    if len(scorers) > 1:
        document["compare"] = scorers[1].result() | {"model": _model_info(reconstructors[1])}
    document["skipped"] = len(skipped)
    document["skipped_samples"] = skipped
    unmatched = getattr(reconstructors[0], "unmatched", None)
    if unmatched is not None and limit is None:
        document["unmatched_reconstructions"] = unmatched()
    seconds = time.perf_counter() - started
    document["seconds"] = seconds
    document["images_per_second"] = scorers[0].n / seconds if seconds else 0.0
    document["protocol"] = {
        "images": scorers[0].n,
        "image_size": preprocess.image_size,
        "preprocessing": preprocess.to_dict() | {"jpeg_draft": preprocess.jpeg_draft},
        "limit": limit,
        "gtok_version": __version__,
        "device": str(device),
        "tf32": tf32_settings(),
        "metric_weights": nets.weights,
        **PROTOCOL,
    }
    if skipped and not is_quiet():
        console.print(f"[yellow]{len(skipped)} samples not scored[/] (reasons in the results)")
    per_image = [{"tokenizer": t} | row for t, s in enumerate(scorers) for row in s.rows()]
    return EvalResult(
        document,
        per_image,
        grid,
        [r.map_size for r in reconstructors],
        [s.code_histogram() for s in scorers],
        [s.geometry() for s in scorers],
    )


def _score(
    batches: Iterable[ReferenceBatch],
    reconstructors: list[Reconstructor],
    scorers: list[Scorer],
    limit: int | None,
    grid_images: int,
) -> tuple[list[dict], list[GridSample]]:
    """Reconstruct and score each batch with every reconstructor, on the originals all of
    them could reconstruct; returns (skipped samples {"key", "reason"}, grid samples)."""
    skipped: list[dict] = []
    picker = GridPicker(grid_images)
    with progress("img") as bar:
        task = bar.add_task("eval", total=limit)
        for batch in batches:
            skipped += [{"key": k, "reason": r} for k, r in batch.skipped]
            if not batch.keys:
                continue
            outs = [r.reconstruct(batch.keys, batch.images) for r in reconstructors]
            kept = sorted(set.intersection(*(set(o.kept) for o in outs)))
            for out in outs:
                skipped += [{"key": k, "reason": r} for k, r in out.missing]
            keys = [batch.keys[i] for i in kept]
            originals = batch.images[kept]
            for out, scorer in zip(outs, scorers, strict=True):
                rows = [out.kept.index(i) for i in kept]
                indices = None if out.indices is None else out.indices[rows]
                geometry = None if out.geometry is None else out.geometry[rows]
                scorer.add(keys, originals, out.images[rows], indices, geometry)
            _offer(picker, keys, originals, outs, kept, [s.latest(len(keys)) for s in scorers])
            bar.advance(task, len(batch.keys))
    grid = []
    for pick in picker.picks(scorers[0].per_image["psnr"]):
        sample: GridSample = pick.payload  # type: ignore[assignment]
        sample.role, sample.rank = pick.role, pick.rank
        grid.append(sample)
    return skipped, grid


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy: not a view that keeps its whole batch (or device memory) alive."""
    return tensor.detach().to("cpu", copy=True)


def _offer(
    picker: GridPicker,
    keys: list[str],
    originals: torch.Tensor,
    outs: list[Reconstruction],
    kept: list[int],
    scores: list[list[dict[str, float]]],
) -> None:
    """Offer a batch's scored images to the grid picker; scores: per tokenizer, per image."""
    for j, key in enumerate(keys):

        def sample(j: int = j, key: str = key) -> GridSample:
            recons: list[torch.Tensor] = []
            tokens: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            for out in outs:
                row = out.kept.index(kept[j])
                recons.append(_own(out.images[row]))
                if out.indices is not None and out.geometry is not None:
                    tokens.append((_own(out.indices[row]), _own(out.geometry[row])))
                else:
                    tokens.append(None)
            return GridSample(key, _own(originals[j]), recons, tokens, [s[j] for s in scores])

        picker.offer(scores[0][j]["psnr"], sample)


@exact_fp32()
def evaluate_model(
    shards: Sequence[str | os.PathLike],
    model: str | os.PathLike | None,
    *,
    compare: str | os.PathLike | None = None,
    resize: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights: Mapping[str, str | os.PathLike | None] | None = None,
    skip_metrics: Iterable[str] = (),
    batch_size: int = 32,
    workers: int = 0,
    limit: int | None = None,
    device: str = "auto",
    grid_images: int = 9,
    refine: RefineSettings | None = None,
    jpeg_draft: bool = True,
    columns: Columns = DEFAULT_COLUMNS,
) -> EvalResult:
    """Reconstruct every usable image of `shards` with `model` (and `compare`) and score it.

    Images are resized (shorter side to `resize`, default the model's image size) and
    centre-cropped as `gtok encode` does, large JPEGs decoded in draft mode as it does for a
    new store (`jpeg_draft`, recorded in the protocol; False: exact), so that the numbers
    equal those of a store of the same images. weights: explicit metric weight files by key
    ("vgg16", "lpips-vgg", "alexnet", "lpips-alex", "inception"); skip_metrics: result keys
    not to compute ("lpips_vgg", "lpips_alex", "rfid"); grid_images: images kept for
    `write_report`'s grid (the best, median and worst by PSNR, see `gtok.evaluate.picks`);
    refine: encode-time geometry refinement (`gtok.model.refine`) of `model`'s tokens
    (`compare` is not refined, so `--compare` of a model with itself measures what
    refinement gains); columns: how to read Parquet inputs (`gtok.data.parquetio`).
    """
    chosen = select_device(device, allow_mps=True)
    first = load_encoding_model(model, device, refine)
    reconstructors: list[Reconstructor] = [ModelReconstructor(first)]
    if compare is not None:
        second = load_encoding_model(compare, device)
        if second.config.image_size != first.config.image_size:
            raise ArgumentError(
                f"`compare`: {second.path} takes {second.config.image_size} px images but "
                f"{first.path} takes {first.config.image_size} px; compare models of one size.",
                "compare",
            )
        reconstructors.append(ModelReconstructor(second))
    size = first.config.image_size
    check_resize(resize, size, max_pixels)
    preprocess = Preprocess(
        size, resize, background=background, max_pixels=max_pixels, jpeg_draft=jpeg_draft
    )
    return _evaluate(
        shards,
        preprocess,
        reconstructors,
        weights=weights,
        skip_metrics=skip_metrics,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        device=chosen,
        grid_images=grid_images,
        columns=columns,
    )


def _is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / "zarr.json").is_file() or "://" in str(path)


@exact_fp32()
def evaluate_pairs(
    reference: Sequence[str | os.PathLike],
    reconstructed: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    force: bool = False,
    size: int | None = None,
    resize: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights: Mapping[str, str | os.PathLike | None] | None = None,
    skip_metrics: Iterable[str] = (),
    batch_size: int = 32,
    workers: int = 0,
    limit: int | None = None,
    device: str = "auto",
    grid_images: int = 9,
    jpeg_draft: bool = True,
    columns: Columns = DEFAULT_COLUMNS,
) -> EvalResult:
    """Score the reconstructions in `reconstructed` against the originals in `reference`.

    reconstructed: a folder of `<key path>.png` files (the originals are then centre-cropped
    to `size`, default the first reconstruction's side, after resizing the shorter side to
    `resize`), or a token store (decoded with its model, or `model` checked against its
    weights hash unless `force`; the originals are preprocessed as the store records, JPEG
    draft included). The other options are `evaluate_model`'s.
    """
    chosen = select_device(device, allow_mps=True)
    reconstructor: Reconstructor
    if _is_store(reconstructed):
        if size is not None or resize is not None:
            raise ArgumentError(
                "size and resize do not apply to a token store: it records its "
                "preprocessing, which the originals get.",
                "size",
                "resize",
            )
        store = TokenStore(reconstructed, format="torch")
        loaded = model_for_store(store, model, force=force, device=device)
        reconstructor = StoreReconstructor(store, loaded)
        preprocess = Preprocess.from_dict(store.preprocessing)
    else:
        if model is not None:
            raise ArgumentError(
                "model applies to a token store; reconstructions in a folder.", "model"
            )
        reconstructor = FolderReconstructor(reconstructed)
        side = size if size is not None else folder_image_size(reconstructed)
        check_resize(resize, side, max_pixels, "the image size")
        preprocess = Preprocess(
            side, resize, background=background, max_pixels=max_pixels, jpeg_draft=jpeg_draft
        )
    return _evaluate(
        reference,
        preprocess,
        [reconstructor],
        weights=weights,
        skip_metrics=skip_metrics,
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        device=chosen,
        grid_images=grid_images,
        columns=columns,
    )
