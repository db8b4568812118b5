"""Taichi kernels of the rasterizer: forward (two variants) and a hand-written backward.

One generic source builds float32 and float64 kernels for any channel count; `kernels_for`
compiles them lazily and caches them per `KernelKey`. The mathematics is that of
`gtok.kernels.reference.rasterize` (see its docstring). The kernels only skip pixel-Gaussian
pairs whose weight is provably below the 1/255 cut-off (the ellipse's bounds carry a
little slack, and every pixel inside them still goes through the exact weight test).
The CPU kernels walk each Gaussian's ellipse row by row and get exp(-sigma) along a row
by float64 products (see `row`): as accurate as the reference, in a different order.

Each tensor argument costs ~15 us of launch overhead on the CPU, and a torch op that
reorders memory runs on torch's thread pool (slow to wake on a busy machine), so the
kernels do their own packing and reordering: the forward reads the Gaussians as given and
also writes them packed as one `params` tensor [B, G, PARAMS + C], whose last axis holds
(mean_x, mean_y, scale_x, scale_y, rotation, opacity, feature_0 .. feature_C-1), for the
backward. Inside, maps are accumulated channels last ([B, H, W] of C-vectors, so a pixel's
channels are read and written together) and converted from/to [B, C, H, W] once.

Variants:
- `forward_scatter` (cpu arch): one task per image; each Gaussian is splatted over the
  pixels of its ellipse of weight >= 1/255, row by row. No atomics, deterministic. Its
  float64 bounds and one thread per group (see `gtok.kernels._deform_taichi`) rule out SPIR-V.
- `forward_gather` (GPU arches: cuda, vulkan, metal): one thread per pixel, looping over
  the image's Gaussians in order, in the kernel's dtype only; deterministic. It also runs
  (slowly) on the CPU, where the tests check it.
- `backward` (cpu, cuda): one task per Gaussian gathering the output gradient over its
  ellipse, walked in float64. No atomics, deterministic.
Taichi 1.7's SPIR-V code generator also fails on a local vector written at a loop index
("Value ... does not yet exist"): the kernels write such elements into ndarrays.
- `backward_narrow` (vulkan, metal: SPIR-V backends, which have no float64): the same tasks
  in the kernel's dtype only, each pixel's weight computed as `forward_gather` does (so
  both keep the same pixels), over float32 bounds with margins (`narrow_bounds`) that never
  clip a pixel of weight >= 1/255. It also runs on the CPU, where the tests check it.
"""

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from gtok.kernels.reference import MIN_SCALE_SQ, MIN_WEIGHT

__all__ = ["PARAMS", "KernelKey", "RasterKernels", "kernels_for"]

PARAMS = 6  # geometry entries before the features in the packed last axis
_MEAN_X, _MEAN_Y, _SCALE_X, _SCALE_Y, _ROTATION, _OPACITY = range(PARAMS)

# Bounds of the ellipse are computed in float64 with the squared scales clamped here (map
# pixels^2): beyond 1e30 a Gaussian is flat across any map, and the bounds stay finite.
_BOX_MAX_SQ = 1e30
# Slack added to the ellipse bounds so rounding never drops a pixel the weight test keeps:
# relative to the squared Mahalanobis radius, and absolute in map pixels.
_BOX_REL_SLACK = 1e-4
_BOX_ABS_SLACK = 1e-3
# Margins of the float32 bounds of `backward_narrow` (see `narrow_bounds`): the squared
# Mahalanobis radius is widened by _NARROW_REL_SLACK (relative and absolute), ~1e4 times
# float32's rounding of sigma, and the ellipse dilated by _NARROW_ABS_SLACK map pixels plus
# _NARROW_POS_SLACK times (height + width), over 100 times float32's rounding of a pixel's
# offset from the centre. Gaussians with a squared scale above _NARROW_FLAT_SQ (map
# pixels^2) are scanned over the whole map: their bounds would overflow float32.
_NARROW_REL_SLACK = 1e-3
_NARROW_ABS_SLACK = 1e-2
_NARROW_POS_SLACK = 1e-5
_NARROW_FLAT_SQ = 1e12


@dataclass(frozen=True)
class KernelKey:
    """What a compiled kernel set depends on: channel count C, floating dtype, and whether
    opacities are given (without them the kernels take no opacity tensor)."""

    channels: int
    dtype: torch.dtype
    opacities: bool


class RasterKernels(NamedTuple):
    """Compiled kernels for one `KernelKey`; arguments are contiguous torch tensors.

    forward_scatter(means [B, G, 2], scales [B, G, 2], rotations [B, G], features [B, G, C],
    opacities [B, G] (any [B, G] tensor when the key has none), params [B, G, PARAMS + C],
    scratch [B, H, W, C], out [B, C, H, W]) writes the map to `out` and the packed
    Gaussians to `params`; `scratch` is working memory.
    forward_gather(means, scales, rotations, features, opacities, params, out): the same,
    one thread per pixel, without scratch.
    backward(params, grad_out [B, C, H, W], scratch [B, H, W, C], grads [B, G, PARAMS + C])
    writes the gradient of the loss with respect to every packed parameter.
    backward_narrow(params, grad_out, scratch, grads): the same without float64, for the
    maps of `forward_gather`.
    """

    forward_scatter: Any
    forward_gather: Any
    backward: Any
    backward_narrow: Any


@functools.cache
def kernels_for(key: KernelKey) -> RasterKernels:
    """Build (once per key) the kernels; Taichi compiles each on its first launch."""
    if key.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Taichi kernels are built for float32 or float64, not {key.dtype}.")
    if key.channels < 1:
        raise ValueError(f"Feature channels must be at least 1, got {key.channels}.")
    return _build(key.channels, key.dtype == torch.float64, key.opacities)


def _build(channels: int, double: bool, has_opacities: bool) -> RasterKernels:
    import taichi as ti

    real = ti.f64 if double else ti.f32
    params_t = ti.types.ndarray(dtype=ti.types.vector(PARAMS + channels, real), ndim=2)
    pairs_t = ti.types.ndarray(dtype=ti.types.vector(2, real), ndim=2)
    per_gaussian_t = ti.types.ndarray(dtype=real, ndim=2)
    features_t = ti.types.ndarray(dtype=ti.types.vector(channels, real), ndim=2)
    pixels_t = ti.types.ndarray(dtype=ti.types.vector(channels, real), ndim=3)
    map_t = ti.types.ndarray(dtype=real, ndim=4)

    @ti.func
    def frame(pv, height, width):
        """(centre_x, centre_y, cos, sin, 1/sx^2, 1/sy^2, opacity) of the packed Gaussian
        pv, in the kernel's dtype."""
        cx = (pv[_MEAN_X] + 1) * 0.5 * ti.cast(width, real)
        cy = (pv[_MEAN_Y] + 1) * 0.5 * ti.cast(height, real)
        inv_x = 1 / ti.max(pv[_SCALE_X] * pv[_SCALE_X], real(MIN_SCALE_SQ))
        inv_y = 1 / ti.max(pv[_SCALE_Y] * pv[_SCALE_Y], real(MIN_SCALE_SQ))
        theta = pv[_ROTATION]
        return ti.Vector(
            [cx, cy, ti.cos(theta), ti.sin(theta), inv_x, inv_y, pv[_OPACITY]], dt=real
        )

    @ti.func
    def weight(fr, i, j):
        """(opacity * exp(-sigma), exp(-sigma), u, v) at pixel (row i, column j)."""
        dx = fr[0] - ti.cast(j, real)
        dy = fr[1] - ti.cast(i, real)
        u = fr[2] * dx - fr[3] * dy
        v = fr[3] * dx + fr[2] * dy
        sigma = 0.5 * (fr[4] * u * u + fr[5] * v * v)
        e = ti.exp(-sigma)
        return ti.Vector([fr[6] * e, e, u, v], dt=real)

    @ti.func
    def ellipse(pv, height, width):
        """The Gaussian in float64, as the row walks need it:
        (0 centre_x, 1 centre_y, 2 cos, 3 sin, 4 1/sx^2, 5 1/sy^2, 6 opacity,
        7 a = d2 sigma / d dx2, 8 exp(-a), 9 shift of the rows' peak column per row,
        10 Sigma_xx given the row, 11 peak column, 12 rem and 13 its step, on the first row,
        14 the step's step, 15 first row, 16 last row), where rem = r2 - dy^2 / Sigma_yy
        and r2 = 2 ln(255 o) (with slack) is the squared Mahalanobis radius of the weight
        1/255. The rows cover the ellipse where the weight can reach 1/255; the range is
        empty when none can (or an input is NaN).

        On row i (dy = cy - i), sigma as a function of the column j is the parabola
        0.5 dy^2 / Sigma_yy + 0.5 a (j - mid)^2, mid = cx - (Sigma_xy / Sigma_yy) dy, so the
        pixels with sigma <= r2 / 2 have |j - mid| <= sqrt(rem Sigma_xx|y). mid and rem
        are updated by additions from row to row: no division per row."""
        cx = (ti.cast(pv[_MEAN_X], ti.f64) + 1) * 0.5 * ti.cast(width, ti.f64)
        cy = (ti.cast(pv[_MEAN_Y], ti.f64) + 1) * 0.5 * ti.cast(height, ti.f64)
        sx = ti.cast(pv[_SCALE_X], ti.f64)
        sy = ti.cast(pv[_SCALE_Y], ti.f64)
        inv_x = 1 / ti.max(sx * sx, ti.f64(MIN_SCALE_SQ))
        inv_y = 1 / ti.max(sy * sy, ti.f64(MIN_SCALE_SQ))
        theta = ti.cast(pv[_ROTATION], ti.f64)
        c = ti.cos(theta)
        s = ti.sin(theta)
        a = c * c * inv_x + s * s * inv_y
        # The bounds use squared scales clamped to [MIN_SCALE_SQ, _BOX_MAX_SQ], so they stay
        # finite; covariance [[sxx, sxy], [sxy, syy]].
        sx2 = ti.min(ti.max(sx * sx, ti.f64(MIN_SCALE_SQ)), ti.f64(_BOX_MAX_SQ))
        sy2 = ti.min(ti.max(sy * sy, ti.f64(MIN_SCALE_SQ)), ti.f64(_BOX_MAX_SQ))
        sxy = c * s * (sy2 - sx2)
        syy = s * s * sx2 + c * c * sy2
        opacity = ti.cast(pv[_OPACITY], ti.f64)
        r2 = ti.f64(-1.0)
        if 255 * opacity > 0:
            r2 = 2 * ti.log(255 * opacity)
        r2 = r2 * (1 + ti.f64(_BOX_REL_SLACK)) + ti.f64(_BOX_REL_SLACK)
        first = 0
        last = -1
        if r2 >= 0:
            ey = ti.sqrt(r2 * syy) + ti.f64(_BOX_ABS_SLACK)
            if cy - ey <= height - 1 and cy + ey >= 0:  # false for NaN
                first = ti.cast(ti.ceil(ti.max(cy - ey, 0.0)), ti.i32)
                last = ti.cast(ti.floor(ti.min(cy + ey, ti.cast(height - 1, ti.f64))), ti.i32)
        dy = cy - ti.cast(first, ti.f64)
        shift = sxy / syy
        # Sigma_xx given the row, det / Sigma_yy, rounded to float32 on purpose: as a
        # loop-invariant float64 reciprocal, fast math would turn its product in the row
        # loop back into a division per row. Its ~1e-7 relative error is within the slack.
        sxx_row = ti.cast(ti.cast(sx2 * sy2 / syy, ti.f32), ti.f64)
        return ti.Vector(
            [
                cx,
                cy,
                c,
                s,
                inv_x,
                inv_y,
                opacity,
                a,
                ti.exp(-a),
                shift,
                sxx_row,
                cx - shift * dy,
                r2 - dy * dy / syy,
                (2 * dy - 1) / syy,
                -2 / syy,
                first,
                last,
            ],
            dt=ti.f64,
        )

    @ti.func
    def row(el, i, width, mid, rem):
        """How to walk row i, whose peak column is mid and rem = r2 - dy^2 / Sigma_yy:
        (0 first column, 1 last column, 2 exp(-sigma) at the first column, 3 its ratio to
        the next column's), float64; last < first when the row misses the ellipse.

        Along the row, exp(-sigma) is multiplied at each step by a ratio that itself
        shrinks by exp(-a): two products per pixel instead of an exp, in float64, where no
        value over- or underflows inside the ellipse and the error stays ~1e-14."""
        half = ti.sqrt(ti.max(rem, 0.0) * el[10]) + ti.f64(_BOX_ABS_SLACK)
        first = 0
        last = -1
        e = ti.f64(0.0)
        ratio = ti.f64(0.0)
        if mid - half <= width - 1 and mid + half >= 0:  # false for NaN
            first = ti.cast(ti.ceil(ti.max(mid - half, 0.0)), ti.i32)
            last = ti.cast(ti.floor(ti.min(mid + half, ti.cast(width - 1, ti.f64))), ti.i32)
            dx = el[0] - ti.cast(first, ti.f64)
            dy = el[1] - ti.cast(i, ti.f64)
            u = el[2] * dx - el[3] * dy
            v = el[3] * dx + el[2] * dy
            e = ti.exp(-0.5 * (el[4] * u * u + el[5] * v * v))
            # sigma(j + 1) - sigma(j) = a / 2 - (ix cos u + iy sin v), as dx drops by 1
            ratio = ti.exp(el[4] * el[2] * u + el[5] * el[3] * v - 0.5 * el[7])
        return ti.Vector([first, last, e, ratio], dt=ti.f64)

    @ti.func
    def splat(out: ti.template(), b, i, j, w, feat):
        if w >= real(MIN_WEIGHT):
            out[b, i, j] = out[b, i, j] + ti.min(w, 1.0) * feat

    @ti.func
    def dot(go, feat):
        """go . feat of two C-vectors, in the kernel's dtype."""
        total = real(0.0)
        if ti.static(channels <= 32):  # Taichi unrolls .dot(), warning beyond 32
            total = go.dot(feat)
        else:
            for ch in range(channels):
                total += go[ch] * feat[ch]
        return total

    @ti.func
    def gather(
        grad_pixels: ti.template(),
        b,
        i,
        j,
        k,
        w,
        e,
        feat,
        grad_feat: ti.template(),
        sums: ti.template(),
    ):
        """Adds pixel (i, j), the k-th of its row's walk, with weight w = o e, to the
        Gaussian's feature gradient and to the row's sums of gs, gs k, gs k^2 and gw e
        (gw = dL/dw, gs = gw w; see `backward`)."""
        if w >= real(MIN_WEIGHT):
            go = grad_pixels[b, i, j]
            grad_feat += ti.min(w, 1.0) * go
            if w <= 1:
                gw = ti.cast(dot(go, feat), ti.f64)
                gs = gw * ti.cast(w, ti.f64)
                sums += ti.Vector([gs, gs * k, gs * k * k, gw * e], dt=ti.f64)

    @ti.func
    def pack(
        means: ti.template(),
        scales: ti.template(),
        rotations: ti.template(),
        features: ti.template(),
        opacities: ti.template(),
        params: ti.template(),
        b,
        g,
    ):
        """Writes and returns Gaussian (b, g) packed as (mean, scale, rotation, opacity,
        features); the backward reads the packed copy."""
        opacity = real(1.0)
        if ti.static(has_opacities):
            opacity = opacities[b, g]
        m = means[b, g]
        sc = scales[b, g]
        # Element by element into the ndarray: Taichi 1.7's SPIR-V code generator fails
        # ("Value ... does not yet exist") on a local vector written at a loop index.
        params[b, g][_MEAN_X] = m[0]
        params[b, g][_MEAN_Y] = m[1]
        params[b, g][_SCALE_X] = sc[0]
        params[b, g][_SCALE_Y] = sc[1]
        params[b, g][_ROTATION] = rotations[b, g]
        params[b, g][_OPACITY] = opacity
        for ch in range(channels):
            params[b, g][PARAMS + ch] = features[b, g][ch]
        return params[b, g]

    @ti.func
    def channels_last(grad_out: ti.template(), scratch: ti.template()):
        """scratch[b, i, j] = grad_out[b, :, i, j]: [C, H, W] -> channels last, a row a task.
        Inlined at the top of a kernel, so its loop is the kernel's parallel loop; written
        element by element, as in `pack`."""
        for b, i in ti.ndrange(grad_out.shape[0], grad_out.shape[2]):
            for j in range(grad_out.shape[3]):
                for ch in range(channels):
                    scratch[b, i, j][ch] = grad_out[b, ch, i, j]

    @ti.func
    def write_grads(
        grads: ti.template(), b, g, pv, fr, moments, grad_feat, height, width, wide: ti.template()
    ):
        """Writes Gaussian (b, g)'s gradients (see `backward`) from its frame fr (cos fr[2],
        sin fr[3], 1/sx^2 fr[4], 1/sy^2 fr[5]) and the moments (S_u, S_v, S_uu, S_vv, S_uv,
        dL/do) over its pixels, computing in the dtype `wide`."""
        cos, sin, inv_x, inv_y = fr[2], fr[3], fr[4], fr[5]
        s_u, s_v, s_uu, s_vv, s_uv = moments[0], moments[1], moments[2], moments[3], moments[4]
        sx = ti.cast(pv[_SCALE_X], wide)
        sy = ti.cast(pv[_SCALE_Y], wide)
        grad_sx = wide(0.0)
        grad_sy = wide(0.0)
        if sx * sx >= wide(MIN_SCALE_SQ):
            grad_sx = (inv_x * s_uu) * (inv_x * sx)
        if sy * sy >= wide(MIN_SCALE_SQ):
            grad_sy = (inv_y * s_vv) * (inv_y * sy)
        half_w = 0.5 * ti.cast(width, wide)
        half_h = 0.5 * ti.cast(height, wide)
        geometry = ti.Vector(
            [
                -half_w * (inv_x * cos * s_u + inv_y * sin * s_v),
                -half_h * (inv_y * cos * s_v - inv_x * sin * s_u),
                grad_sx,
                grad_sy,
                -(inv_y - inv_x) * s_uv,
                moments[5],
            ],
            dt=real,
        )
        for k in ti.static(range(PARAMS)):
            grads[b, g][k] = geometry[k]
        for ch in range(channels):
            grads[b, g][PARAMS + ch] = grad_feat[ch]

    @ti.func
    def narrow_bounds(pv, fr, height, width):
        """Float32-safe bounds of the pixels where Gaussian pv (frame fr) can weigh >= 1/255,
        in the kernel's dtype: (0 r2s, 1 Sigma_yy, 2 shift, 3 Sigma_xx given the row,
        4 eps, 5 first row, 6 last row, 7 1 when the whole map is scanned).

        r2s = 2 ln(255 o) (1 + rel) + rel is the squared Mahalanobis radius of the weight
        1/255 widened by rel = _NARROW_REL_SLACK, which covers float32's rounding of sigma
        (relative ~1e-6) and of the bounds' own arithmetic; the ellipse sigma <= r2s / 2 is
        then dilated by eps = _NARROW_ABS_SLACK + _NARROW_POS_SLACK (height + width) map
        pixels, which covers float32's rounding of a pixel's offset (dx, dy) from the
        centre (< 1e-6 (height + width + |centre|) on the map), however thin the Gaussian:
        rows within sqrt(r2s Sigma_yy) + eps of the centre (see `narrow_span` for a row's
        columns). Empty when no weight reaches 1/255 (or an input is NaN)."""
        sx2 = ti.max(pv[_SCALE_X] * pv[_SCALE_X], real(MIN_SCALE_SQ))
        sy2 = ti.max(pv[_SCALE_Y] * pv[_SCALE_Y], real(MIN_SCALE_SQ))
        c, s, opacity = fr[2], fr[3], fr[6]
        eps = real(_NARROW_ABS_SLACK) + real(_NARROW_POS_SLACK) * ti.cast(height + width, real)
        r2 = real(-1.0)
        if 255 * opacity > 0:
            r2 = 2 * ti.log(255 * opacity)
        r2 = r2 * (1 + real(_NARROW_REL_SLACK)) + real(_NARROW_REL_SLACK)
        syy = s * s * sx2 + c * c * sy2
        shift = c * s * (sy2 - sx2) / syy  # Sigma_xy / Sigma_yy
        sxx_row = 1 / (c * c / sx2 + s * s / sy2)  # det / Sigma_yy = 1 / (Sigma^-1)_xx
        first = 0
        last = -1
        flat = 0
        if r2 >= 0:
            if ti.max(sx2, sy2) > real(_NARROW_FLAT_SQ):  # also inf
                last = height - 1
                flat = 1
            else:
                ey = ti.sqrt(r2 * syy) + eps
                if fr[1] - ey <= height - 1 and fr[1] + ey >= 0:  # false for NaN
                    first = ti.cast(ti.ceil(ti.max(fr[1] - ey, 0.0)), ti.i32)
                    last = ti.cast(ti.floor(ti.min(fr[1] + ey, ti.cast(height - 1, real))), ti.i32)
        return ti.Vector([r2, syy, shift, sxx_row, eps, first, last, flat], dt=real)

    @ti.func
    def narrow_span(nb, fr, i, width):
        """(first, last) columns of row i within `narrow_bounds` nb (last < first: none).

        A pixel (j, i) within eps of a point (x, y) of the ellipse: y's offset dy' from the
        centre is within eps of dy = cy - i, so the ellipse's section at y, centred on
        cx - shift dy' with half-width sqrt((r2s - dy'^2 / Sigma_yy) Sigma_xx|y), lies
        within |shift| eps of row i's centre and is no wider than at |dy'| = max(|dy| -
        eps, 0); x lies within eps of j."""
        first = 0
        last = -1
        if nb[7] > 0:
            last = width - 1
        else:
            eps = nb[4]
            dy = fr[1] - ti.cast(i, real)
            near = ti.max(ti.abs(dy) - eps, 0.0)
            half = ti.sqrt(ti.max(nb[0] - near * near / nb[1], 0.0) * nb[3])
            half += eps * (1 + ti.abs(nb[2]))
            mid = fr[0] - nb[2] * dy
            if mid - half <= width - 1 and mid + half >= 0:  # false for NaN
                first = ti.cast(ti.ceil(ti.max(mid - half, 0.0)), ti.i32)
                last = ti.cast(ti.floor(ti.min(mid + half, ti.cast(width - 1, real))), ti.i32)
        return first, last

    @ti.kernel
    def forward_scatter(
        means: pairs_t,
        scales: pairs_t,
        rotations: per_gaussian_t,
        features: features_t,
        opacities: per_gaussian_t,
        params: params_t,
        scratch: pixels_t,
        out: map_t,
    ):
        n_b, n_g = params.shape[0], params.shape[1]
        height, width = scratch.shape[1], scratch.shape[2]
        ti.loop_config(block_dim=1)  # one image per task, handed out dynamically
        for b in range(n_b):
            for i in range(height):
                for j in range(width):
                    scratch[b, i, j] = ti.Vector.zero(real, channels)
            for g in range(n_g):
                pv = pack(means, scales, rotations, features, opacities, params, b, g)
                feat = pv[PARAMS:]
                el = ellipse(pv, height, width)
                mid, rem, step = el[11], el[12], el[13]
                for i in range(ti.cast(el[15], ti.i32), ti.cast(el[16], ti.i32) + 1):
                    rw = row(el, i, width, mid, rem)
                    e = rw[2]
                    ratio = rw[3]
                    for j in range(ti.cast(rw[0], ti.i32), ti.cast(rw[1], ti.i32) + 1):
                        splat(scratch, b, i, j, ti.cast(el[6] * e, real), feat)
                        e *= ratio
                        ratio *= el[8]
                    mid += el[9]
                    rem += step
                    step += el[14]
            for i in range(height):  # channels-last scratch -> [C, H, W]
                for j in range(width):
                    acc = scratch[b, i, j]
                    for ch in range(channels):
                        out[b, ch, i, j] = acc[ch]

    @ti.kernel
    def forward_gather(
        means: pairs_t,
        scales: pairs_t,
        rotations: per_gaussian_t,
        features: features_t,
        opacities: per_gaussian_t,
        params: params_t,
        out: map_t,
    ):
        n_b, n_g = params.shape[0], params.shape[1]
        height, width = out.shape[2], out.shape[3]
        for b, g in ti.ndrange(n_b, n_g):
            pack(means, scales, rotations, features, opacities, params, b, g)
        for b, i, j in ti.ndrange(n_b, height, width):
            acc = ti.Vector.zero(real, channels)
            for g in range(n_g):
                pv = params[b, g]
                w = weight(frame(pv, height, width), i, j)[0]
                if w >= real(MIN_WEIGHT):
                    acc += ti.min(w, 1.0) * pv[PARAMS:]
            for ch in range(channels):
                out[b, ch, i, j] = acc[ch]

    @ti.kernel
    def backward(params: params_t, grad_out: map_t, scratch: pixels_t, grads: params_t):
        """Gradient of a loss L with respect to every packed parameter, given dL/dout.

        Derivation. Per pixel p = (i, j) and Gaussian g (indices dropped):
          dx = cx - j, dy = cy - i, cx = (mx + 1) W / 2, cy = (my + 1) H / 2,
          u = cos(t) dx - sin(t) dy,  v = sin(t) dx + cos(t) dy,
          ix = 1 / max(sx^2, eps),  iy = 1 / max(sy^2, eps),
          sigma = (ix u^2 + iy v^2) / 2,  e = exp(-sigma),  w = o e,
          out[c, p] += f[c] * wc,  wc = min(w, 1) if w >= 1/255 else 0.
        Let gw = dL/dwc = sum_c dL/dout[c, p] f[c]. Then, summing over the pixels p:
          dL/df[c] = sum_p wc dL/dout[c, p].
        Where the weight is kept and unclamped (1/255 <= w <= 1, as torch's clamp_max
        passes the gradient at w = 1), dwc/do = e and dwc/dsigma = -w; elsewhere both are 0.
        With gs = gw w summed over those pixels:
          dL/do = sum gw e,
          dsigma/du = ix u, dsigma/dv = iy v, du/ddx = cos, dv/ddx = sin,
          du/ddy = -sin, dv/ddy = cos, so
          dL/dmx = -(W/2) (ix cos S_u + iy sin S_v),
          dL/dmy = -(H/2) (-ix sin S_u + iy cos S_v),   S_u = sum gs u, S_v = sum gs v;
          du/dt = -v, dv/dt = u, so dsigma/dt = (iy - ix) u v and
          dL/dt = -(iy - ix) S_uv,   S_uv = sum gs u v;
          dsigma/dix = u^2 / 2 and dix/dsx = -2 sx ix^2 (0 where sx^2 < eps, the clamp), so
          dL/dsx = (ix S_uu) (ix sx),   S_uu = sum gs u^2, and likewise
          dL/dsy = (iy S_vv) (iy sy),   S_vv = sum gs v^2.
        Five moments per Gaussian carry all of the geometry; the chain rule through the
        frame runs once per Gaussian, not per pixel. They are gathered as moments of
        (dx, dy), u and v being linear in them, and along a row (dy fixed, dx = dx0 - k at
        the k-th pixel) as sums of gs, gs k and gs k^2: three products per pixel.
        """
        n_b, n_g = params.shape[0], params.shape[1]
        height, width = grad_out.shape[2], grad_out.shape[3]
        channels_last(grad_out, scratch)
        for bg in range(n_b * n_g):
            b = bg // n_g
            g = bg % n_g
            pv = params[b, g]
            feat = pv[PARAMS:]
            el = ellipse(pv, height, width)
            grad_feat = ti.Vector.zero(real, channels)
            moments = ti.Vector.zero(ti.f64, 6)  # S_x, S_y, S_xx, S_xy, S_yy of gs; dL/do
            mid, rem, step = el[11], el[12], el[13]
            for i in range(ti.cast(el[15], ti.i32), ti.cast(el[16], ti.i32) + 1):
                rw = row(el, i, width, mid, rem)
                e = rw[2]
                ratio = rw[3]
                first = ti.cast(rw[0], ti.i32)
                last = ti.cast(rw[1], ti.i32)
                sums = ti.Vector.zero(ti.f64, 4)
                k = ti.f64(0.0)
                for j in range(first, last + 1):
                    w = ti.cast(el[6] * e, real)
                    gather(scratch, b, i, j, k, w, e, feat, grad_feat, sums)
                    e *= ratio
                    ratio *= el[8]
                    k += 1
                if last >= first:  # dx = dx0 - k along the row, dy is fixed
                    dx0 = el[0] - ti.cast(first, ti.f64)
                    dy = el[1] - ti.cast(i, ti.f64)
                    s_dx = dx0 * sums[0] - sums[1]
                    s_dxx = dx0 * dx0 * sums[0] - 2 * dx0 * sums[1] + sums[2]
                    moments += ti.Vector(
                        [s_dx, dy * sums[0], s_dxx, dy * s_dx, dy * dy * sums[0], sums[3]]
                    )
                mid += el[9]
                rem += step
                step += el[14]
            cos, sin = el[2], el[3]
            # (dx, dy) moments to frame moments: u = cos dx - sin dy, v = sin dx + cos dy
            s_u = cos * moments[0] - sin * moments[1]
            s_v = sin * moments[0] + cos * moments[1]
            cc, cs, ss = cos * cos, cos * sin, sin * sin
            s_uu = cc * moments[2] - 2 * cs * moments[3] + ss * moments[4]
            s_vv = ss * moments[2] + 2 * cs * moments[3] + cc * moments[4]
            s_uv = cs * (moments[2] - moments[4]) + (cc - ss) * moments[3]
            frame_moments = ti.Vector([s_u, s_v, s_uu, s_vv, s_uv, moments[5]])
            write_grads(grads, b, g, pv, el, frame_moments, grad_feat, height, width, ti.f64)

    @ti.kernel
    def backward_narrow(params: params_t, grad_out: map_t, scratch: pixels_t, grads: params_t):
        """`backward` without float64 (for SPIR-V arches): the same gradients, with the
        moments S_u .. S_uv gathered per pixel from u and v directly (no cancellation in
        float32), each weight computed as `forward_gather` computes it, over the pixels of
        `narrow_bounds`."""
        n_b, n_g = params.shape[0], params.shape[1]
        height, width = grad_out.shape[2], grad_out.shape[3]
        channels_last(grad_out, scratch)
        for bg in range(n_b * n_g):
            b = bg // n_g
            g = bg % n_g
            pv = params[b, g]
            feat = pv[PARAMS:]
            fr = frame(pv, height, width)
            nb = narrow_bounds(pv, fr, height, width)
            grad_feat = ti.Vector.zero(real, channels)
            moments = ti.Vector.zero(real, 6)  # S_u, S_v, S_uu, S_vv, S_uv of gs; dL/do
            for i in range(ti.cast(nb[5], ti.i32), ti.cast(nb[6], ti.i32) + 1):
                first, last = narrow_span(nb, fr, i, width)
                for j in range(first, last + 1):
                    wt = weight(fr, i, j)  # (w, e, u, v)
                    if wt[0] >= real(MIN_WEIGHT):
                        go = scratch[b, i, j]
                        grad_feat += ti.min(wt[0], 1.0) * go
                        if wt[0] <= 1:
                            gw = dot(go, feat)
                            gs = gw * wt[0]
                            u, v = wt[2], wt[3]
                            moments += ti.Vector(
                                [gs * u, gs * v, gs * u * u, gs * v * v, gs * u * v, gw * wt[1]]
                            )
            write_grads(grads, b, g, pv, fr, moments, grad_feat, height, width, real)

    return RasterKernels(forward_scatter, forward_gather, backward, backward_narrow)
