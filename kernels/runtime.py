"""Start Taichi once, on the arch that matches the torch tensors it will be given.

Taichi is started lazily (importing `kernels` compiles nothing), with
`TI_SKIP_VERSION_CHECK=on` (no network call), no banner on stdout (stdout is for results),
and an offline kernel cache so a second process reuses compiled kernels. Taichi silently
falls back to the CPU when CUDA cannot start (e.g. without `libcuda.so`: `kernels.libcuda`);
`start` checks the arch it really got. Taichi's CUDA context is on the first visible device.
Taichi is not thread-safe: callers hold `kernel_lock` around every kernel launch.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

from kernels.libcuda import libcuda_problem

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")  # no network call at import
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")  # no banner on stdout
os.environ.setdefault("TI_ENABLE_PYBUF", "0")  # no per-launch print-buffer flush

__all__ = ["ArchError", "cache_dir", "kernel_lock", "resolve_arch", "start", "started_arch"]

kernel_lock = threading.RLock()
_start_lock = threading.Lock()
_started: str | None = None


class ArchError(RuntimeError):
    """Taichi cannot run where the tensors are (wrong device, or CUDA did not start)."""


def cache_dir() -> Path:
    """Directory of Taichi's offline kernel cache: `$GTOK_KERNEL_CACHE`, else
    `$XDG_CACHE_HOME/gtok/taichi` (default `~/.cache/gtok/taichi`)."""
    if env := os.environ.get("GTOK_KERNEL_CACHE"):
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "gtok" / "taichi"


def _usable_cache_dir() -> Path:
    """`cache_dir()` when a file can be created in it, else a temporary folder removed at exit,
    after one warning on stderr: Taichi writes its cache at exit, and crashes the interpreter
    there (segfault) when it cannot."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return folder
    except OSError as exc:
        reason = exc.strerror or str(exc)
    fallback = Path(tempfile.mkdtemp(prefix="gtok-taichi-"))
    atexit.register(shutil.rmtree, fallback, ignore_errors=True)  # runs after `ti.reset`
    print(
        f"warning: the Taichi kernel cache {folder} is not writable ({reason}); using "
        f"{fallback} for this run (set GTOK_KERNEL_CACHE to a writable folder).",
        file=sys.stderr,
    )
    return fallback


def resolve_arch(device: str | torch.device = "auto") -> str:
    """Map a torch device (or `"auto"`) to the Taichi arch name `"cpu"` or `"cuda"`.
    Taichi computes on the first visible CUDA device only, so any other CUDA device is an
    `ArchError` (before Taichi starts)."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ArchError(f"Taichi kernels run on cpu or cuda tensors, not on {device.type}.")
    if device.type == "cuda" and device.index not in (None, 0):
        raise ArchError(
            f"Taichi runs on the first visible CUDA device, but the tensors are on {device}; "
            "list that GPU first in CUDA_VISIBLE_DEVICES and keep the tensors on cuda:0."
        )
    return device.type


def started_arch() -> str | None:
    """The arch Taichi is running on (`"cpu"`/`"cuda"`), or None before `start`."""
    return _started


def start(device: str | torch.device = "auto") -> str:
    """Start Taichi for `device` (a torch device, `"cpu"`, `"cuda"` or `"auto"`) if it is not
    running yet, and return its arch. Taichi runs one arch per process: asking for another
    one later is an `ArchError`, as is a CUDA request that Taichi quietly served on the CPU."""
    global _started
    want = resolve_arch(device)
    with _start_lock:
        if _started is None:
            _started = _init_taichi(want)
        if _started != want:
            raise ArchError(
                f"Taichi is running on {_started} in this process, so it cannot take {want} "
                f"tensors; keep every tensor given to the rasterizer on {_started}."
            )
        return _started


def _init_taichi(want: str) -> str:
    import taichi as ti

    arch = ti.cuda if want == "cuda" else ti.cpu
    folder = _usable_cache_dir()
    with contextlib.redirect_stdout(io.StringIO()):  # drop "[Taichi] Starting on arch=..."
        ti.init(
            arch=arch,
            offline_cache=True,
            offline_cache_file_path=str(folder),
            log_level=ti.ERROR,
        )
    # Taichi writes its offline cache when the program is finalized, which it does not
    # reliably do at interpreter exit on its own: finalize explicitly.
    atexit.register(ti.reset)
    got = ti.lang.impl.current_cfg().arch
    name = "cuda" if got == ti.cuda else "cpu" if got in (ti.x64, ti.arm64) else str(got)
    if name != want:
        raise ArchError(
            libcuda_problem()
            or f"Taichi was asked to start on {want} but started on {name}; check the CUDA "
            f"driver (`gtok env`) or use --device cpu."
        )
    return name
