"""Which weight-backed metrics can run here, and loading them without failing the rest.

`gtok eval` reports every metric it can: PSNR, SSIM and the codebook and geometry
statistics need no weights; LPIPS and FID need local weight files (never downloaded). A
metric whose files are missing, unreadable or of another layout is reported as unavailable
with the reason (which file, and where to put it), and the others still run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gtok.errors import GtokError
from gtok.metrics._state import read_state_dict
from gtok.metrics.inception import FIDInceptionV3
from gtok.metrics.lpips import LPIPS
from gtok.weights import find_weights, missing_message

__all__ = [
    "METRIC_WEIGHTS",
    "Loaded",
    "Unavailable",
    "metric_availability",
    "sha256_file",
    "try_load",
]

# metric name -> the gtok.weights keys of the files it needs
METRIC_WEIGHTS: dict[str, tuple[str, ...]] = {
    "lpips-vgg": ("vgg16", "lpips-vgg"),
    "lpips-alex": ("alexnet", "lpips-alex"),
    "fid": ("inception",),
}

WeightPaths = Mapping[str, str | os.PathLike | None]


@dataclass(frozen=True)
class Loaded:
    """A metric network ready to use, with the files its weights came from."""

    metric: str
    model: nn.Module  # LPIPS for "lpips-*", FIDInceptionV3 for "fid"
    files: dict[str, Path] = field(default_factory=dict)  # weight key -> file


@dataclass(frozen=True)
class Unavailable:
    """A metric that cannot run here, and why (one sentence saying what to do)."""

    metric: str
    reason: str


def _check_name(metric: str) -> tuple[str, ...]:
    if metric not in METRIC_WEIGHTS:
        raise ValueError(
            f"unknown metric {metric!r}; metrics with weights: {sorted(METRIC_WEIGHTS)}"
        )
    return METRIC_WEIGHTS[metric]


def _locate(metric: str, paths: WeightPaths | None) -> dict[str, Path]:
    """Files of `metric`; GtokError listing every missing one."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for key in _check_name(metric):
        try:
            path = find_weights(key, (paths or {}).get(key))
        except GtokError as err:  # an explicit path that points at nothing
            problems.append(str(err))
            continue
        if path is None:
            problems.append(missing_message(key))
        else:
            found[key] = path
    if problems:
        raise GtokError(" ".join(problems))
    return found


def metric_availability(paths: WeightPaths | None = None) -> dict[str, str | None]:
    """For each weight-backed metric, None when its files are found, else the reason.

    paths: explicit files by weight key ("vgg16", "lpips-vgg", "alexnet", "lpips-alex",
    "inception"); others are looked up as `gtok.weights.find_weights` does. Only checks that
    the files exist (cheap); `try_load` also reads and checks them.
    """
    result: dict[str, str | None] = {}
    for metric in METRIC_WEIGHTS:
        try:
            _locate(metric, paths)
            result[metric] = None
        except GtokError as err:
            result[metric] = str(err)
    return result


def try_load(
    metric: str, *, paths: WeightPaths | None = None, device: str | torch.device = "cpu"
) -> Loaded | Unavailable:
    """Load metric "lpips-vgg", "lpips-alex" or "fid", or say why it cannot run.

    Missing, unreadable and wrongly laid out files give `Unavailable` (never an exception);
    an unknown metric name is a ValueError.
    """
    try:
        files = _locate(metric, paths)
        model: nn.Module
        if metric == "fid":
            model = FIDInceptionV3()
            model.load_weights(read_state_dict(files["inception"]), source=str(files["inception"]))
        else:
            backbone_key, head_key = METRIC_WEIGHTS[metric]
            model = LPIPS("vgg" if metric == "lpips-vgg" else "alex")
            model.load_weights(
                read_state_dict(files[backbone_key]),
                read_state_dict(files[head_key]),
                backbone_source=str(files[backbone_key]),
                head_source=str(files[head_key]),
            )
    except GtokError as err:
        return Unavailable(metric, str(err))
    return Loaded(metric, model.to(device), files)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (for recording which weights a result used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
