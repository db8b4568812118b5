"""`rasterize`: the differentiable Taichi rasterizer behind the decoder.

Checks its arguments and runs hand-written Taichi forward and backward kernels
(`gtok.kernels._raster_taichi`) as two `torch.library` custom ops, `gtok::rasterize_forward` and
`gtok::rasterize_backward`, joined by `register_autograd`; each has a fake (meta)
implementation, so `torch.compile(fullgraph=True)` and `torch.export` trace them as opaque
ops. The forward kernel also packs the Gaussians into the one tensor the backward needs.
Same numbers as `gtok.kernels.reference.rasterize`, whose docstring states the conventions, and
`implementation="reference"` runs that instead (what ONNX export needs).
"""

from __future__ import annotations

import torch

from gtok.kernels import reference, runtime
from gtok.kernels._launch import (
    MAX_INDEX,
    check_alike,
    check_arch_dtype,
    check_implementation,
    check_sizes,
    check_types,
    kernel_dtype,
    taichi_stream,
    to_host,
)
from gtok.kernels._raster_taichi import PARAMS, KernelKey, kernels_for
from gtok.kernels.reference import normalized
from gtok.kernels.runtime import has_float64

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
    implementation: str = "taichi",
) -> torch.Tensor:
    """Render B images of G Gaussians each onto a C-channel map as a plain weighted sum
    (`normalize`: divided at each pixel by the sum of the weights + `NORMALIZE_EPS`,
    rendered as one more all-ones feature channel; see `gtok.kernels.reference`).

    means: [B, G, 2] centres (x, y) in [-1, 1] (the map spans [-1, 1] on both axes);
    scales: [B, G, 2] standard deviations along the Gaussian's own axes, in map pixels;
    rotations: [B, G] radians; features: [B, G, C]; opacities: [B, G] or None (all 1);
    height, width: map size in pixels.
    Returns [B, C, height, width] in the inputs' dtype (all alike: float32 or float64;
    float16 and bfloat16 are computed in float32), differentiable in every tensor argument.
    implementation: "taichi" (the kernels) or "reference" (`gtok.kernels.reference.rasterize`,
    plain PyTorch on any device). The arch is `gtok.kernels.runtime`'s: by default
    CPU tensors run on Taichi's cpu arch and CUDA tensors on its cuda arch, without copies,
    ordered with torch's current CUDA stream; on vulkan or metal (float32 only) the tensors
    go through host memory. A device that the arch Taichi runs on in this process cannot
    take, or a CUDA device other than cuda:0, raises `kernels.ArchError`.
    """
    check_implementation(implementation)
    _check(means, scales, rotations, features, height, width, opacities)
    if implementation == "reference":
        return reference.rasterize(
            means, scales, rotations, features, height, width, opacities, normalize
        )
    dtype, device = features.dtype, features.device
    if not torch.compiler.is_compiling():  # the op's own check comes too late for meta tensors
        runtime.resolve_arch(device)
    if normalize:
        features = torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)
    tensors: tuple[torch.Tensor | None, ...] = (means, scales, rotations, features, opacities)
    if device.type == "mps":
        tensors = to_host(tensors)
    compute = kernel_dtype(dtype)
    tensors = tuple(None if t is None else t.to(compute) for t in tensors)
    out, _ = torch.ops.gtok.rasterize_forward(*tensors, height, width)
    out = out.to(device, dtype)
    return normalized(out) if normalize else out


@torch.library.custom_op("gtok::rasterize_forward", mutates_args=())
def _forward(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    opacities: torch.Tensor | None,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (map [B, C, height, width], packed Gaussians [B, G, PARAMS + C] for the backward)."""
    arch = runtime.start(features.device)  # refuses cuda:N (N > 0) before Taichi starts
    check_arch_dtype(arch, features.dtype)
    n_b, n_g, n_c = features.shape
    params = features.new_empty((n_b, n_g, PARAMS + n_c))
    out = features.new_empty((n_b, n_c, height, width))
    if n_b * n_g == 0:
        return out.zero_(), params
    kernels = kernels_for(KernelKey(n_c, features.dtype, opacities is not None))
    # Detached: Taichi reads `.grad` of tensors that require grad, which warns for non-leaf
    # tensors (the model's scales and means are computed).
    inputs = [t.detach().contiguous() for t in (means, scales, rotations, features)]
    inputs.append(inputs[2] if opacities is None else opacities.detach().contiguous())
    with runtime.kernel_lock, taichi_stream(features.device):
        if arch == "cpu":
            scratch = features.new_empty((n_b, height, width, n_c))
            kernels.forward_scatter(*inputs, params, scratch, out)
        else:  # a GPU arch: one thread per pixel
            kernels.forward_gather(*inputs, params, out)
    return out, params


@_forward.register_fake
def _forward_fake(means, scales, rotations, features, opacities, height, width):
    n_b, n_g, n_c = features.shape
    return features.new_empty((n_b, n_c, height, width)), features.new_empty(
        (n_b, n_g, PARAMS + n_c)
    )


@torch.library.custom_op("gtok::rasterize_backward", mutates_args=())
def _backward(params: torch.Tensor, grad_out: torch.Tensor, has_opacities: bool) -> torch.Tensor:
    """Packed Gaussians [B, G, PARAMS + C] and d loss / d map [B, C, H, W] -> the gradient
    of every packed parameter [B, G, PARAMS + C]."""
    n_b, n_g, n_k = params.shape
    if n_b * n_g == 0:
        return torch.zeros_like(params)
    params = params.detach()  # an output of the forward op: it requires grad (see `_forward`)
    grads = torch.empty_like(params)
    scratch = params.new_empty((n_b, *grad_out.shape[2:], n_k - PARAMS))
    kernels = kernels_for(KernelKey(n_k - PARAMS, params.dtype, has_opacities))
    arch = runtime.started_arch()
    assert arch is not None  # the forward started Taichi
    backward = kernels.backward if has_float64(arch) else kernels.backward_narrow
    with runtime.kernel_lock, taichi_stream(params.device):
        backward(params, grad_out.detach().contiguous(), scratch, grads)
    return grads


@_backward.register_fake
def _backward_fake(params, grad_out, has_opacities):
    return torch.empty_like(params)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.has_opacities = inputs[4] is not None


def _autograd_backward(ctx, grad_out, _grad_params):
    (params,) = ctx.saved_tensors
    grads = torch.ops.gtok.rasterize_backward(params, grad_out, ctx.has_opacities)
    opacity_grad = grads[..., 5] if ctx.has_opacities else None
    return (
        grads[..., 0:2],
        grads[..., 2:4],
        grads[..., 4],
        grads[..., PARAMS:],
        opacity_grad,
        None,
        None,
    )


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


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
