"""Taichi kernels of multi-head deformable attention sampling: forward and hand-written backward.

One generic source builds float32 and float64 kernels for any head width, point count and
number of fixed points; `kernels_for` compiles them lazily and caches them per `DeformKey`.
The mathematics is that of `gtok.kernels.reference.deform_attn` (see its docstring): per query q
and head m, softmax over the F + P logits, then the weighted sum of bilinear samples (zero
padding, `grid_sample(align_corners=False)`) of head m's value map at the F fixed and P
learned sampling points. All heads and points of a query are sampled in one task, straight
from the [B, H*W, M, Dh] value layout (no per-head copies of the map).

Variants of the backward:
- `backward_serial` (cpu arch): one task per image, its queries in order; the value
  gradient is accumulated without atomics, deterministic. It cannot run on SPIR-V arches:
  there Taichi dispatches a loop of run-time length as 131,072 threads, so its one thread
  per group (`block_dim=1`, as `forward_scatter`'s) makes 131,072 workgroups, beyond
  Vulkan's guaranteed maxComputeWorkGroupCount of 65,535 (Mesa's lavapipe has no more):
  the launch fails with `RhiResult(not_supported)`.
- `backward_atomic` (GPU arches: cuda, vulkan, metal): one thread per query; the value
  gradient is accumulated with float atomic adds (their order, hence the last bits, may
  vary between runs). It also runs on the CPU, where the tests check it.
All of it is float32 math for float32 inputs, so it compiles for SPIR-V as it is.
"""

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

__all__ = ["DeformKernels", "DeformKey", "kernels_for"]

# (dx, dy) of the four bilinear corners, in this order everywhere
_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


@dataclass(frozen=True)
class DeformKey:
    """What a compiled kernel set depends on: head width Dh, learned points P, fixed points
    F (0 or more, placed first) and the floating dtype."""

    head_dim: int
    points: int
    fixed: int
    dtype: torch.dtype


class DeformKernels(NamedTuple):
    """Compiled kernels for one `DeformKey`; arguments are contiguous torch tensors.

    forward(value [B, H*W, M, Dh], reference [B, Nq, 2], offsets [B, Nq, M, P, 2],
    fixed [max(F, 1), 2], logits [B, Nq, M, F + P], height, width, weights [B, Nq, M, F + P],
    out [B, Nq, M, Dh]) writes the softmax of the logits to `weights` and the result to `out`.
    backward_serial(value, reference, offsets, fixed, weights, grad_out [B, Nq, M, Dh],
    height, width, grad_value [B, H*W, M, Dh], grad_reference [B, Nq, 2],
    grad_offsets [B, Nq, M, P, 2], grad_logits [B, Nq, M, F + P]) writes every gradient.
    backward_atomic(...): the same arguments; `grad_value` must be zero on entry.
    """

    forward: Any
    backward_serial: Any
    backward_atomic: Any


@functools.cache
def kernels_for(key: DeformKey) -> DeformKernels:
    """Build (once per key) the kernels; Taichi compiles each on its first launch."""
    if key.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Taichi kernels are built for float32 or float64, not {key.dtype}.")
    if key.head_dim < 1 or key.points < 0 or key.fixed < 0 or key.points + key.fixed < 1:
        raise ValueError(f"Invalid deformable attention kernel key {key}.")
    return _build(key.head_dim, key.points, key.fixed, key.dtype == torch.float64)


def _build(head_dim: int, points: int, fixed: int, double: bool) -> DeformKernels:
    import taichi as ti

    real = ti.f64 if double else ti.f32
    total = fixed + points
    heads_t = ti.types.ndarray(dtype=ti.types.vector(head_dim, real), ndim=3)  # [B, N, M]
    pairs_t = ti.types.ndarray(dtype=ti.types.vector(2, real), ndim=2)  # [B, Nq]
    offsets_t = ti.types.ndarray(dtype=ti.types.vector(2, real), ndim=4)  # [B, Nq, M, P]
    fixed_t = ti.types.ndarray(dtype=ti.types.vector(2, real), ndim=1)  # [F]
    per_point_t = ti.types.ndarray(dtype=ti.types.vector(total, real), ndim=3)  # [B, Nq, M]

    @ti.func
    def pixel(
        reference: ti.template(),
        offsets: ti.template(),
        fixed_offsets: ti.template(),
        b,
        q,
        m,
        k: ti.template(),
        height,
        width,
    ):
        """Continuous pixel coordinates (px, py) of point k of head m of query (b, q):
        location = reference + offset / (W, H) in [0, 1] of the map's extent, and
        px = location_x W - 0.5 (pixel centres at integers), computed in grid_sample's steps
        so that it rounds alike."""
        off = ti.Vector.zero(real, 2)
        if ti.static(k < fixed):  # resolved at compile time: never reads offsets[.., < 0]
            off = fixed_offsets[k]
        if ti.static(k >= fixed):
            off = offsets[b, q, m, k - fixed]
        ref = reference[b, q]
        size = ti.Vector([ti.cast(width, real), ti.cast(height, real)])
        grid = 2 * (ref + off / size) - 1  # grid_sample's [-1, 1], rounded as the reference
        return (grid + 1) * (size / 2) - 0.5

    @ti.func
    def on_map(p, height, width):
        """True when any bilinear corner of p can lie on the map (False for NaN)."""
        return (
            p[0] >= -1
            and p[0] <= ti.cast(width, real)
            and p[1] >= -1
            and p[1] <= ti.cast(height, real)
        )

    @ti.func
    def corner(p, c: ti.template(), height, width):
        """Corner c of p's bilinear cell: (flat index or -1 when off the map, weight,
        d weight / d px, d weight / d py)."""
        x0 = ti.floor(p[0])
        y0 = ti.floor(p[1])
        fx = p[0] - x0
        fy = p[1] - y0
        x = ti.cast(x0, ti.i32) + _CORNERS[c][0]
        y = ti.cast(y0, ti.i32) + _CORNERS[c][1]
        wx = fx if ti.static(_CORNERS[c][0]) else 1 - fx
        wy = fy if ti.static(_CORNERS[c][1]) else 1 - fy
        sx = real(1.0) if ti.static(_CORNERS[c][0]) else real(-1.0)
        sy = real(1.0) if ti.static(_CORNERS[c][1]) else real(-1.0)
        index = -1
        if 0 <= x < width and 0 <= y < height:
            index = y * width + x
        return index, wx * wy, sx * wy, wx * sy

    @ti.func
    def softmax(logits):
        e = ti.exp(logits - logits.max())
        return e * (1 / e.sum())  # as torch's CPU softmax rounds

    @ti.kernel
    def forward(
        value: heads_t,
        reference: pairs_t,
        offsets: offsets_t,
        fixed_offsets: fixed_t,
        logits: per_point_t,
        height: ti.i32,
        width: ti.i32,
        weights: per_point_t,
        out: heads_t,
    ):
        n_b, n_q, n_m = out.shape[0], out.shape[1], out.shape[2]
        for b, q, m in ti.ndrange(n_b, n_q, n_m):
            a = softmax(logits[b, q, m])
            weights[b, q, m] = a
            acc = ti.Vector.zero(real, head_dim)
            for k in ti.static(range(total)):
                p = pixel(reference, offsets, fixed_offsets, b, q, m, k, height, width)
                sample = ti.Vector.zero(real, head_dim)
                if on_map(p, height, width):
                    for c in ti.static(range(4)):
                        index, w, _, _ = corner(p, c, height, width)
                        if index >= 0:
                            sample += w * value[b, index, m]
                acc += a[k] * sample
            out[b, q, m] = acc

    @ti.func
    def query_backward(
        value: ti.template(),
        reference: ti.template(),
        offsets: ti.template(),
        fixed_offsets: ti.template(),
        weights: ti.template(),
        grad_out: ti.template(),
        height,
        width,
        grad_value: ti.template(),
        grad_reference: ti.template(),
        grad_offsets: ti.template(),
        grad_logits: ti.template(),
        b,
        q,
        atomic: ti.template(),
    ):
        """Gradients of query (b, q), every head and point.

        With a = softmax(logits), s_k the bilinear sample of point k and g = dL/dout:
        dL/da_k = g . s_k; dL/dlogit_k = a_k (dL/da_k - sum_j a_j dL/da_j);
        dL/dvalue[corner] += a_k w_corner g; dL/dpx_k = a_k sum_corners (dw/dpx) g . v,
        likewise py. px = (ref_x + off_x / W) W - 0.5, so dL/doff_x = dL/dpx and
        dL/dref_x = W dL/dpx summed over heads and points (likewise y with H)."""
        n_m = weights.shape[2]
        w_f = ti.cast(width, real)
        h_f = ti.cast(height, real)
        grad_ref = ti.Vector.zero(real, 2)
        for m in range(n_m):
            g = grad_out[b, q, m]
            a = weights[b, q, m]
            grad_a = ti.Vector.zero(real, total)
            for k in ti.static(range(total)):
                p = pixel(reference, offsets, fixed_offsets, b, q, m, k, height, width)
                grad_p = ti.Vector.zero(real, 2)
                if on_map(p, height, width):
                    for c in ti.static(range(4)):
                        index, w, dw_dx, dw_dy = corner(p, c, height, width)
                        if index >= 0:
                            v = value[b, index, m]
                            gv = g.dot(v)
                            grad_a[k] += w * gv
                            grad_p += a[k] * gv * ti.Vector([dw_dx, dw_dy])
                            if ti.static(atomic):
                                grad_value[b, index, m] += (a[k] * w) * g
                            else:
                                grad_value[b, index, m] = grad_value[b, index, m] + (a[k] * w) * g
                if ti.static(k >= fixed):
                    grad_offsets[b, q, m, k - fixed] = grad_p
                grad_ref += ti.Vector([grad_p[0] * w_f, grad_p[1] * h_f])
            grad_logits[b, q, m] = a * (grad_a - a.dot(grad_a))
        grad_reference[b, q] = grad_ref

    @ti.kernel
    def backward_serial(
        value: heads_t,
        reference: pairs_t,
        offsets: offsets_t,
        fixed_offsets: fixed_t,
        weights: per_point_t,
        grad_out: heads_t,
        height: ti.i32,
        width: ti.i32,
        grad_value: heads_t,
        grad_reference: pairs_t,
        grad_offsets: offsets_t,
        grad_logits: per_point_t,
    ):
        n_b, n_q, n_m = weights.shape[0], weights.shape[1], weights.shape[2]
        ti.loop_config(block_dim=1)  # one image per task, handed out dynamically
        for b in range(n_b):
            for i in range(height * width):
                for m in range(n_m):
                    grad_value[b, i, m] = ti.Vector.zero(real, head_dim)
            for q in range(n_q):
                query_backward(
                    value, reference, offsets, fixed_offsets, weights, grad_out, height, width,
                    grad_value, grad_reference, grad_offsets, grad_logits, b, q, False,
                )  # fmt: skip

    @ti.kernel
    def backward_atomic(
        value: heads_t,
        reference: pairs_t,
        offsets: offsets_t,
        fixed_offsets: fixed_t,
        weights: per_point_t,
        grad_out: heads_t,
        height: ti.i32,
        width: ti.i32,
        grad_value: heads_t,
        grad_reference: pairs_t,
        grad_offsets: offsets_t,
        grad_logits: per_point_t,
    ):
        n_b, n_q = weights.shape[0], weights.shape[1]
        for b, q in ti.ndrange(n_b, n_q):
            query_backward(
                value, reference, offsets, fixed_offsets, weights, grad_out, height, width,
                grad_value, grad_reference, grad_offsets, grad_logits, b, q, True,
            )  # fmt: skip

    return DeformKernels(forward, backward_serial, backward_atomic)
