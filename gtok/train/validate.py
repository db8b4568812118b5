"""Validation metrics and sample grids of the EMA tokenizer during training.

PSNR and SSIM per image on uint8 images (`gtok.metrics`), LPIPS-VGG when its weights were
found; means over the first `val_images` validation images, split over ranks and summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gtok.data.shards import ShardRef
from gtok.metrics import psnr, ssim, to_uint8
from gtok.train.data import SkipRecord, to_model_input, val_batches
from gtok.train.distributed import Dist
from gtok.viz import comparison_rows, save_image_grid

__all__ = ["evaluate", "first_images", "save_samples"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
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
    for pixels, skips in val_batches(shards, image_size, batch_size, limit, dist.rank, dist.world):
        skipped += skips
        if pixels is None:
            continue
        images = to_model_input(pixels, dist.device)
        recon = model(images).reconstruction.float()
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
    return metrics, skipped


def first_images(shards: Sequence[ShardRef], image_size: int, count: int) -> torch.Tensor | None:
    """The first `count` usable images of the shards, resized + centre-cropped, as uint8
    [n, S, S, 3] (n <= count), or None when there is none."""
    for pixels, _ in val_batches(shards, image_size, count, count):
        if pixels is not None:
            return pixels
    return None


@torch.no_grad()
def save_samples(model: nn.Module, pixels: torch.Tensor, device: torch.device, path) -> None:
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
    save_image_grid(path, rows)
