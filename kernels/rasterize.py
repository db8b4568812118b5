"""`rasterize`: the differentiable Taichi rasterizer behind the decoder.

Checks its arguments and runs hand-written Taichi forward and backward kernels
(`kernels._raster_taichi`) through a `torch.autograd.Function`; the forward kernel also
packs the Gaussians into the one tensor the backward needs. Same numbers as
`kernels.reference.rasterize`, whose docstring states the conventions.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kernels import runtime
from kernels._launch import (
    MAX_INDEX,
    check_alike,
    check_arch_dtype,
    check_sizes,
    check_types,
    taichi_stream,
    to_host,
)
from kernels._raster_taichi import PARAMS, KernelKey, kernels_for
from kernels.reference import normalized
from kernels.runtime import has_float64

__all__ = ["rasterize"]


def rasterize(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    height: int,
    width: int,
    opacities: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Render B images of G Gaussians each onto a C-channel map as a plain weighted sum
    (`normalize`: divided at each pixel by the sum of the weights + `NORMALIZE_EPS`,
    rendered as one more all-ones feature channel; see `kernels.reference`).

    means: [B, G, 2] centres (x, y) in [-1, 1] (the map spans [-1, 1] on both axes);
    scales: [B, G, 2] standard deviations along the Gaussian's own axes, in map pixels;
    rotations: [B, G] radians; features: [B, G, C]; opacities: [B, G] or None (all 1);
    height, width: map size in pixels.
    Returns [B, C, height, width] in the inputs' dtype (float32 or float64, all alike),
    differentiable in every tensor argument. The arch is `kernels.runtime`'s: by default
    CPU tensors run on Taichi's cpu arch and CUDA tensors on its cuda arch, without copies,
    ordered with torch's current CUDA stream; on vulkan or metal (float32 only) the tensors
    go through host memory. A device that the arch Taichi runs on in this process cannot
    take, or a CUDA device other than cuda:0, raises `kernels.ArchError`.
    """
    _check(means, scales, rotations, features, height, width, opacities)
    arch = runtime.start(features.device)  # refuses cuda:N (N > 0) before Taichi starts
    check_arch_dtype(arch, features.dtype)
    if normalize:
        features = torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)
    device = features.device
    if device.type == "mps":
        means, scales, rotations, features, opacities = to_host(
            (means, scales, rotations, features, opacities)
        )
    out = _RasterizeFunction.apply(means, scales, rotations, features, opacities, height, width)
    out = out.to(device)
    return normalized(out) if normalize else out


class _RasterizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, rotations, features, opacities, height, width):
        n_b, n_g, n_c = features.shape
        params = features.new_empty((n_b, n_g, PARAMS + n_c))
        out = features.new_empty((n_b, n_c, height, width))
        if n_b * n_g == 0:
            out.zero_()
        else:
            kernels = kernels_for(KernelKey(n_c, features.dtype, opacities is not None))
            # Detached: Taichi reads `.grad` of tensors that require grad, which warns for
            # non-leaf tensors (the model's scales and means are computed).
            inputs = [t.detach().contiguous() for t in (means, scales, rotations, features)]
            inputs.append(inputs[2] if opacities is None else opacities.detach().contiguous())
            with runtime.kernel_lock, taichi_stream(features.device):
                if runtime.started_arch() == "cpu":
                    scratch = features.new_empty((n_b, height, width, n_c))
                    kernels.forward_scatter(*inputs, params, scratch, out)
                else:  # a GPU arch: one thread per pixel
                    kernels.forward_gather(*inputs, params, out)
        ctx.save_for_backward(params)
        ctx.has_opacities = opacities is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (params,) = ctx.saved_tensors
        n_b, n_g, n_k = params.shape
        if n_b * n_g == 0:
            grads = torch.zeros_like(params)
        else:
            grads = torch.empty_like(params)
            scratch = params.new_empty((n_b, *grad_out.shape[2:], n_k - PARAMS))
            kernels = kernels_for(KernelKey(n_k - PARAMS, params.dtype, ctx.has_opacities))
            arch = runtime.started_arch()
            backward = kernels.backward if has_float64(arch) else kernels.backward_narrow
            with runtime.kernel_lock, taichi_stream(params.device):
                backward(params, grad_out.contiguous(), scratch, grads)
        need = ctx.needs_input_grad
        return (
            grads[..., 0:2] if need[0] else None,
            grads[..., 2:4] if need[1] else None,
            grads[..., 4] if need[2] else None,
            grads[..., PARAMS:] if need[3] else None,
            grads[..., 5] if ctx.has_opacities and need[4] else None,
            None,
            None,
        )


def _check(means, scales, rotations, features, height, width, opacities) -> None:
    tensors = {"means": means, "scales": scales, "rotations": rotations, "features": features}
    if opacities is not None:
        tensors["opacities"] = opacities
    check_types(tensors)
    shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in tensors.items())
    if features.dim() != 3:
        raise ValueError(f"features must be [B, G, C]; got {shapes}.")
    n_b, n_g, n_c = features.shape
    expected = {"means": (n_b, n_g, 2), "scales": (n_b, n_g, 2), "rotations": (n_b, n_g)}
    if opacities is not None:
        expected["opacities"] = (n_b, n_g)
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"Shapes do not agree: expected means [B, G, 2], scales [B, G, 2], "
                f"rotations [B, G], features [B, G, C] and opacities [B, G] or None; "
                f"got {shapes}."
            )
    if n_c < 1:
        raise ValueError(f"features need at least one channel; got {shapes}.")
    check_sizes(height, width)
    if max(n_b * n_c * height * width, n_b * n_g * (PARAMS + n_c)) > MAX_INDEX:
        raise ValueError(
            f"The map [{n_b}, {n_c}, {height}, {width}] or the {n_b} x {n_g} Gaussians exceed "
            f"2^31 elements; rasterize fewer images per call."
        )
    check_alike(tensors)
