"""Image-reconstruction and tokenizer metrics: PSNR, SSIM, LPIPS, FID, codebook, geometry.

Each metric lives in its own module and states the reference it follows. Pixel metrics take
uint8 [B, C, H, W] images (what saved PNGs hold; `to_uint8` converts [-1, 1] model output
the same way a PNG writer does) and return one value per image; LPIPS takes [-1, 1] floats
and is differentiable. Networks (LPIPS backbones, FID Inception) are written here without
torchvision and load the standard weight files from local paths (`gtok.weights`); use
`try_load` to get either the network or the reason it is unavailable.
"""

from gtok.metrics.available import (
    METRIC_WEIGHTS,
    Loaded,
    Unavailable,
    metric_availability,
    sha256_file,
    try_load,
)
from gtok.metrics.codebook import CodebookStats, code_counts, codebook_stats
from gtok.metrics.fid import FeatureStats, frechet_distance, load_stats, save_stats
from gtok.metrics.geometry import Distribution, GeometryStats, geometry_stats
from gtok.metrics.images import to_uint8
from gtok.metrics.inception import FEATURE_DIM, FIDInceptionV3, load_inception
from gtok.metrics.lpips import LPIPS, load_lpips
from gtok.metrics.psnr import psnr
from gtok.metrics.ssim import ssim

__all__ = [
    "FEATURE_DIM",
    "LPIPS",
    "METRIC_WEIGHTS",
    "CodebookStats",
    "Distribution",
    "FIDInceptionV3",
    "FeatureStats",
    "GeometryStats",
    "Loaded",
    "Unavailable",
    "code_counts",
    "codebook_stats",
    "frechet_distance",
    "geometry_stats",
    "load_inception",
    "load_lpips",
    "load_stats",
    "metric_availability",
    "psnr",
    "save_stats",
    "sha256_file",
    "ssim",
    "to_uint8",
    "try_load",
]
