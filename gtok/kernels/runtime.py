"""Start Taichi once, on the arch chosen for the process and the torch tensors it is given.

The arch is `GTOK_KERNEL_ARCH` (or `request_arch`, which the CLI's `--kernel-arch` calls):
`auto` (the default) runs CUDA tensors on Taichi's cuda arch, CPU tensors on its cpu arch
and MPS tensors on metal; `cpu`, `cuda`, `vulkan` or `metal` names the arch outright.
vulkan and metal take CPU tensors (and metal MPS tensors, copied to the CPU first) and
stage them through host memory: each launch copies every tensor argument into device
buffers and back (`bench/raster.py --arch vulkan` measures the cost). Their kernels use
float32 math only (SPIR-V backends have no float64), so float64 tensors need cpu or cuda.

Taichi is started lazily (importing `kernels` compiles nothing), with
`TI_SKIP_VERSION_CHECK=on` (no network call), no banner on stdout (stdout is for results),
and an offline kernel cache so a second process reuses compiled kernels. Taichi silently
falls back to the CPU when the arch asked for cannot start (CUDA without `libcuda.so`:
`gtok.kernels.libcuda`; no Vulkan driver; Metal off macOS); `start` checks the arch it really
got and names what is missing. Taichi's CUDA context is on the first visible device.
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

from gtok.kernels.libcuda import libcuda_problem

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")  # no network call at import
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")  # no banner on stdout
os.environ.setdefault("TI_ENABLE_PYBUF", "0")  # no per-launch print-buffer flush

__all__ = [
    "ARCHES",
    "ArchError",
    "cache_dir",
    "has_float64",
    "kernel_lock",
    "request_arch",
    "requested_arch",
    "resolve_arch",
    "start",
    "started_arch",
    "tensor_device",
]

ARCHES = ("cpu", "cuda", "vulkan", "metal")  # Taichi arches gtok's kernels run on
ARCH_ENV = "GTOK_KERNEL_ARCH"
_FLOAT64_ARCHES = frozenset({"cpu", "cuda"})  # SPIR-V backends (vulkan, metal) have no float64
_MISSING = {
    "vulkan": "no Vulkan driver or device was found (install the GPU's Vulkan driver, or "
    "Mesa's software one: apt-get install mesa-vulkan-drivers libvulkan1)",
    "metal": "Metal needs macOS on an Apple GPU",
}

kernel_lock = threading.RLock()
_start_lock = threading.Lock()
_started: str | None = None
_requested: str | None = None  # set by `request_arch`; None: `$GTOK_KERNEL_ARCH`, else auto


class ArchError(RuntimeError):
    """Taichi cannot run where the tensors are (wrong device, or the arch did not start)."""


def request_arch(arch: str | None) -> None:
    """Choose Taichi's arch for this process ("auto", "cpu", "cuda", "vulkan", "metal"),
    over `$GTOK_KERNEL_ARCH`; None goes back to the environment variable. Takes effect
    when Taichi starts (the first kernel call)."""
    global _requested
    if arch is not None and arch not in ("auto", *ARCHES):
        raise ArchError(_unknown(arch))
    _requested = arch


def requested_arch() -> str:
    """The arch asked for: `request_arch`'s, else `$GTOK_KERNEL_ARCH`, else "auto"."""
    arch = _requested or os.environ.get(ARCH_ENV, "").strip().lower() or "auto"
    if arch not in ("auto", *ARCHES):
        raise ArchError(_unknown(arch))
    return arch


def _unknown(arch: str) -> str:
    return f"Unknown kernel arch {arch!r} ({ARCH_ENV}); choose auto, {', '.join(ARCHES)}."


def has_float64(arch: str) -> bool:
    """Whether Taichi's `arch` computes in float64 (cpu, cuda; not vulkan or metal)."""
    return arch in _FLOAT64_ARCHES


def tensor_device(arch: str) -> str:
    """The torch device of the tensors that `arch` takes without a copy on the torch side:
    "cuda" for cuda, else "cpu" (vulkan and metal stage CPU tensors through host memory)."""
    return "cuda" if arch == "cuda" else "cpu"


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
    """The Taichi arch ("cpu", "cuda", "vulkan" or "metal") that takes tensors on `device`
    (a torch device, or "auto": whatever the request and this machine give) under
    `requested_arch()`; an `ArchError` (before Taichi starts) when it cannot: CUDA tensors
    run on cuda only, and on the first visible CUDA device only; CPU tensors on cpu,
    vulkan or metal; MPS tensors on metal."""
    request = requested_arch()
    if str(device) == "auto":
        if request != "auto":
            return request
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type not in ("cpu", "cuda", "mps"):
        raise ArchError(f"Taichi kernels run on cpu, cuda or mps tensors, not on {device.type}.")
    if device.type == "cuda" and device.index not in (None, 0):
        raise ArchError(
            f"Taichi runs on the first visible CUDA device, but the tensors are on {device}; "
            "list that GPU first in CUDA_VISIBLE_DEVICES and keep the tensors on cuda:0."
        )
    takes = {"cpu": ("cpu", "vulkan", "metal"), "cuda": ("cuda",), "mps": ("metal",)}
    arch = {"cpu": "cpu", "cuda": "cuda", "mps": "metal"}[device.type]
    if request != "auto" and request not in takes[device.type]:
        raise ArchError(
            f"The kernel arch {request} cannot take tensors on {device.type} (it takes "
            f"{_takes(request)}); choose --kernel-arch {arch} or auto, or move the model."
        )
    return arch if request == "auto" else request


def _takes(arch: str) -> str:
    return {"cpu": "cpu", "cuda": "cuda", "vulkan": "cpu", "metal": "cpu or mps"}[arch] + " tensors"


def started_arch() -> str | None:
    """The arch Taichi is running on (one of `ARCHES`), or None before `start`."""
    return _started


def start(device: str | torch.device = "auto") -> str:
    """Start Taichi for tensors on `device` (see `resolve_arch`) if it is not running yet,
    and return its arch. Taichi runs one arch per process: asking for another one later is
    an `ArchError`, as is an arch that Taichi quietly served on the CPU."""
    global _started
    want = resolve_arch(device)
    with _start_lock:
        if _started is None:
            _started = _init_taichi(want)
        if _started != want:
            raise ArchError(
                f"Taichi is running on {_started} in this process, so it cannot take the "
                f"{want} arch's tensors; keep every tensor given to the kernels on one device."
            )
        return _started


def _init_taichi(want: str) -> str:
    import taichi as ti

    folder = _usable_cache_dir()
    with contextlib.redirect_stdout(io.StringIO()):  # drop "[Taichi] Starting on arch=..."
        ti.init(
            arch=getattr(ti, want),
            offline_cache=True,
            offline_cache_file_path=str(folder),
            log_level=ti.ERROR,
        )
    # Taichi writes its offline cache when the program is finalized, which it does not
    # reliably do at interpreter exit on its own: finalize explicitly.
    atexit.register(ti.reset)
    got = ti.lang.impl.current_cfg().arch
    name = "cpu" if got in (ti.x64, ti.arm64) else got.name
    if name != want:
        raise ArchError(_start_failure(want, name))
    return name


def _start_failure(want: str, got: str) -> str:
    """One sentence: why Taichi started on `got` when asked for `want`."""
    if want == "cuda":
        return libcuda_problem() or (
            f"Taichi was asked to start on cuda but started on {got}; check the CUDA driver "
            "(`gtok env`) or use --device cpu."
        )
    return (
        f"Taichi was asked to start on {want} but started on {got}: {_MISSING[want]}; "
        "choose another --kernel-arch (`gtok env` lists those that start here)."
    )
