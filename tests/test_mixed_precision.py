"""bf16 autocast on the CPU: `gtok train`, encode and decode run their
mixed-precision path here, so dtype errors in it show without a GPU; the parts DESIGN pins to
fp32 (GaussianEmbed, quantizer, rasterizer) really compute in fp32 under it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from shardmaker import write_clean_shards, write_tar
from test_encode import SMALL as SMALL_ENCODE
from test_encode import _save_model
from test_train import _config, _gradients

import gtok
import gtok.model.tokenizer as tokenizer_module
from gtok.cli.main import app
from gtok.decode import decode_store
from gtok.devices import mixed_precision
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.store import TokenStore
from gtok.train import train
from gtok.train.step import resolve_precision

CPU = torch.device("cpu")


def _float_outputs(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, tuple | list):
        return [t for item in output for t in _float_outputs(item)]
    return []


def _record_dtypes(module: torch.nn.Module, seen: dict[str, set]) -> list:
    """Forward hooks on `module` and every submodule: name -> dtypes of its float outputs."""

    def hook(name):
        return lambda _m, _i, out: seen.setdefault(name, set()).update(
            t.dtype for t in _float_outputs(out)
        )

    return [m.register_forward_hook(hook(n)) for n, m in module.named_modules()]


def test_bf16_autocast_on_the_cpu_keeps_the_pinned_parts_in_fp32(monkeypatch):
    tok = gtok.build_tokenizer("tiny", seed=0, **SMALL_ENCODE)
    pinned: dict[str, set] = {}
    encoder: dict[str, set] = {}
    hooks = _record_dtypes(tok.gaussian_embed, pinned) + _record_dtypes(tok.quantize, pinned)
    hooks += _record_dtypes(tok.encoder, encoder)
    rasterized = []
    original = tokenizer_module.rasterize

    def spy(*args, **kw):
        out = original(*args, **kw)
        rasterized.append({*(a.dtype for a in args[:4]), out.dtype})
        return out

    monkeypatch.setattr(tokenizer_module, "rasterize", spy)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with mixed_precision(CPU, "bf16"):
        out = tok(images)
        out.reconstruction.float().mean().backward()
        tokens = tok.eval().encode(images)
        decoded = tok.decode(tokens)
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in encoder[""]  # autocast really was on for the CNN
    assert len(pinned) > 20 and all(d <= {torch.float32} for d in pinned.values()), pinned
    assert rasterized and all(d == {torch.float32} for d in rasterized)
    assert tokens.geometry.dtype == torch.float32 and torch.isfinite(tokens.geometry).all()
    assert torch.isfinite(out.reconstruction).all() and torch.isfinite(decoded).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in tok.parameters())


def test_precision_choices_per_device():
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(GtokError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_training_in_bf16_on_the_cpu(tmp_path):
    write_tar(tmp_path / "train" / "t.tar", _gradients(4, start=0))
    write_tar(tmp_path / "val" / "v.tar", _gradients(4, start=100))
    data = {"train": tmp_path / "train", "val": tmp_path / "val"}
    result = train(_config(data, steps=2, precision="bf16", gan_start_step=1), tmp_path / "run")
    assert result.step == 2 and result.stopped is None
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["resolved"]["precision"] == "bf16"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
    assert any("gen" in r for r in steps)  # the discriminator's path ran under autocast too


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL_ENCODE)


def test_encode_and_decode_in_bf16_on_the_cpu(tmp_path, model, runner):
    shards = write_clean_shards(tmp_path / "shards", shards=1, per_shard=6)
    kw = {"batch_size": 4, "workers": 0}
    exact = encode_shards(shards, tmp_path / "fp32.zarr", model, **kw)
    mixed = encode_shards(shards, tmp_path / "bf16.zarr", model, precision="bf16", **kw)
    assert mixed.encoded == exact.encoded == 6
    a, b = TokenStore(tmp_path / "fp32.zarr"), TokenStore(tmp_path / "bf16.zarr")
    assert b.header.numerics["precision"] == "bf16"
    assert a.header.numerics["precision"] == "fp32"
    ga, gb = a[0:6]["geometry"].astype(np.float32), b[0:6]["geometry"].astype(np.float32)
    assert np.isfinite(gb).all() and np.abs(ga - gb).max() < 0.25  # bf16 keeps 8 bits
    with pytest.raises(GtokError, match="precision bf16, not fp32"):
        encode_shards(shards, tmp_path / "bf16.zarr", model, **kw)
    out32 = decode_store(tmp_path / "fp32.zarr", tmp_path / "png32")
    out16 = decode_store(tmp_path / "fp32.zarr", tmp_path / "png16", precision="bf16")
    assert out16.written == out32.written == 6
    result = runner.invoke(
        app,
        ["decode", str(tmp_path / "fp32.zarr"), "-o", str(tmp_path / "x"), "--precision", "fp16"],
    )
    assert result.exit_code == 2  # not a choice


def test_decoded_bf16_images_are_close_to_fp32(tmp_path, model):
    from gtok.decode import decode_batch
    from gtok.encode import load_encoding_model

    shards = write_clean_shards(tmp_path / "shards", shards=1, per_shard=4)
    encode_shards(shards, tmp_path / "t.zarr", model, batch_size=4, workers=0)
    batch = TokenStore(tmp_path / "t.zarr", format="torch").batch(np.arange(4))
    loaded = load_encoding_model(model, "cpu")
    exact, mixed = decode_batch(loaded, batch), decode_batch(loaded, batch, "bf16")
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert (exact - mixed).abs().mean() < 0.05
