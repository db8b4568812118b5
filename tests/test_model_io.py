"""The model directory: exact save/load round trip, run-directory resolution, weights hash,
and one clear GtokError sentence for each way loading can fail."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from shardmaker import write_clean_shards

import gtok
from gtok.errors import GtokError
from gtok.model.io import FORMAT_VERSION, load_tokenizer, resolve_model_dir, weights_sha256


def _trained_once(preset: str):
    """A tokenizer after one training forward, so the codebook and its EMA are not zeros."""
    model = gtok.build_tokenizer(preset, seed=0)
    size = model.config.image_size
    model(torch.rand(4, 3, size, size) * 2 - 1)
    return model


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    model = _trained_once("vq-tiny")
    directory = tmp_path_factory.mktemp("vq") / "model"
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
def test_save_load_round_trip_is_exact(tmp_path, preset):
    model = _trained_once(preset)
    model.save_pretrained(tmp_path / "m")
    loaded = load_tokenizer(tmp_path / "m")
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert not loaded.training
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key
    model.eval()
    images = torch.rand(2, 3, model.config.image_size, model.config.image_size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).reconstruction, model(images).reconstruction)


def test_config_json_records_format_preset_and_architecture(vq_dir):
    document = json.loads((vq_dir / "config.json").read_text())
    assert document["format_version"] == 1
    assert document["gtok_version"] == gtok.__version__
    assert (document["preset"], document["kind"], document["image_size"]) == ("vq-tiny", "vq", 64)
    assert document["num_tokens"] == 64
    assert document["architecture"] == gtok.PRESETS["vq-tiny"].to_dict()


def test_run_directory_and_file_paths_resolve_to_the_model_directory(vq_dir):
    run_dir = vq_dir.parent  # the model was saved as RUN_DIR/model
    assert resolve_model_dir(run_dir) == vq_dir
    assert resolve_model_dir(vq_dir / "config.json") == vq_dir
    assert resolve_model_dir(vq_dir / "model.safetensors") == vq_dir
    assert load_tokenizer(run_dir).config == gtok.PRESETS["vq-tiny"]


def test_weights_sha256_is_the_hash_of_the_weights_file_and_stable(vq_dir, tmp_path):
    expected = hashlib.sha256((vq_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(vq_dir) == weights_sha256(vq_dir.parent) == expected
    for attempt in range(3):  # safetensors orders a header's metadata randomly: keep one entry
        load_tokenizer(vq_dir).save_pretrained(tmp_path / f"again{attempt}")
        assert weights_sha256(tmp_path / f"again{attempt}") == expected


def _copy(vq_dir, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).write_bytes((vq_dir / name).read_bytes())
    return target


def _edit_config(directory, **changes):
    path = directory / "config.json"
    document = json.loads(path.read_text())
    for key, value in changes.items():
        if key in document["architecture"]:
            document["architecture"][key] = value
        else:
            document[key] = value
    path.write_text(json.dumps(document))


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(GtokError, match=r"nowhere does not exist; give a gtok model directory"):
        load_tokenizer(tmp_path / "nowhere")


def test_directory_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(GtokError, match=r"is not a gtok model directory \(no config.json\)"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "config.json").write_text("{not json"), r"is not valid JSON"),
        (lambda d: (d / "config.json").write_text("{}"), r"has no format_version"),
        (lambda d: _edit_config(d, ch=48), r"invalid architecture: .*multiples of norm_groups 32"),
        (lambda d: _edit_config(d, extra_field=1), None),  # top-level extras are fine
        (  # JSON's Infinity and NaN were blamed on the weights later
            lambda d: _edit_config(d, scale_max_init=float("inf")),
            r"invalid architecture: .*scale_max_init must be a finite number, got inf",
        ),
        (
            lambda d: _edit_config(d, codebook_eps=float("nan")),
            r"invalid architecture: .*codebook_eps must be a finite number, got nan",
        ),
        (
            lambda d: _edit_config(d, dead_threshold=float("-inf")),
            r"invalid architecture: .*dead_threshold must be a finite number, got -inf",
        ),
        (  # a RecursionError traceback
            lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000),
            r"config.json nests arrays or tables more than 64 deep; re-export the model",
        ),
        (  # read whole, however large
            lambda d: _edit_config(d, padding="x" * (1 << 20)),
            r"config.json is larger than 1 MiB, the most gtok reads of it; re-export the model",
        ),
        (lambda d: (d / "model.safetensors").unlink(), r"has config.json but no model.safetensors"),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"garbage"),
            r"is not a readable safetensors file",
        ),
        (
            lambda d: _edit_weights(d, lambda t: t.pop("quantize.embed")),
            r"lacks 1 tensor\(s\) that its config.json needs \(quantize.embed\)",
        ),
        (
            lambda d: _edit_weights(d, lambda t: t.update(extra=torch.zeros(1))),
            r"has 1 tensor\(s\) that its config.json does not build \(extra\)",
        ),
        (
            lambda d: _edit_config(d, codebook_size=512),
            r"has 3 tensor\(s\) of the wrong shape .*quantize.cluster_size \[1024\] != \[512\]",
        ),
    ],
)
def test_each_loading_failure_is_one_clear_sentence(vq_dir, tmp_path, breakage, message):
    directory = _copy(vq_dir, tmp_path)
    breakage(directory)
    if message is None:
        load_tokenizer(directory)
        return
    with pytest.raises(GtokError, match=message) as info:
        load_tokenizer(directory)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("version", "writer", "next_step"),
    [
        (FORMAT_VERSION + 1, "9.0.0", "upgrade gtok (pip install -U gtok) to read it."),
        (0, "0.0.1", "read it with the gtok that wrote it."),
        ("2", None, "read it with the gtok that wrote it."),
    ],
)
def test_another_format_version_names_the_gtok_that_reads_it(
    vq_dir, tmp_path, version, writer, next_step
):
    directory = _copy(vq_dir, tmp_path)
    _edit_config(directory, format_version=version, gtok_version=writer)
    with pytest.raises(GtokError) as info:
        load_tokenizer(directory)
    wrote = f"gtok {writer}" if writer else "an unknown gtok"
    assert str(info.value) == (
        f"the model config {directory / 'config.json'} has format version {version!r}, "
        f"written by {wrote}; this gtok ({gtok.__version__}) reads format version "
        f"{FORMAT_VERSION}: {next_step}"
    )


# ---- the recorded sha256 is that of the weights used ------------------------


def _re_export(model_dir: Path, weights_from: Path) -> None:
    """Replace `model_dir`'s weights with those of `weights_from` as `save_pretrained` does
    (a complete file renamed over the old one), e.g. a training run exporting its model."""
    replacement = model_dir / "model.safetensors.new"
    shutil.copyfile(weights_from / "model.safetensors", replacement)
    os.replace(replacement, model_dir / "model.safetensors")


def _sha256_of_the_weights_in(model: torch.nn.Module, *model_dirs: Path) -> str:
    """The sha256 of whichever of the `model_dirs`' weights files `model` holds."""
    state = model.state_dict()
    for directory in model_dirs:
        tensors = load_file(directory / "model.safetensors")
        if all(torch.equal(state[name].cpu(), tensors[name]) for name in tensors):
            return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    raise AssertionError("the model holds none of the weights")


def test_a_store_records_the_sha256_of_the_weights_that_encoded_it(tmp_path, monkeypatch):
    """The model is re-exported while encode starts, after its weights were loaded: the
    store must name the weights that made its tokens, not the file's new content."""
    from test_encode import SMALL, _save_model

    from gtok.encode import encode_shards
    from gtok.encode import model as encode_model
    from gtok.store import TokenStore

    model = _save_model(tmp_path / "model", seed=0, **SMALL)
    original = _save_model(tmp_path / "original", seed=0, **SMALL)  # a copy of model/
    newer = _save_model(tmp_path / "newer", seed=1, **SMALL)
    used: list[torch.nn.Module] = []
    check_finite = encode_model._check_finite

    def re_exported_meanwhile(tokenizer, path):
        used.append(tokenizer)
        _re_export(model, newer)
        check_finite(tokenizer, path)

    monkeypatch.setattr(encode_model, "_check_finite", re_exported_meanwhile)
    write_clean_shards(tmp_path / "data", 1, 2)
    encode_shards([tmp_path / "data"], tmp_path / "t.zarr", model, batch_size=2, workers=0)
    recorded = TokenStore(tmp_path / "t.zarr").weights_sha256
    assert recorded == _sha256_of_the_weights_in(used[0], original, newer)
