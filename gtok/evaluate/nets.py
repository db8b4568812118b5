"""The metric networks an evaluation uses (LPIPS-VGG, LPIPS-Alex, FID Inception), or why not.

Each is loaded with `gtok.metrics.try_load`: from an explicit path (the `--*-weights` flags),
its environment variable, `$GTOK_WEIGHTS` or the torch hub cache. A network whose files are
missing or malformed is recorded as unavailable with the reason (the file name and where to
put it) and the evaluation goes on without it. The sha256 of every file used is recorded, so
a result says exactly which weights produced it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from gtok.errors import GtokError
from gtok.metrics import LPIPS, METRIC_WEIGHTS, FIDInceptionV3, Loaded, sha256_file, try_load
from gtok.weights import KNOWN_WEIGHTS, find_weights

__all__ = ["LPIPS_MIN_SIZE", "METRIC_NAMES", "MetricNets", "load_metric_nets", "unavailable_notes"]

# result key -> gtok.metrics.try_load name
METRIC_NAMES: dict[str, str] = {"lpips_vgg": "lpips-vgg", "lpips_alex": "lpips-alex", "rfid": "fid"}
LPIPS_MIN_SIZE = {"lpips_vgg": 16, "lpips_alex": 31}  # smallest image side each backbone takes
SKIPPED = "skipped on request"  # the reason of a metric given to --skip: no note, no file needed


@dataclass
class MetricNets:
    """Loaded networks by result key, the reasons of the others, and the files used."""

    lpips: dict[str, LPIPS] = field(default_factory=dict)  # "lpips_vgg", "lpips_alex"
    inception: FIDInceptionV3 | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # result key -> reason
    weights: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    # result key -> weight key -> {"file": path, "sha256": hex}


def load_metric_nets(
    paths: Mapping[str, str | os.PathLike | None] | None = None,
    *,
    skip: Iterable[str] = (),
    device: str | torch.device = "cpu",
) -> MetricNets:
    """Load every weight-backed metric that can run here.

    paths: explicit files by weight key ("vgg16", "lpips-vgg", "alexnet", "lpips-alex",
        "inception"); the rest are looked up (`gtok.weights`).
    skip: result keys ("lpips_vgg", "lpips_alex", "rfid") not to compute.
    """
    skip = set(skip)
    if unknown := skip - set(METRIC_NAMES):
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {sorted(METRIC_NAMES)}")
    nets = MetricNets()
    for key, name in METRIC_NAMES.items():
        if key in skip:
            nets.unavailable[key] = SKIPPED
            continue
        result = try_load(name, paths=paths, device=device)
        if not isinstance(result, Loaded):
            nets.unavailable[key] = result.reason
            continue
        nets.weights[key] = {
            weight: {"file": str(path), "sha256": sha256_file(path)}
            for weight, path in result.files.items()
        }
        if key == "rfid":
            assert isinstance(result.model, FIDInceptionV3)
            nets.inception = result.model
        else:
            assert isinstance(result.model, LPIPS)
            nets.lpips[key] = result.model
    return nets


def _missing_files(key: str, paths: Mapping[str, str | os.PathLike | None]) -> list[str]:
    """The weight keys of result `key` whose file is not found (as `try_load` looks)."""
    missing = []
    for weight in METRIC_WEIGHTS.get(METRIC_NAMES.get(key, ""), ()):
        try:
            found = find_weights(weight, paths.get(weight))
        except GtokError:  # an explicit path that points at nothing
            found = None
        if found is None:
            missing.append(weight)
    return missing


def unavailable_notes(
    unavailable: Mapping[str, str], paths: Mapping[str, str | os.PathLike | None] | None = None
) -> list[str]:
    """One short line per missing weight file (naming the file and its variable), else per
    unavailable result with its reason, and nothing for a metric skipped on request: what
    `gtok eval` prints on stderr."""
    notes = []
    for key, reason in unavailable.items():
        if reason == SKIPPED:
            continue
        if missing := _missing_files(key, paths or {}):
            notes += [
                f"{key} unavailable: no {KNOWN_WEIGHTS[w].filename} "
                f"(set {KNOWN_WEIGHTS[w].env}; see `gtok env`)"
                for w in missing
            ]
        else:
            notes.append(f"{key} unavailable: {reason}")
    return notes
