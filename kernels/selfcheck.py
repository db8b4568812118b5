"""`selfcheck`: do the rasterizer's kernels compile and agree with the reference here?

`gtok env` runs it so a bug report says whether the Taichi kernels work on this machine's
arch, not only whether Taichi starts.
"""

from __future__ import annotations

import torch

from kernels import reference, runtime
from kernels.rasterize import rasterize

__all__ = ["KernelCheckError", "selfcheck"]

_TOLERANCE = 1e-4  # relative to the largest value; float32 on a 9 x 7 map


class KernelCheckError(RuntimeError):
    """The kernels ran but their result differs from the reference."""


def selfcheck(device: str | torch.device = "auto") -> str:
    """Rasterize two small batches of Gaussians (float32, with and without opacities) on
    `device` ("cpu", "cuda" or "auto": where Taichi starts) and compare the map and its
    gradients with `kernels.reference.rasterize`. Returns "ok"; raises `KernelCheckError`
    when a number differs, and whatever compiling or starting Taichi raises."""
    arch = runtime.start(device)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "means": torch.rand(2, 5, 2, generator=gen) * 1.6 - 0.8,
        "scales": 0.5 + 2 * torch.rand(2, 5, 2, generator=gen),
        "rotations": torch.rand(2, 5, generator=gen) * 3.1,
        "features": torch.randn(2, 5, 3, generator=gen),
        "opacities": 0.2 + torch.rand(2, 5, generator=gen),
    }
    upstream = torch.randn(2, 3, 9, 7, generator=gen).to(arch)
    for with_opacities in (False, True):
        names = [name for name in inputs if with_opacities or name != "opacities"]
        results = []
        for raster in (rasterize, reference.rasterize):
            leaves = {name: inputs[name].to(arch).requires_grad_() for name in names}
            out = raster(
                leaves["means"],
                leaves["scales"],
                leaves["rotations"],
                leaves["features"],
                9,
                7,
                leaves.get("opacities"),
            )
            grads = torch.autograd.grad(out, list(leaves.values()), upstream)
            results.append([out, *grads])
        for name, got, want in zip(["map", *names], *results, strict=True):
            err = (got - want).abs().max().item()
            scale = max(want.abs().max().item(), 1.0)
            if not err <= _TOLERANCE * scale:  # also catches NaN
                raise KernelCheckError(
                    f"The rasterizer's {name} on {arch} differs from the reference by {err:.3g} "
                    f"(scale {scale:.3g}); the Taichi kernels are miscompiled on this machine."
                )
    return "ok"
