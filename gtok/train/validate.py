"""Validation metrics and sample grids of the EMA tokenizer during training.

PSNR and SSIM per image on uint8 images (`gtok.metrics`), LPIPS-VGG when its weights were
found; means over the first `val_images` validation images, split over ranks and summed.
GaussianToken models also log their geometry (`gtok.metrics.geometry.training_summary`:
rotation spread, anisotropy, centre movement across images, coverage), computed on each
rank's validation images and averaged over ranks weighted by their image counts; the
sample grid's caption shows the same numbers for its images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gtok.data.shards import ShardRef
from gtok.metrics import psnr, ssim, to_uint8
from gtok.metrics.geometry import GEOMETRY_KEYS, geometry_stats, summary_caption, training_summary
from gtok.model.tokenizer import BaseTokenizer
from gtok.train.data import SkipRecord, to_model_input, val_batches
from gtok.train.distributed import Dist
from gtok.viz import comparison_rows, save_image_grid

__all__ = ["evaluate", "first_images", "save_samples"]


@torch.no_grad()
def evaluate(
    model: BaseTokenizer,
    shards: Sequence[ShardRef],
    image_size: int,
    batch_size: int,
    limit: int,
    dist: Dist,
    lpips: nn.Module | None = None,
) -> tuple[dict[str, float], list[SkipRecord]]:
    """Mean per-image PSNR (dB), SSIM and LPIPS (when given) of `model` (in eval mode) on
    the validation images, and this rank's skipped samples. Collective under DDP."""
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # images, psnr, ssim, lpips
    skipped: list[SkipRecord] = []
    geometry: list[torch.Tensor] = []
    for pixels, skips in val_batches(shards, image_size, batch_size, limit, dist.rank, dist.world):
        skipped += skips
        if pixels is None:
            continue
        images = to_model_input(pixels, dist.device)
        out = model(images)
        recon = out.reconstruction.float()
        if out.gaussians is not None:
            geometry.append(_geometry(out.gaussians).cpu())
        target = pixels.to(dist.device).permute(0, 3, 1, 2)  # uint8 [b, 3, S, S]
        result = to_uint8(recon)
        sums[0] += images.shape[0]
        sums[1] += float(psnr(target, result).sum())
        sums[2] += float(ssim(target, result).sum())
        if lpips is not None:
            sums[3] += float(lpips(recon.clamp(-1, 1), images).sum())
    model.train(was_training)
    count, total_psnr, total_ssim, total_lpips = dist.sum(sums)
    if count == 0:
        return {}, skipped
    metrics = {"psnr": total_psnr / count, "ssim": total_ssim / count, "images": int(count)}
    if lpips is not None:
        metrics["lpips"] = total_lpips / count
    if getattr(model.config, "kind", None) == "gaussian":
        metrics.update(_geometry_over_ranks(geometry, model.config.map_size, dist))
    return metrics, skipped


def _geometry(gaussians) -> torch.Tensor:
    """Gaussians -> token geometry [B, G, 5] (mean_x, mean_y, scale_x, scale_y, rotation)."""
    parts = [gaussians.means, gaussians.scales, gaussians.rotations[..., None]]
    return torch.cat(parts, dim=-1).float()


def _summary(geometry: torch.Tensor, map_size: int) -> dict[str, float]:
    return training_summary(geometry_stats(geometry), map_size)


def _geometry_over_ranks(
    geometry: list[torch.Tensor], map_size: int, dist: Dist
) -> dict[str, float]:
    """`training_summary` of this rank's geometry, averaged over ranks by image count.
    Collective under DDP (every rank calls it, with or without images)."""
    mine = torch.cat(geometry) if geometry else None
    local = _summary(mine, map_size) if mine is not None and mine.isfinite().all() else {}
    keys = GEOMETRY_KEYS
    weight = float(mine.shape[0]) if mine is not None and local else 0.0
    totals = dist.sum([weight, *(weight * local.get(k, 0.0) for k in keys)])
    if totals[0] == 0:
        return {}
    return {k: t / totals[0] for k, t in zip(keys, totals[1:], strict=True)}


def first_images(shards: Sequence[ShardRef], image_size: int, count: int) -> torch.Tensor | None:
    """The first `count` usable images of the shards, resized + centre-cropped, as uint8
    [n, S, S, 3] (n <= count), or None when there is none."""
    for pixels, _ in val_batches(shards, image_size, count, count):
        if pixels is not None:
            return pixels
    return None


@torch.no_grad()
def save_samples(model: BaseTokenizer, pixels: torch.Tensor, device: torch.device, path) -> None:
    """Reconstruct uint8 [n, S, S, 3] images with `model` (eval mode) and save the grid of
    originals | reconstructions | Gaussians (2-sigma ellipses coloured by code) at `path`."""
    was_training = model.training
    model.eval()
    images = to_model_input(pixels, device)
    out = model(images)
    model.train(was_training)
    gaussians, codes, map_size = None, None, None
    if out.gaussians is not None:
        g = out.gaussians
        gaussians, codes = (g.means, g.scales, g.rotations), out.indices
        map_size = (model.config.map_size, model.config.map_size)
    rows = comparison_rows(images, out.reconstruction.float(), gaussians, codes, map_size)
    caption = None
    if out.gaussians is not None:
        caption = summary_caption(_summary(_geometry(out.gaussians).cpu(), model.config.map_size))
    save_image_grid(path, rows, caption=caption)
