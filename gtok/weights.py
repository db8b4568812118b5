"""Pretrained weight files gtok can use but never downloads: where they are looked for.

Each file is found, in order, at an explicit path (a command-line flag), at the path in its
environment variable, in `$GTOK_WEIGHTS` (default `~/.cache/gtok/weights`), or in the torch
hub cache (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`), under its
standard file name. A missing file is a `GtokError` that names the file and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gtok.errors import GtokError

__all__ = [
    "KNOWN_WEIGHTS",
    "WeightFile",
    "find_weights",
    "missing_message",
    "require_weights",
    "search_dirs",
]


@dataclass(frozen=True)
class WeightFile:
    key: str  # short name used by gtok (`gtok env`, error messages)
    filename: str  # the standard file name, as its publisher distributes it
    env: str  # environment variable that may hold its path
    purpose: str


KNOWN_WEIGHTS: dict[str, WeightFile] = {
    w.key: w
    for w in (
        WeightFile(
            "vgg16",
            "vgg16-397923af.pth",
            "GTOK_VGG16_WEIGHTS",
            "VGG16 backbone (torchvision layout) for LPIPS-VGG",
        ),
        WeightFile(
            "lpips-vgg",
            "vgg.pth",
            "GTOK_LPIPS_WEIGHTS",
            "LPIPS v0.1 linear heads for VGG (from the lpips package)",
        ),
        WeightFile(
            "alexnet",
            "alexnet-owt-7be5be79.pth",
            "GTOK_ALEXNET_WEIGHTS",
            "AlexNet backbone (torchvision layout) for LPIPS-Alex",
        ),
        WeightFile(
            "lpips-alex",
            "alex.pth",
            "GTOK_LPIPS_ALEX_WEIGHTS",
            "LPIPS v0.1 linear heads for AlexNet (from the lpips package)",
        ),
        WeightFile(
            "inception",
            "pt_inception-2015-12-05-6726825d.pth",
            "GTOK_INCEPTION_WEIGHTS",
            "FID Inception-v3 (pytorch-fid) for rFID",
        ),
    )
}


def search_dirs() -> list[Path]:
    """Folders searched for weight files by their standard names, in order."""
    gtok_dir = os.environ.get("GTOK_WEIGHTS", "~/.cache/gtok/weights")
    torch_home = os.environ.get("TORCH_HOME", "~/.cache/torch")
    return [Path(gtok_dir).expanduser(), Path(torch_home).expanduser() / "hub" / "checkpoints"]


def find_weights(key: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """Path of weight file `key` (see `KNOWN_WEIGHTS`), or None when it is nowhere.

    An explicit path or environment variable that points at nothing is an error, not a
    reason to keep looking: the user asked for that file.
    """
    weight = KNOWN_WEIGHTS[key]
    for given, origin in ((explicit, "the given path"), (os.environ.get(weight.env), weight.env)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise GtokError(f"{weight.filename} was not found at {path} ({origin}).")
            return path
    for folder in search_dirs():
        if (folder / weight.filename).is_file():
            return folder / weight.filename
    return None


def require_weights(key: str, explicit: str | os.PathLike | None = None) -> Path:
    """Like `find_weights`, but a missing file is a `GtokError` saying where to put it."""
    path = find_weights(key, explicit)
    if path is None:
        raise GtokError(missing_message(key))
    return path


def missing_message(key: str) -> str:
    weight = KNOWN_WEIGHTS[key]
    dirs = " or ".join(str(d) for d in search_dirs())
    return (
        f"{weight.purpose} needs {weight.filename}: put it in {dirs}, "
        f"or set {weight.env} to its path."
    )
