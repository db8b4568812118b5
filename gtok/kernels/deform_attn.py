"""`deform_attn`: multi-head deformable attention sampling as Taichi kernels.

Checks its arguments and runs hand-written Taichi forward and backward kernels
(`gtok.kernels._deform_taichi`) as two `torch.library` custom ops, `gtok::deform_attn_forward`
and `gtok::deform_attn_backward`, joined by `register_autograd`, with fake (meta)
implementations so that `torch.compile(fullgraph=True)` and `torch.export` trace them as
opaque ops. Same numbers as `gtok.kernels.reference.deform_attn`, whose docstring states the
conventions, and `implementation="reference"` runs that instead.
"""

from __future__ import annotations

import torch

from gtok.kernels import runtime
from gtok.kernels._deform_taichi import DeformKey, kernels_for
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
from gtok.kernels.reference import deform_attn as reference_deform_attn

__all__ = ["deform_attn"]


def deform_attn(
    value: torch.Tensor,
    height: int,
    width: int,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    logits: torch.Tensor,
    fixed_offsets: torch.Tensor | None = None,
    implementation: str = "taichi",
) -> torch.Tensor:
    """Softmax-weighted sum of bilinear samples of each head's value map, every query.

    value: [B, height * width, M, Dh] M heads of Dh channels, the map row-major;
    reference: [B, Nq, 2] (x, y) in [0, 1] of the map's extent;
    offsets: [B, Nq, M, P, 2] learned sampling offsets (dx, dy) in map pixels;
    logits: [B, Nq, M, F + P] attention logits, the F fixed points first;
    fixed_offsets: [F, 2] offsets in map pixels shared by every query and head, treated as
    constants (no gradient), or None (F = 0).
    Returns [B, Nq, M, Dh] in the inputs' dtype (all alike: float32 or float64; float16
    and bfloat16 are computed in float32), differentiable in value, reference, offsets and
    logits. implementation: "taichi" (the kernels) or "reference"
    (`gtok.kernels.reference.deform_attn`, which also differentiates `fixed_offsets`). Tensors
    on the CPU run on Taichi's cpu arch, CUDA tensors on its cuda arch, unless
    `gtok.kernels.runtime` chose another arch (see `gtok.kernels.rasterize` for the device rules).
    """
    check_implementation(implementation)
    fixed = _check(value, height, width, reference, offsets, logits, fixed_offsets)
    if implementation == "reference":
        return reference_deform_attn(
            value, height, width, reference, offsets, logits, fixed_offsets
        )
    dtype, device = value.dtype, value.device
    if not torch.compiler.is_compiling():  # the op's own check comes too late for meta tensors
        runtime.resolve_arch(device)
    tensors: tuple[torch.Tensor, ...] = (value, reference, offsets, logits, fixed)
    if device.type == "mps":
        tensors = to_host(tensors)
    compute = kernel_dtype(dtype)
    tensors = tuple(t.to(compute) for t in tensors)
    out, _ = torch.ops.gtok.deform_attn_forward(*tensors, height, width)
    return out.to(device, dtype)


@torch.library.custom_op("gtok::deform_attn_forward", mutates_args=())
def _forward(
    value: torch.Tensor,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    logits: torch.Tensor,
    fixed: torch.Tensor,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out [B, Nq, M, Dh], softmax weights [B, Nq, M, F + P] for the backward)."""
    check_arch_dtype(runtime.start(value.device), value.dtype)
    n_b, _, n_m, n_d = value.shape
    n_q, n_p = offsets.shape[1], offsets.shape[3]
    key = DeformKey(n_d, n_p, logits.shape[-1] - n_p, value.dtype)
    # Detached: Taichi reads `.grad` of tensors that require grad, which warns for
    # non-leaf tensors.
    inputs = [t.detach().contiguous() for t in (value, reference, offsets, fixed, logits)]
    weights = torch.empty_like(inputs[4])
    out = value.new_empty((n_b, n_q, n_m, n_d))
    if out.numel():
        with runtime.kernel_lock, taichi_stream(value.device):
            kernels_for(key).forward(*inputs, height, width, weights, out)
    return out, weights


@_forward.register_fake
def _forward_fake(value, reference, offsets, logits, fixed, height, width):
    n_b, _, n_m, n_d = value.shape
    return value.new_empty((n_b, offsets.shape[1], n_m, n_d)), torch.empty_like(logits)


@torch.library.custom_op("gtok::deform_attn_backward", mutates_args=())
def _backward(
    value: torch.Tensor,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    fixed: torch.Tensor,
    weights: torch.Tensor,
    grad_out: torch.Tensor,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward's inputs and weights, d loss / d out [B, Nq, M, Dh] -> the gradients of
    value, reference, offsets and logits."""
    value, reference, offsets, fixed, weights, grad_out = (
        t.detach().contiguous() for t in (value, reference, offsets, fixed, weights, grad_out)
    )
    if not grad_out.numel():
        zeros = [torch.zeros_like(t) for t in (value, reference, offsets, weights)]
        return zeros[0], zeros[1], zeros[2], zeros[3]
    # Every gradient is written in full, but the atomic kernel adds to grad_value.
    serial = runtime.started_arch() == "cpu"
    grads = [torch.empty_like(t) for t in (reference, offsets, weights)]
    grads.insert(0, torch.empty_like(value) if serial else torch.zeros_like(value))
    n_p = offsets.shape[3]
    kernels = kernels_for(DeformKey(value.shape[3], n_p, weights.shape[-1] - n_p, value.dtype))
    backward = kernels.backward_serial if serial else kernels.backward_atomic
    with runtime.kernel_lock, taichi_stream(value.device):
        backward(value, reference, offsets, fixed, weights, grad_out, height, width, *grads)
    return grads[0], grads[1], grads[2], grads[3]


@_backward.register_fake
def _backward_fake(value, reference, offsets, fixed, weights, grad_out, height, width):
    return tuple(torch.empty_like(t) for t in (value, reference, offsets, weights))


def _setup_context(ctx, inputs, output) -> None:
    value, reference, offsets, _logits, fixed, height, width = inputs
    ctx.save_for_backward(value, reference, offsets, fixed, output[1])
    ctx.shape = (height, width)


def _autograd_backward(ctx, grad_out, _grad_weights):
    grads = torch.ops.gtok.deform_attn_backward(*ctx.saved_tensors, grad_out, *ctx.shape)
    return (*grads, None, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _check(value, height, width, reference, offsets, logits, fixed_offsets) -> torch.Tensor:
    """Validate the arguments; returns the fixed offsets as a [max(F, 1), 2] tensor."""
    tensors = {"value": value, "reference": reference, "offsets": offsets, "logits": logits}
    if fixed_offsets is not None:
        tensors["fixed_offsets"] = fixed_offsets
    check_types(tensors)
    check_sizes(height, width)
    shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in tensors.items())
    n_fixed = 0 if fixed_offsets is None else fixed_offsets.shape[0]
    if value.dim() != 4 or offsets.dim() != 5:
        raise ValueError(f"value must be [B, H*W, M, Dh] and offsets [B, Nq, M, P, 2]; {shapes}.")
    n_b, n_q, n_m, n_p, _ = offsets.shape
    expected = {
        "value": (n_b, height * width, n_m, value.shape[3]),
        "reference": (n_b, n_q, 2),
        "offsets": (n_b, n_q, n_m, n_p, 2),
        "logits": (n_b, n_q, n_m, n_fixed + n_p),
        "fixed_offsets": (n_fixed, 2),
    }
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"Shapes do not agree for a {height} x {width} map: expected value "
                f"[B, H*W, M, Dh], reference [B, Nq, 2], offsets [B, Nq, M, P, 2], logits "
                f"[B, Nq, M, F + P] and fixed_offsets [F, 2] or None; got {shapes}."
            )
    if value.shape[3] < 1 or n_fixed + n_p < 1:
        raise ValueError(f"Need at least one channel and one sampling point; got {shapes}.")
    if max(value.numel(), offsets.numel(), logits.numel()) > MAX_INDEX:
        raise ValueError(f"Tensors exceed 2^31 elements ({shapes}); pass fewer images per call.")
    check_alike(tensors)
    if n_fixed == 0:
        return value.new_zeros((1, 2))  # a placeholder the kernels never read
    return fixed_offsets.detach()
