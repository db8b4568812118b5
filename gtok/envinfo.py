"""What `gtok env` reports: versions, hardware, the Taichi arches that start, weight files.

Paste its output into a bug report: it answers the first questions a maintainer asks.
"""

from __future__ import annotations

import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

import torch

from gtok._version import __version__
from gtok.errors import GtokError
from gtok.weights import KNOWN_WEIGHTS, find_weights

__all__ = ["collect"]

_PACKAGES = ("torch", "taichi", "zarr", "webdataset", "numpy", "pillow", "safetensors", "typer")


def collect() -> dict[str, Any]:
    """Everything `gtok env` prints, as a JSON-serializable dict."""
    return {
        "gtok": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "torch_devices": _torch_devices(),
        "taichi": _taichi(),
        "weights": {key: _weight(key) for key in KNOWN_WEIGHTS},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    return devices


def _taichi() -> dict[str, Any]:
    from gtok.kernels import runtime, selfcheck
    from gtok.kernels.libcuda import libcuda_problem
    from gtok.kernels.selfcheck import probe

    report: dict[str, Any] = {
        "cache_dir": str(runtime.cache_dir()),
        "libcuda_problem": libcuda_problem(),  # None: libcuda.so loads, or no NVIDIA driver
        "requested_arch": _requested_arch(runtime),
        "arches": _probe_all(probe, runtime.ARCHES),
    }
    try:
        report["arch"] = runtime.start("auto")
    except Exception as exc:  # reported, not raised: `gtok env` must run on a broken install
        report["arch"] = None
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["kernels"] = "not checked: Taichi did not start"
        return report
    try:  # compiles the rasterizer on that arch and compares it with the reference
        report["kernels"] = selfcheck(report["arch"])
    except Exception as exc:  # reported, not raised, as above
        report["kernels"] = f"error: {type(exc).__name__}: {exc}"
    return report


def _probe_all(probe, arches: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`probe(arch)` of every arch, each in a subprocess of its own (Taichi runs one arch per
    process), side by side."""
    with ThreadPoolExecutor(len(arches)) as pool:
        return dict(zip(arches, pool.map(probe, arches), strict=True))


def _requested_arch(runtime) -> str:
    """`--kernel-arch` / GTOK_KERNEL_ARCH, or why it is not a known arch."""
    try:
        return runtime.requested_arch()
    except runtime.ArchError as exc:
        return f"error: {exc}"


def _weight(key: str) -> dict[str, Any]:
    weight = KNOWN_WEIGHTS[key]
    try:
        path = find_weights(key)
    except GtokError as exc:
        return {"file": weight.filename, "found": None, "error": str(exc)}
    return {"file": weight.filename, "found": str(path) if path else None}
