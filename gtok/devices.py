"""Which device a gtok process computes on: the one place that picks (and orders) the GPU.

Taichi always runs on the first visible CUDA device (its context takes device 0, with no
setting to choose another), so a process that is to use GPU k must see GPU k first.
`select_device` reorders `CUDA_VISIBLE_DEVICES` so the chosen GPU comes first and the others
follow in their original order (they stay visible: hiding them disables NCCL's CUDA IPC
between the processes of one machine), and returns `cuda:0`, where torch, the model and the
rasterizer all compute. The GPU is `--device cuda:N` when given, else the process's
`LOCAL_RANK` (torchrun), else the first one. CUDA reads `CUDA_VISIBLE_DEVICES` once, when
it starts, so this must run before anything touches `torch.cuda`: `gtok train`, `encode`,
`decode` and `eval` call it first thing.

Encode, decode and eval also take `mps` (`allow_mps`): the model on Apple's MPS and the
Taichi kernels on Metal, their tensors staged through host memory (`gtok.kernels.runtime`).
Written and tested with MPS mocked; it has not run on a Mac.

`exact_fp32` turns TF32 off while tokens and scores are computed (encode, decode, eval), so
fp32 results on a GPU do not depend on the GPU's TF32 units.

`mixed_precision` is the one autocast context of train, encode and decode: "bf16" runs on
the CPU too (torch's CPU autocast), so the mixed-precision path is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from gtok.errors import ArgumentError, GtokError

__all__ = [
    "INFERENCE_PRECISIONS",
    "check_inference_precision",
    "exact_fp32",
    "mixed_precision",
    "select_device",
    "tf32_settings",
]

INFERENCE_PRECISIONS = ("fp32", "bf16")  # what encode and decode accept
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_VISIBLE = "CUDA_VISIBLE_DEVICES"
_original: list[str] | None = None  # the visible GPUs before this process reordered them
_placed: str | None = None  # the GPU this process moved to the front (its cuda:0)


def select_device(
    requested: str | torch.device = "auto", *, allow_mps: bool = False
) -> torch.device:
    """The torch device for `requested` ("auto", "cpu", "cuda", "cuda:N", or "mps" where
    `allow_mps`): the CPU, MPS, or `cuda:0` after moving the chosen GPU to the front of
    `CUDA_VISIBLE_DEVICES` (see the module doc). N counts the GPUs visible when the process
    started. "auto" is the CPU when CUDA is not available. Asking for a second GPU in one
    process is a `GtokError`, as is a GPU that is not there or cannot be put first because
    CUDA already started, or MPS where it is not available."""
    text = str(requested)
    if text == "auto":
        kind, index = "auto", None
    else:
        try:
            device = torch.device(text)
        except RuntimeError as exc:
            raise GtokError(f"Unknown device {text!r}; use auto, cpu, cuda or cuda:N.") from exc
        if device.type not in ("cpu", "cuda", "mps"):
            raise ArgumentError(
                f"gtok runs on cpu or cuda, not {device.type}; use device='cpu'.", "device"
            )
        kind, index = device.type, device.index
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        return _mps(allow_mps)
    if index is None:
        index = _local_rank()
    if not _place(index, text, required=kind == "cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if kind == "auto":
            return torch.device("cpu")
        raise ArgumentError(
            f"Device {text} was asked for but CUDA is not available; use device='cpu'.", "device"
        )
    return torch.device("cuda", 0)


def _mps(allowed: bool) -> torch.device:
    """torch's MPS device, or a `GtokError` where it cannot be used."""
    if not allowed:
        raise ArgumentError(
            "device='mps' is for encode, decode and eval; use device='cpu' or device='cuda'.",
            "device",
        )
    if not torch.backends.mps.is_available():
        raise ArgumentError(
            "Device mps was asked for but MPS is not available (it needs macOS on Apple "
            "silicon); use device='cpu'.",
            "device",
        )
    return torch.device("mps")


def _local_rank() -> int:
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value)
    except ValueError as exc:
        raise GtokError(f"LOCAL_RANK must be an integer, got {value!r}.") from exc


def _place(index: int, text: str, *, required: bool) -> bool:
    """Make GPU `index` (of the originally visible ones) this process's first visible GPU.
    False when no GPU is visible at all (and `required` is false)."""
    global _original, _placed
    visible = _original if _original is not None else _visible_gpus(index)
    if not visible:
        if required:
            raise ArgumentError(
                f"Device {text} was asked for but no GPU is visible; use device='cpu'.", "device"
            )
        return False
    if index >= len(visible):
        shown = ",".join(visible)
        raise GtokError(
            f"Device {text} is GPU {index} (LOCAL_RANK or cuda:N), but only {len(visible)} "
            f"GPU(s) are visible ({shown}); run at most {len(visible)} processes per machine "
            "or choose another GPU."
        )
    entry = visible[index]
    if _placed is not None:
        if entry != _placed:
            raise GtokError(
                f"This process already computes on GPU {_placed} (its cuda:0), so it cannot "
                f"also use {text} (GPU {entry}); use one GPU per process."
            )
        return True
    if visible[0] != entry:
        if torch.cuda.is_initialized():
            raise GtokError(
                f"CUDA started before gtok chose the GPU, so {text} (GPU {entry}) cannot "
                f"become cuda:0; start the process with {_VISIBLE}={entry} listed first."
            )
        ordered = [entry, *(e for e in visible if e != entry)]
        os.environ[_VISIBLE] = ",".join(ordered)
    _original, _placed = visible, entry
    return True


def _visible_gpus(index: int) -> list[str]:
    """The GPUs this process may use, as `CUDA_VISIBLE_DEVICES` entries (ordinals, UUIDs or
    MIG ids), without starting CUDA: the variable's list when set, else 0..n-1 with n from
    NVML, or enough ordinals for `index` and the local world when NVML cannot tell."""
    listed = os.environ.get(_VISIBLE)
    if listed is not None:
        entries = [e.strip() for e in listed.split(",")]
        # CUDA stops at the first invalid entry (e.g. -1): GPUs after it are hidden.
        valid = []
        for entry in entries:
            if not entry or entry.startswith("-"):
                break
            valid.append(entry)
        return valid
    count = torch.cuda._device_count_nvml()  # -1 when NVML is unavailable; starts no CUDA
    if count < 0:
        count = max(index + 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return [str(i) for i in range(count)]


def tf32_settings() -> dict[str, bool]:
    """Whether TF32 may replace fp32 in cuDNN convolutions and in CUDA matrix products."""
    return {
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }


@contextlib.contextmanager
def exact_fp32() -> Iterator[dict[str, Any]]:
    """Compute fp32 convolutions and matrix products in full fp32 (TF32 off) inside the
    block, and restore torch's settings after it. Yields `tf32_settings()` as in force."""
    before = tf32_settings()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield tf32_settings()
    finally:
        torch.backends.cudnn.allow_tf32 = before["cudnn"]
        torch.backends.cuda.matmul.allow_tf32 = before["matmul"]


def mixed_precision(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` on `device`: none for "fp32", else
    `torch.autocast` to bf16 or fp16 on the device's type (cpu or cuda). The parts DESIGN
    pins to fp32 (GaussianEmbed, quantizer, rasterizer) switch it off themselves."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def check_inference_precision(precision: str) -> str:
    """`precision` if encode and decode support it, else a `GtokError`."""
    if precision not in INFERENCE_PRECISIONS:
        raise ArgumentError(
            f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}.",
            "precision",
        )
    return precision
