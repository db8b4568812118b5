"""`selfcheck`: do the kernels compile and agree with the reference on an arch here?

`gtok env` runs it so a bug report says whether the Taichi kernels work on this machine, not
only whether Taichi starts: in its own process on the arch that `auto` picks, and through
`probe`, one subprocess per arch (Taichi runs one arch per process), on every arch.
`python -m gtok.kernels.selfcheck ARCH` prints the probe's JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from gtok.kernels import reference, runtime
from gtok.kernels.deform_attn import deform_attn
from gtok.kernels.rasterize import rasterize

__all__ = ["KernelCheckError", "probe", "selfcheck"]

_TOLERANCE = 1e-4  # relative to the largest value; float32 on a 9 x 7 map
PROBE_TIMEOUT_S = 180.0  # a first Vulkan start compiles every kernel (slow on lavapipe)


class KernelCheckError(RuntimeError):
    """The kernels ran but their result differs from the reference."""


def selfcheck(arch: str = "auto") -> str:
    """Run the rasterizer on two small batches of Gaussians (float32, with and without
    opacities) and deformable attention on a small map, on Taichi's `arch` ("cpu", "cuda",
    "vulkan", "metal", or "auto": where tensors on the default device run), and compare the
    outputs and gradients with `gtok.kernels.reference`. Returns "ok"; raises
    `KernelCheckError` when a number differs, and whatever compiling or starting Taichi
    raises."""
    started = runtime.start("auto" if arch == "auto" else runtime.tensor_device(arch))
    if arch not in ("auto", started):
        raise runtime.ArchError(
            f"The {arch} self-check needs Taichi started on {arch} ({runtime.ARCH_ENV}={arch}), "
            f"but this process runs it on {started}."
        )
    arch = started
    device = runtime.tensor_device(arch)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "means": torch.rand(2, 5, 2, generator=gen) * 1.6 - 0.8,
        "scales": 0.5 + 2 * torch.rand(2, 5, 2, generator=gen),
        "rotations": torch.rand(2, 5, generator=gen) * 3.1,
        "features": torch.randn(2, 5, 3, generator=gen),
        "opacities": 0.2 + torch.rand(2, 5, generator=gen),
    }
    upstream = torch.randn(2, 3, 9, 7, generator=gen)

    def raster(fn, leaves):
        geometry = (leaves["means"], leaves["scales"], leaves["rotations"], leaves["features"])
        return fn(*geometry, 9, 7, leaves.get("opacities"))

    for with_opacities in (False, True):
        names = [name for name in inputs if with_opacities or name != "opacities"]
        pair = (rasterize, reference.rasterize)
        _compare("rasterizer", arch, device, pair, raster, {n: inputs[n] for n in names}, upstream)
    value = torch.randn(2, 6 * 5, 2, 4, generator=gen)
    attention = {
        "value": value,
        "reference": torch.rand(2, 7, 2, generator=gen),
        "offsets": 2 * torch.randn(2, 7, 2, 3, 2, generator=gen),
        "logits": torch.randn(2, 7, 2, 4, generator=gen),
    }
    fixed = torch.zeros(1, 2).to(device)

    def attend(fn, leaves):
        args = (leaves["reference"], leaves["offsets"], leaves["logits"], fixed)
        return fn(leaves["value"], 6, 5, *args)

    upstream = torch.randn(2, 7, 2, 4, generator=gen)
    attention_pair = (deform_attn, reference.deform_attn)
    _compare("deformable attention", arch, device, attention_pair, attend, attention, upstream)
    return "ok"


def _compare(op: str, arch: str, device: str, pair, run, inputs: dict, upstream) -> None:
    """`KernelCheckError` unless run(kernel, leaves) and run(reference, leaves), for the
    (kernel, reference) `pair`, agree in output and in every input's gradient (under
    `upstream`) to `_TOLERANCE`."""
    results = []
    for fn in pair:
        leaves = {name: t.to(device).requires_grad_() for name, t in inputs.items()}
        out = run(fn, leaves)
        grads = torch.autograd.grad(out, list(leaves.values()), upstream.to(device))
        results.append([out, *grads])
    for name, got, want in zip(["output", *inputs], *results, strict=True):
        err = (got - want).abs().max().item()
        scale = max(want.abs().max().item(), 1.0)
        if not err <= _TOLERANCE * scale:  # also catches NaN
            raise KernelCheckError(
                f"The {op}'s {name} on {arch} differs from the reference by {err:.3g} "
                f"(scale {scale:.3g}); the Taichi kernels are miscompiled on this machine."
            )


def probe(arch: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Whether Taichi starts on `arch` here and its kernels pass `selfcheck`, found in a
    subprocess (`python -m gtok.kernels.selfcheck ARCH`) given `timeout_s` seconds:
    {"starts": bool, "kernels": "ok" | "error: ..." | None, "error": str | None}."""
    root = str(Path(__file__).resolve().parents[1])  # the folder holding `kernels`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "gtok.kernels.selfcheck", arch]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        error = f"no answer within {timeout_s:.0f} s"
        return {"starts": None, "kernels": None, "error": error}
    if done.returncode == 0:
        return json.loads(done.stdout)
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    return {"starts": None, "kernels": None, "error": lines[-1]}


def _probe_here(arch: str) -> dict[str, Any]:
    """`probe`'s answer, from within the probing subprocess."""
    runtime.request_arch(arch)
    try:
        runtime.start(runtime.tensor_device(arch))
    except runtime.ArchError as exc:
        return {"starts": False, "kernels": None, "error": str(exc)}
    try:
        return {"starts": True, "kernels": selfcheck(arch), "error": None}
    except Exception as exc:  # reported, not raised: the report says what failed
        return {"starts": True, "kernels": f"error: {type(exc).__name__}: {exc}", "error": None}


if __name__ == "__main__":
    print(json.dumps(_probe_here(sys.argv[1])))
