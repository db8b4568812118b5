"""GPU code paths tested on the CPU with a mocked CUDA: device placement under torchrun
(each process's GPU first in CUDA_VISIBLE_DEVICES, computing on cuda:0), the rasterizer's
device check before Taichi starts, Taichi's stream ordering, the libcuda.so diagnosis, TF32
off for encode/decode/eval, and one host sync per training step."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import gtok.devices as devices
from gtok.errors import GtokError
from gtok.kernels import runtime
from gtok.kernels._launch import taichi_stream
from gtok.kernels.libcuda import libcuda_problem

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN_RANK3 = {"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}


def _mocked_entry(command: str, env: dict[str, str], **args) -> dict:
    """Run tests/mockcuda.py COMMAND (the real entry function over a mocked 8-GPU CUDA) in a
    fresh process with `env` added (CUDA_VISIBLE_DEVICES only when `env` sets it)."""
    full = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    full |= env | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "mockcuda.py"), command, json.dumps(args)],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["train", "encode", "decode", "eval"])
def test_rank_3_of_8_puts_its_gpu_first_and_computes_on_cuda_0(
    command,
    tmp_path,
    model,
    shards,
    store,
):
    args = {"shards": str(shards), "model": str(model), "store": str(store)}
    seen = _mocked_entry(command, TORCHRUN_RANK3, out=str(tmp_path / "out"), device="auto", **args)
    assert seen["visible"] == "3,0,1,2,4,5,6,7"  # its GPU first, the others still visible
    assert seen["model_device"] == "cuda:0"
    assert seen["rasterizer_arch"] == "cuda"  # the rasterizer accepts the model's device
    assert "first visible CUDA device" in seen["cuda3_refused"]
    assert seen["taichi_started"] is None  # refused before Taichi started
    if command == "train":
        assert seen["set_device"] == "cuda:0" and seen["backend"] == "nccl"
        assert seen["rank_world"] == [3, 8]


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["encode", "decode", "eval"])
def test_device_mps_puts_the_model_on_mps_and_asks_taichi_for_metal(
    command, tmp_path, model, shards, store
):
    """--device mps with MPS mocked: the model goes to mps, the kernels to Taichi's metal
    arch, which off macOS is refused in one sentence (no silent CPU fallback)."""
    args = {"shards": str(shards), "model": str(model), "store": str(store), "mock": "mps"}
    seen = _mocked_entry(command, {}, out=str(tmp_path / "out"), device="mps", **args)
    assert seen["model_device"] == "mps"
    assert seen["rasterizer_arch"] == "metal"
    if sys.platform != "darwin":
        assert "asked to start on metal but started on cpu" in seen["metal_refused"]
        assert "Metal needs macOS" in seen["metal_refused"]
        assert seen["taichi_started"] is None


def test_device_mps_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GtokError, match="MPS is not available"):
        devices.select_device("mps", allow_mps=True)
    with pytest.raises(GtokError, match="device='mps' is for encode, decode and eval"):
        devices.select_device("mps")  # train


@pytest.mark.subprocess
def test_an_explicit_gpu_among_uuids_comes_first(tmp_path):
    uuids = [f"GPU-{i:04d}" for i in range(4)]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(uuids)}
    seen = _mocked_entry("train", env, shards="x.tar", out=str(tmp_path / "run"), device="cuda:2")
    assert seen["visible"] == "GPU-0002,GPU-0000,GPU-0001,GPU-0003"
    assert seen["model_device"] == "cuda:0" and "backend" not in seen  # one process


@pytest.fixture
def fresh(monkeypatch):
    """select_device in a process where no GPU was chosen yet and CUDA has `count` GPUs."""

    def cuda(count: int, visible: str | None = None, initialized: bool = False):
        monkeypatch.setattr(devices, "_original", None)
        monkeypatch.setattr(devices, "_placed", None)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)

    return cuda


def test_select_device_orders_gpus_and_refuses_what_cannot_be(fresh, monkeypatch):
    fresh(4, visible="2,5,7")
    assert devices.select_device("cuda:1") == torch.device("cuda", 0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,2,7"
    assert devices.select_device("cuda:1") == torch.device("cuda", 0)  # same GPU again: fine
    with pytest.raises(GtokError, match="already computes on GPU 5"):
        devices.select_device("cuda:0")
    assert devices.select_device("cpu") == torch.device("cpu")
    fresh(2)
    with pytest.raises(GtokError, match="only 2 GPU"):
        devices.select_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.select_device("auto") == torch.device("cuda", 0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,0"
    fresh(2, initialized=True)  # CUDA started with GPU 0 first: GPU 1 cannot be moved
    with pytest.raises(GtokError, match="CUDA started before gtok chose the GPU"):
        devices.select_device("cuda:1")
    fresh(0)
    assert devices.select_device("auto") == torch.device("cpu")
    with pytest.raises(GtokError, match="no GPU is visible"):
        devices.select_device("cuda")
    fresh(2, visible="-1")
    assert devices.select_device("auto") == torch.device("cpu")
    with pytest.raises(GtokError, match="Unknown device"):
        devices.select_device("gpu7")


def test_the_rasterizer_refuses_another_gpu_before_taichi_starts(monkeypatch):
    started = []
    monkeypatch.setattr(runtime, "_started", None)
    monkeypatch.setattr(runtime, "_init_taichi", lambda want: started.append(want) or want)
    with pytest.raises(runtime.ArchError, match="tensors are on cuda:3"):
        runtime.start(torch.device("cuda", 3))
    assert started == [] and runtime.started_arch() is None
    assert runtime.start(torch.device("cuda", 0)) == "cuda" and started == ["cuda"]


class _Stream:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wait_stream(self, other: _Stream) -> None:
        self.log.append(f"{self.name} waits for {other.name}")


@pytest.mark.parametrize("side_stream", [True, False])
def test_taichi_launches_are_ordered_with_torchs_current_stream(monkeypatch, side_stream):
    log: list[str] = []
    default = _Stream("default", log)
    current = _Stream("side", log) if side_stream else default
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    with taichi_stream(torch.device("cuda", 0)):
        log.append("launch")
    expected = ["default waits for side", "launch", "side waits for default"]
    assert log == (expected if side_stream else ["launch"])
    log.clear()
    with taichi_stream(torch.device("cpu")):
        log.append("launch")
    assert log == ["launch"]


def _loader(available: set[str]):
    def load(name: str):
        if name not in available:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    return load


def test_a_missing_unversioned_libcuda_is_named_with_its_fix(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    lib = "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"
    maps.write_text(f"7f00-7f10 r-xp 00000000 08:01 123 {lib}\n")
    problem = libcuda_problem(_loader({"libcuda.so.1"}), maps)
    assert f"ln -sf {lib} ~/.local/lib/cuda/libcuda.so" in problem
    assert "LD_LIBRARY_PATH" in problem and "falls back to the CPU" in problem
    assert libcuda_problem(_loader({"libcuda.so", "libcuda.so.1"}), maps) is None
    assert libcuda_problem(_loader(set()), maps) is None  # no driver: another problem
    # the ArchError of a CUDA start that Taichi served on the CPU says the same
    import taichi as ti

    monkeypatch.setattr(ti, "init", lambda **kwargs: None)
    monkeypatch.setattr(ti.lang.impl, "current_cfg", lambda: SimpleNamespace(arch=ti.x64))
    monkeypatch.setattr(runtime, "libcuda_problem", lambda: problem)
    with pytest.raises(runtime.ArchError) as caught:
        runtime._init_taichi("cuda")
    assert str(caught.value) == problem


@pytest.mark.subprocess
def test_gtok_env_shows_the_libcuda_problem(monkeypatch, runner):
    import gtok.kernels.libcuda
    from gtok.cli.main import app

    monkeypatch.setattr(gtok.kernels.libcuda, "libcuda_problem", lambda: "Taichi loads libcuda.so")
    monkeypatch.setattr(runtime, "start", lambda device: (_ for _ in ()).throw(OSError("no")))
    done = runner.invoke(app, ["env", "--json"])
    assert json.loads(done.stdout)["taichi"]["libcuda_problem"] == "Taichi loads libcuda.so"
    done = runner.invoke(app, ["env"], terminal_width=300)
    assert "libcuda" in done.output and "Taichi loads libcuda.so" in done.output


EXACT = {"cudnn": False, "matmul": False}


@pytest.fixture
def tf32_on():
    """torch's default on CUDA: TF32 in cuDNN convolutions (and here in matmuls too)."""
    before = devices.tf32_settings()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = before["cudnn"]
    torch.backends.cuda.matmul.allow_tf32 = before["matmul"]


def _record_tf32(monkeypatch, module, name: str) -> list[dict]:
    """Wrap module.name to record the TF32 settings in force at each call."""
    seen: list[dict] = []
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        seen.append(devices.tf32_settings())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def test_encode_decode_and_eval_compute_without_tf32_and_record_it(
    tmp_path, monkeypatch, model, shards, store, tf32_on
):
    import gtok.decode.run as decode_run
    import gtok.encode.run as encode_run
    from gtok.decode import decode_store
    from gtok.encode import encode_shards
    from gtok.evaluate import evaluate_model
    from gtok.store.info import store_info

    encoding = _record_tf32(monkeypatch, encode_run, "_tokens")
    decoding = _record_tf32(monkeypatch, decode_run, "decode_batch")
    encode_shards([shards / "shard-0000.tar"], tmp_path / "t.zarr", model, workers=0)
    numerics = {"tf32": EXACT, "precision": "fp32", "batch_size": 64}
    assert store_info(tmp_path / "t.zarr")["numerics"] == numerics
    decode_store(store, tmp_path / "png", limit=2)
    result = evaluate_model([shards / "shard-0000.tar"], model, limit=2, skip_metrics=["rfid"])
    assert result.document["protocol"]["tf32"] == EXACT
    assert encoding and decoding and all(s == EXACT for s in encoding + decoding)
    assert devices.tf32_settings() == {"cudnn": True, "matmul": True}  # restored after


def test_a_store_written_before_numerics_were_recorded_still_opens(tmp_path, store):
    from gtok.store import TokenStore
    from gtok.store.info import store_info

    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    meta = json.loads((old / "zarr.json").read_text())
    assert meta["attributes"]["gtok"].pop("numerics") is not None
    (old / "zarr.json").write_text(json.dumps(meta))
    assert store_info(old)["numerics"] is None
    assert len(TokenStore(old)) == len(TokenStore(store))


@contextlib.contextmanager
def _host_reads() -> Iterator[list[str]]:
    """Record every read of a tensor's value by the host (each a GPU sync on CUDA)."""
    reads: list[str] = []
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    real = {name: getattr(torch.Tensor, name) for name in names}

    def counting(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return real[name](self, *args, **kwargs)

        return read

    for name in names:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield reads
    finally:
        for name in names:
            setattr(torch.Tensor, name, real[name])


def test_a_training_step_reads_the_device_once(monkeypatch):
    from gtok.model.quantizer import VectorQuantizer
    from gtok.model.tokenizer import build_from_config
    from gtok.train import TrainConfig
    from gtok.train.config import tokenizer_config
    from gtok.train.discriminator import PatchDiscriminator
    from gtok.train.distributed import Dist
    from gtok.train.losses import LeCam
    from gtok.train.step import TrainStep

    settings = dict(preset="tiny", shards=("x.tar",), steps=4, batch_size=2, image_size=32)
    cfg = TrainConfig(
        **settings,
        model={"num_gaussians": 16, "codebook_size": 64},
        gan_start_step=0,
        lpips_weight=0,
    ).resolve(None, 1)
    torch.manual_seed(0)
    model = build_from_config(tokenizer_config(cfg)).train()
    disc = PatchDiscriminator().train()
    step = TrainStep(model, disc, LeCam(), None, cfg, Dist(0, 1, torch.device("cpu")), "fp32")
    # dead-code restarts count their codes on the host: a separate, known sync
    monkeypatch.setattr(VectorQuantizer, "_restart_dead_codes", lambda self, flat, counts: None)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    step(images, 0)  # k-means init
    with _host_reads() as reads:
        out = step(images, 1, lambda: (True, False))
    assert reads == ["tolist"]  # finite check and the caller's flags: one read
    assert out.finite and out.flags == [True, False]


def test_the_quantizer_reads_initted_once_and_again_after_a_load(monkeypatch):
    from gtok.model.quantizer import VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=3, dead_threshold=0.0).train()
    inits = []
    real_init = VectorQuantizer._init_codebook
    monkeypatch.setattr(
        VectorQuantizer,
        "_init_codebook",
        lambda self, flat: inits.append(1) or real_init(self, flat),
    )
    x = torch.randn(1, 32, 3)
    vq(x)
    with _host_reads() as reads:
        vq(x)
    assert inits == [1] and reads == []
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.load_state_dict(state)  # initted 1: read once, no second k-means
    vq(x)
    assert inits == [1]
    state["initted"].zero_()
    vq.load_state_dict(state)  # a fresh state: k-means runs again
    vq(x)
    assert inits == [1, 1] and vq.initted.item() == 1.0
