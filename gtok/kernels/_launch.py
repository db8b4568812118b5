"""What every Taichi op of `kernels` shares around a launch: the argument checks common to
all ops (tensor types, one float dtype, one device, int32 indexing, float64 only where the
arch has it), the `implementation` switch, half-precision inputs computed in float32, MPS
tensors' trip through host memory, and the ordering of Taichi's launches with torch's CUDA
stream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch

from gtok.kernels.runtime import ArchError, has_float64

__all__ = [
    "DTYPES",
    "IMPLEMENTATIONS",
    "KERNEL_DTYPES",
    "MAX_INDEX",
    "check_alike",
    "check_arch_dtype",
    "check_implementation",
    "check_sizes",
    "check_types",
    "kernel_dtype",
    "taichi_stream",
    "to_host",
]

KERNEL_DTYPES = (torch.float32, torch.float64)  # what the Taichi kernels compute in
DTYPES = (*KERNEL_DTYPES, torch.float16, torch.bfloat16)  # what the ops take and return
IMPLEMENTATIONS = ("taichi", "reference")  # the Taichi kernels, or gtok.kernels.reference
MAX_INDEX = 2**31 - 1  # Taichi indexes ndarrays with int32


def check_types(tensors: dict[str, object]) -> None:
    """`TypeError` naming the first argument that is not a tensor."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")


def check_sizes(height: object, width: object) -> None:
    """`ValueError` unless both map sizes are positive ints."""
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}.")


def check_implementation(implementation: object) -> None:
    """`ValueError` unless `implementation` is one of `IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
        )


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Taichi kernel computes in for tensors of `dtype`: float16 and bfloat16
    are computed in float32 (and the result cast back), float32 and float64 as they are."""
    return dtype if dtype in KERNEL_DTYPES else torch.float32


def check_alike(tensors: dict[str, torch.Tensor]) -> None:
    """`ValueError` unless every tensor has one float dtype of `DTYPES`, on one device."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1 or next(iter(dtypes.values())) not in DTYPES:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise ValueError(
            "All tensors must have one float dtype (float32, float64, float16 or bfloat16); "
            f"got {listed}."
        )
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"All tensors must be on one device; got {listed}.")


def check_arch_dtype(arch: str, dtype: torch.dtype) -> None:
    """`ArchError` for float64 tensors on an arch without float64 math (vulkan, metal)."""
    if dtype == torch.float64 and not has_float64(arch):
        raise ArchError(
            f"Taichi's {arch} arch has no float64 math; pass float32 tensors, or choose "
            "--kernel-arch cpu or cuda for float64."
        )


_MaybeTensor = TypeVar("_MaybeTensor", torch.Tensor, torch.Tensor | None)


def to_host(tensors: tuple[_MaybeTensor, ...]) -> tuple[_MaybeTensor, ...]:
    """The tensors on the CPU, unchanged when they are there already (None stays None): MPS
    tensors go to Taichi's metal arch through host memory, as autograd-tracked copies whose
    gradients flow back to the MPS originals."""
    return tuple(None if t is None else t.cpu() for t in tensors)


@contextlib.contextmanager
def taichi_stream(device: torch.device) -> Iterator[None]:
    """Order Taichi's kernels, which it launches on CUDA's legacy default stream, with
    torch's work on the current stream of `device`: the default stream waits for the
    current one before the launches in the block, the current one for the default after.
    Nothing to do on the CPU or when torch's current stream is the default one."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    default = torch.cuda.default_stream(device)
    if current == default:
        yield
        return
    default.wait_stream(current)
    yield
    current.wait_stream(default)
