"""Is CUDA's driver library there under the name Taichi loads it by?

Taichi 1.7 opens the CUDA driver as the unversioned `libcuda.so`, which comes with the
driver's development files; containers often mount only `libcuda.so.1` (all torch needs).
Taichi then quietly starts on the CPU while torch uses the GPU. `libcuda_problem` names
this case and the fix: a `libcuda.so` symlink in a folder on `LD_LIBRARY_PATH`.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["libcuda_problem", "unlinked_driver"]


def libcuda_problem(
    load: Callable[[str], object] = ctypes.CDLL, maps: Path = Path("/proc/self/maps")
) -> str | None:
    """One sentence with the fix when `libcuda.so` cannot be loaded but `libcuda.so.1` can;
    None when Taichi finds the driver, or when there is no CUDA driver at all (not Linux:
    None). load: the library loader; maps: where the loaded library's file is looked up."""
    target = unlinked_driver(load, maps)
    if target is None:
        return None
    return (
        f"Taichi loads the CUDA driver as libcuda.so, but only libcuda.so.1 is installed "
        f"here ({target}), so Taichi falls back to the CPU; create the link with "
        f"`mkdir -p ~/.local/lib/cuda && ln -sf {target} ~/.local/lib/cuda/libcuda.so` and "
        f'start gtok with `export LD_LIBRARY_PATH="$HOME/.local/lib/cuda:$LD_LIBRARY_PATH"` '
        "(set before the process starts)."
    )


def unlinked_driver(
    load: Callable[[str], object] = ctypes.CDLL, maps: Path = Path("/proc/self/maps")
) -> str | None:
    """The file of the CUDA driver library when `libcuda.so` cannot be loaded but
    `libcuda.so.1` can (a `libcuda.so` link to it is the fix); else None (not Linux: None).
    Needs only the standard library (tools/gpu_bundle.py loads this file on its own)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        load("libcuda.so")
        return None
    except OSError:
        pass
    try:
        load("libcuda.so.1")
    except OSError:
        return None  # no NVIDIA driver: not this problem
    return _mapped_file(maps) or "/usr/lib/x86_64-linux-gnu/libcuda.so.1"


def _mapped_file(maps: Path) -> str | None:
    """The file of the loaded CUDA driver library, from the process's memory map."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith("libcuda.so"):
            return path
    return None
