"""Run one gtok entry function in this process with a mocked 8-GPU CUDA (or, with "mock":
"mps" in JSON_ARGS, a mocked Apple MPS), far enough to see the device it chose, and print
what happened as JSON (tests/test_gpu_paths.py runs it in a subprocess under torchrun-like
variables such as LOCAL_RANK=3 WORLD_SIZE=8).

Usage: python tests/mockcuda.py train|encode|decode|eval JSON_ARGS

torch.cuda says 8 GPUs are there (NVML too) and that CUDA has not started, or
torch.backends.mps that MPS is available; the process group and the model load are recorded
instead of run. Nothing here copies gtok's device logic: the entry function's own code picks
the device. With MPS, Taichi is then asked for Metal for the model's tensors: off macOS that
must be refused in one sentence, not served on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
import torch.distributed

import gtok.model.io
import gtok.train.loop
from gtok.kernels import runtime

GPUS = 8
seen: dict = {}


class Reached(Exception):
    """The entry function got as far as loading its model (or training): stop here."""


def _mock_cuda() -> None:
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: GPUS
    torch.cuda._device_count_nvml = lambda: GPUS
    torch.cuda.is_initialized = lambda: False
    torch.cuda.set_device = lambda device: seen.setdefault("set_device", str(device))
    torch.distributed.init_process_group = lambda backend, **kw: seen.setdefault("backend", backend)
    _mock_model()


def _mock_mps() -> None:
    torch.backends.mps.is_available = lambda: True
    _mock_model()


def _mock_model() -> None:
    """Record the device the model would be loaded on (or trained on), and stop there."""

    def load_tokenizer_with_sha256(path=None, device="cpu", dtype=None):  # load_tokenizer too
        seen["model_device"] = str(device)
        raise Reached

    def train_body(cfg, run, dist):
        seen["model_device"] = str(dist.device)
        seen["rank_world"] = [dist.rank, dist.world]
        raise Reached

    gtok.model.io.load_tokenizer_with_sha256 = load_tokenizer_with_sha256
    gtok.train.loop._train = train_body


def _run(command: str, args: dict) -> None:
    if command == "train":
        from gtok.train import TrainConfig, train

        cfg = TrainConfig(shards=(args["shards"],), preset="tiny", steps=1, device=args["device"])
        train(cfg, args["out"])
    elif command == "encode":
        from gtok.encode import encode_shards

        encode_shards([args["shards"]], args["out"], args["model"], device=args["device"])
    elif command == "decode":
        from gtok.decode import decode_store

        decode_store(args["store"], args["out"], device=args["device"])
    elif command == "eval":
        from gtok.evaluate import evaluate_model

        evaluate_model([args["shards"]], args["model"], device=args["device"])
    else:
        raise SystemExit(f"unknown command {command}")


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    mps = args.get("mock") == "mps"
    _mock_mps() if mps else _mock_cuda()
    with contextlib.suppress(Reached):
        _run(command, args)
    device = torch.device(seen["model_device"])
    seen["visible"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen["rasterizer_arch"] = runtime.resolve_arch(device)  # the rasterizer's device check
    try:
        runtime.start(device if mps else torch.device("cuda", 3))
    except runtime.ArchError as exc:
        seen["metal_refused" if mps else "cuda3_refused"] = str(exc)
    seen["taichi_started"] = runtime.started_arch()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
