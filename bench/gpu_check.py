"""One-command acceptance check on a CUDA GPU (`make gpu-check`): writes one JSON document.

Parts, in order (estimated seconds on an H200; the whole run stays under 8 minutes: a part
that would start after `--budget-s` is recorded as skipped, and the JSON is rewritten after
every part, so a killed run keeps what it measured):
- kernels (~40 s): `gtok.kernels.rasterize` and `gtok.kernels.deform_attn` (when this gtok has it)
  against their PyTorch references (`gtok.kernels.reference`) at the cifar and imagenet shapes,
  float32 and float64: largest relative difference of the output and of every gradient;
  forward and forward+backward milliseconds of kernel and reference.
- vulkan_kernels (~60 s): where a Vulkan loader (libvulkan) is installed, bench/arch_check.py
  on Taichi's vulkan arch (the GPU's Vulkan driver; its own process): float32 outputs and
  gradients within the tolerances above, no pixel clipped by the float32 bounds. Without a
  loader, or when Taichi cannot start on Vulkan, the part records why and passes.
- train_bf16 (~90 s): 200 steps of the `tiny` preset with bf16 autocast on the demo
  photographs (`gtok.train.train`): loss finite throughout, l1 of the last 20 steps below
  the first 20; the device train.json says it used.
- torchrun_train (~40 s): `gtok train` for 5 steps under `torchrun --nproc-per-node 1`
  (LOCAL_RANK=0, device auto): exit status and the device train.json says it used.
- encode_decode_eval (~60 s): the default model encodes (fp32 and bf16), decodes and
  evaluates 16 copies of the demo shard on the GPU: img/s of each and the scores.
- imagenet_encode (~30 s): the `imagenet` preset's `encode` (random weights) at batch 64,
  256 px, bf16 autocast and fp32: img/s; target >= 1,000 img/s in bf16 (torch's FLOP
  counter: 426 GFLOPs per image, so that is about 43% of an H200's dense bf16 peak).
Every part records the device it ran on and the peak CUDA memory it allocated (evidence the
GPU did the work). Exits 1 with one `error:` line when no CUDA GPU is present, or when a
part fails (after writing the JSON).

`--device cpu --quick` runs the same parts on tiny sizes on the CPU: for tests only (its 4
training steps are too few to require the loss to fall).

Usage: python bench/gpu_check.py [--out gpu-check.json] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from arch_check import NO_ARCH  # noqa: E402
from raster_gpu import SHAPES, TOLERANCE, gaussians, run  # noqa: E402

from gtok import kernels  # noqa: E402
from gtok.devices import select_device  # noqa: E402
from gtok.errors import GtokError  # noqa: E402
from gtok.kernels import reference  # noqa: E402

DEFORM_SHAPES = {"cifar": (64, 16, 16, 64), "imagenet": (64, 32, 32, 1024)}  # B, H, W, Nq
DEFORM_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}  # relative to the largest value
HEADS, HEAD_DIM, POINTS = 4, 16, 4  # GaussianEmbed's deformable attention (one fixed point)
IMAGENET_TARGET = 1000.0  # img/s, bf16, batch 64
VULKAN_TIMEOUT_S = 300  # a Vulkan run that hangs (at exit, say) fails the part


@dataclass
class Check:
    """What every part gets: where to compute, how big, and a scratch folder."""

    device: torch.device
    quick: bool
    scratch: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _sync(check: Check) -> None:
    if check.cuda:
        torch.cuda.synchronize()


def _ms(check: Check, fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of one fn() call (synchronized), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(check)
        start = time.perf_counter()
        fn()
        _sync(check)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 4)


def _relative(got: list[torch.Tensor], want: list[torch.Tensor], names) -> dict[str, float]:
    return {
        name: ((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
        for name, g, w in zip(names, got, want, strict=True)
    }


# ---- kernels ------------------------------------------------------------------------------


def _raster_case(check: Check, shape, dtype) -> dict[str, float]:
    n_b, n_g, height, width, n_c = shape
    inputs = gaussians(n_b, n_g, n_c, dtype, check.device)
    upstream = torch.randn(n_b, n_c, height, width, dtype=dtype, device=check.device)
    names = ("map", "means", "scales", "rotations", "features", "opacities")
    got = run(kernels.rasterize, inputs, height, width, upstream)
    return _relative(got, run(reference.rasterize, inputs, height, width, upstream), names)


def _raster_times(check: Check, shape) -> dict[str, float]:
    n_b, n_g, height, width, n_c = shape
    leaves = [t.requires_grad_() for t in gaussians(n_b, n_g, n_c, torch.float32, check.device)]
    repeats = 3 if check.quick else 30
    out = {}
    for label, raster in (("kernel", kernels.rasterize), ("reference", reference.rasterize)):
        out[f"{label}_forward_ms"] = _ms(
            check, lambda r=raster: r(*leaves[:4], height, width), repeats
        )
        out[f"{label}_forward_backward_ms"] = _ms(
            check,
            lambda r=raster: torch.autograd.grad(r(*leaves[:4], height, width).sum(), leaves[:4]),
            repeats,
        )
    return out


def _deform_inputs(check: Check, shape, dtype) -> list[torch.Tensor]:
    """value [B, HW, M, Dh], reference [B, Nq, 2], offsets [B, Nq, M, P, 2], logits
    [B, Nq, M, 1 + P] as GaussianEmbed makes them (offsets of a few map pixels)."""
    n_b, height, width, n_q = shape
    gen = torch.Generator().manual_seed(0)
    tensors = (
        torch.randn(n_b, height * width, HEADS, HEAD_DIM, generator=gen),
        torch.rand(n_b, n_q, 2, generator=gen),
        2 * torch.randn(n_b, n_q, HEADS, POINTS, 2, generator=gen),
        torch.randn(n_b, n_q, HEADS, 1 + POINTS, generator=gen),
    )
    return [t.to(device=check.device, dtype=dtype) for t in tensors]


def _deform_run(fn, inputs, shape, upstream) -> list[torch.Tensor]:
    _, height, width, _ = shape
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    fixed = torch.zeros(1, 2, dtype=inputs[0].dtype, device=inputs[0].device)
    out = fn(leaves[0], height, width, leaves[1], leaves[2], leaves[3], fixed)
    return [out, *torch.autograd.grad(out, leaves, upstream)]


def _deform_case(check: Check, shape, dtype) -> dict[str, float]:
    inputs = _deform_inputs(check, shape, dtype)
    n_b, _, _, n_q = shape
    gen = torch.Generator().manual_seed(1)
    upstream = torch.randn(n_b, n_q, HEADS, HEAD_DIM, generator=gen).to(check.device, dtype)
    got = _deform_run(kernels.deform_attn, inputs, shape, upstream)
    want = _deform_run(reference.deform_attn, inputs, shape, upstream)
    return _relative(got, want, ("output", "value", "reference", "offsets", "logits"))


def _deform_times(check: Check, shape) -> dict[str, float]:
    inputs = _deform_inputs(check, shape, torch.float32)
    n_b, _, _, n_q = shape
    upstream = torch.randn(n_b, n_q, HEADS, HEAD_DIM, device=check.device)
    repeats = 3 if check.quick else 30
    out = {}
    for label, fn in (("kernel", kernels.deform_attn), ("reference", reference.deform_attn)):
        out[f"{label}_forward_backward_ms"] = _ms(
            check, lambda f=fn: _deform_run(f, inputs, shape, upstream), repeats
        )
    return out


def _tolerance_failures(errors: dict, tolerance: dict) -> list[str]:
    return [
        f"{case}.{name}"
        for case, by_name in errors.items()
        for name, err in by_name.items()
        if not err <= tolerance[torch.float64 if case.endswith("float64") else torch.float32]
    ]


def part_kernels(check: Check) -> dict:
    """Rasterizer and deformable attention vs their references (values, gradients), times."""
    raster_shapes = {"quick": (2, 8, 8, 8, 3)} if check.quick else SHAPES
    deform_shapes = {"quick": (2, 6, 5, 7)} if check.quick else DEFORM_SHAPES
    dtypes = (torch.float32, torch.float64)
    kernels.start(check.device)
    raster = {
        f"{name}_{str(dtype).removeprefix('torch.')}": _raster_case(check, shape, dtype)
        for name, shape in raster_shapes.items()
        for dtype in dtypes
    }
    result = {
        "rasterize_max_relative_error": raster,
        "rasterize_times": {n: _raster_times(check, s) for n, s in raster_shapes.items()},
    }
    failures = _tolerance_failures(raster, TOLERANCE)
    if hasattr(kernels, "deform_attn"):
        deform = {
            f"{name}_{str(dtype).removeprefix('torch.')}": _deform_case(check, shape, dtype)
            for name, shape in deform_shapes.items()
            for dtype in dtypes
        }
        result["deform_attn_max_relative_error"] = deform
        result["deform_attn_times"] = {n: _deform_times(check, s) for n, s in deform_shapes.items()}
        failures += _tolerance_failures(deform, DEFORM_TOLERANCE)
    else:
        result["deform_attn"] = "this gtok has no kernels.deform_attn (reference only)"
    result["failures"] = failures
    result["ok"] = not failures
    return result


def part_vulkan_kernels(check: Check) -> dict:
    """bench/arch_check.py on Taichi's vulkan arch, in a process of its own (Taichi runs one
    arch per process), where a Vulkan loader is installed: float32 differences from the
    references within the tolerances of `part_kernels`, no pixel clipped by the bounds."""
    if ctypes.util.find_library("vulkan") is None:
        return {"ran": False, "reason": "no Vulkan loader (libvulkan.so.1) here", "ok": True}
    command = [sys.executable, str(REPO / "bench" / "arch_check.py"), "--arch", "vulkan"]
    command += ["--quick"] if check.quick else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=VULKAN_TIMEOUT_S)
    if done.returncode == NO_ARCH:
        return {"ran": False, "reason": done.stderr.strip(), "ok": True}
    if done.returncode != 0:
        tail = done.stderr[-2000:]
        return {"ran": True, "exit_status": done.returncode, "stderr_tail": tail, "ok": False}
    report = json.loads(done.stdout)
    raster = {case: errs for case, errs in report.items() if case.startswith("rasterize")}
    deform = {case: errs for case, errs in report.items() if case.startswith("deform_attn")}
    failures = _tolerance_failures(raster, TOLERANCE) + _tolerance_failures(
        deform, DEFORM_TOLERANCE
    )
    if not report["narrow_clipped"] < 0.5:  # pixels; 0 up to float32 rounding
        failures.append("narrow_clipped")
    return {
        "ran": True,
        "max_relative_error": raster | deform,
        "narrow_clipped": report["narrow_clipped"],
        "failures": failures,
        "ok": not failures,
    }


# ---- training -----------------------------------------------------------------------------


def _demo_shards(check: Check) -> Path:
    """The demo photographs packed into one shard (made once per run)."""
    from gtok.demo import DEMO_PHOTOS
    from gtok.pack import pack_images

    folder = check.scratch / "demo-shards"
    if not folder.is_dir():
        pack_images(DEMO_PHOTOS, folder, per_shard=1000)
    return folder


def _train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _resolved_device(run_dir: Path) -> str:
    return json.loads((run_dir / "train.json").read_text())["resolved"]["device"]


def part_train_bf16(check: Check) -> dict:
    """200 steps of `tiny` with bf16 autocast: finite, and the l1 loss falls."""
    from gtok.train import TrainConfig, train

    shards = str(_demo_shards(check))
    steps = 4 if check.quick else 200
    window = 2 if check.quick else 20
    sizes = {"image_size": 32, "model": {"num_gaussians": 16}} if check.quick else {}
    cfg = TrainConfig(
        preset="tiny",
        shards=(shards,),
        val_shards=(shards,),
        steps=steps,
        batch_size=2 if check.quick else 16,
        lr=1e-3,
        precision="bf16",
        device=str(check.device),
        workers=0 if check.quick else 4,
        log_every=1,
        eval_every=steps,
        checkpoint_every=steps,
        sample_every=steps,
        val_images=4 if check.quick else 32,
        gan_start_step=steps // 2,  # the discriminator's bf16 path runs in the second half
        **sizes,
    )
    run_dir = check.scratch / "train-bf16"
    result = train(cfg, run_dir)
    records = _train_records(run_dir)
    l1 = [r["l1"] for r in records]
    finite = all(math.isfinite(r["loss"]) for r in records) and result.stopped is None
    first, last = statistics.mean(l1[:window]), statistics.mean(l1[-window:])
    return {
        "device": _resolved_device(run_dir),
        "steps": result.step,
        "images_per_s": round(result.images_per_s, 1),
        "l1_first": round(first, 4),
        "l1_last": round(last, 4),
        "finite": finite,
        "loss_falls": last < first,
        # 4 quick steps are too few for the loss to fall reliably: quick judges the run only
        "ok": finite and result.step == steps and (last < first or check.quick),
    }


def part_torchrun_train(check: Check) -> dict:
    """`gtok train` under `torchrun --nproc-per-node 1` (LOCAL_RANK=0): exit 0, its device."""
    launcher = check.scratch / "gtok_main.py"
    launcher.write_text("from gtok.cli.main import main\n\nmain()\n")
    run_dir = check.scratch / "torchrun"
    steps = "2" if check.quick else "5"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "1", str(launcher), "-q", "train", str(_demo_shards(check))]
    command += ["--preset", "tiny", "--output", str(run_dir), "--steps", steps, "--workers", "0"]
    command += ["--batch-size", "4", "--json"]
    if check.quick:
        command += ["--device", "cpu", "--image-size", "32", "--model", "num_gaussians=16"]
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    out = {"exit_status": done.returncode, "ok": done.returncode == 0}
    if done.returncode == 0:
        out["device"] = _resolved_device(run_dir)
        out["steps"] = json.loads(done.stdout)["step"]
        out["ok"] = out["device"] == ("cpu" if check.quick else "cuda:0")
    else:
        out["stderr_tail"] = done.stderr[-2000:]
    return out


# ---- encode, decode, eval -----------------------------------------------------------------


def part_encode_decode_eval(check: Check) -> dict:
    """The default model on copies of the demo shard: encode (fp32, bf16), decode, eval."""
    from gtok.decode import decode_store
    from gtok.encode import encode_shards
    from gtok.evaluate import evaluate_pairs

    source = next(_demo_shards(check).glob("*.tar"))
    folder = check.scratch / "copies"
    folder.mkdir(exist_ok=True)
    copies = 1 if check.quick else 16
    for i in range(copies):
        shutil.copy(source, folder / f"demo-{i:04d}.tar")
    device = str(check.device)
    workers = 0 if check.quick else 4
    out: dict = {"device": device}
    for precision in ("fp32", "bf16"):
        store = check.scratch / f"tokens-{precision}.zarr"
        summary = encode_shards(
            [folder], store, None, device=device, workers=workers, precision=precision
        )
        out[f"encode_{precision}"] = {
            "images": summary.encoded,
            "images_per_s": round(summary.images_per_second, 1),
        }
    store = check.scratch / "tokens-fp32.zarr"
    decoded = decode_store(store, check.scratch / "recon", device=device)
    out["decode"] = {"images": decoded.written, "images_per_s": round(decoded.images_per_second, 1)}
    started = time.perf_counter()
    scores = evaluate_pairs([folder], store, device=device, workers=workers).document
    seconds = time.perf_counter() - started
    out["eval"] = {
        "images": scores["n"],
        "images_per_s": round(scores["n"] / seconds, 1),
        "psnr": scores.get("psnr"),
        "ssim": scores.get("ssim"),
        "unavailable": sorted(scores.get("unavailable", {})),
    }
    encoded = out["encode_fp32"]["images"]
    out["ok"] = encoded > 0 and decoded.written == encoded == scores["n"]
    return out


def part_imagenet_encode(check: Check) -> dict:
    """img/s of the imagenet preset's encode at batch 64 (random weights), bf16 and fp32."""
    import gtok
    from gtok.devices import exact_fp32, mixed_precision

    preset, batch, size = ("tiny", 2, 64) if check.quick else ("imagenet", 64, 256)
    repeats = 1 if check.quick else 10
    tok = gtok.build_tokenizer(preset, seed=0).eval().to(check.device)
    images = torch.rand(batch, 3, size, size, device=check.device) * 2 - 1
    out: dict = {"device": str(check.device), "preset": preset, "batch": batch}
    for precision in ("bf16", "fp32"):
        with torch.inference_mode(), exact_fp32(), mixed_precision(check.device, precision):
            milliseconds = _ms(check, lambda: tok.encode(images).indices.sum(), repeats)
        out[f"{precision}_images_per_s"] = round(batch / milliseconds * 1000, 1)
    out["target_bf16_images_per_s"] = IMAGENET_TARGET
    out["meets_target"] = out["bf16_images_per_s"] >= IMAGENET_TARGET
    out["ok"] = True  # a measurement: below target is reported, not a failure
    return out


PARTS: dict[str, tuple[Callable[[Check], dict], float]] = {  # name -> (part, estimated s)
    "kernels": (part_kernels, 40),
    "vulkan_kernels": (part_vulkan_kernels, 60),
    "train_bf16": (part_train_bf16, 90),
    "torchrun_train": (part_torchrun_train, 40),
    "encode_decode_eval": (part_encode_decode_eval, 60),
    "imagenet_encode": (part_imagenet_encode, 30),
}


# ---- driver -------------------------------------------------------------------------------


def run_part(check: Check, name: str) -> dict:
    """One part's dict, with its seconds and peak CUDA memory; an exception becomes
    {"ok": False, "error": ...}."""
    part, _ = PARTS[name]
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        result = part(check)
    except Exception as exc:  # one broken part must not hide the others' results
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    if check.cuda:
        result["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _write(path: Path, report: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)


def _machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", type=Path)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        device = select_device(args.device)
    except GtokError as exc:
        print(f"error: no CUDA GPU for make gpu-check ({exc})", file=sys.stderr)
        return 1
    report: dict = {"machine": _machine(device), "budget_s": args.budget_s, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="gtok-gpu-check-") as scratch:
        check = Check(device, args.quick, Path(scratch))
        for name in args.parts:
            elapsed = time.perf_counter() - started
            if elapsed + PARTS[name][1] > args.budget_s:
                report["parts"][name] = {"ok": False, "skipped": f"over budget at {elapsed:.0f} s"}
            else:
                print(f"gpu-check: {name}", file=sys.stderr)
                report["parts"][name] = run_part(check, name)
            report["seconds"] = round(time.perf_counter() - started, 1)
            _write(args.out, report)
    failed = [name for name, part in report["parts"].items() if not part.get("ok")]
    report["ok"] = not failed
    _write(args.out, report)
    if failed:
        print(
            f"error: gpu-check parts failed: {', '.join(failed)} (see {args.out})", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
