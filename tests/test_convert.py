"""`gtok convert-official` on synthetic checkpoints built from the authors' key and shape lists
(their real checkpoints cannot be downloaded here)."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from gtok.cli.main import app
from gtok.errors import GtokError
from gtok.model.convert import convert_official, convert_state_dict, official_keys
from gtok.model.io import load_tokenizer

LPIPS_KEY = "loss.perceptual_loss.net.slice1.0.weight"  # not in the key lists, dropped


def _synthetic_state(preset: str, device: str = "cpu", ema: bool = True) -> dict:
    """A Lightning `state_dict` with every listed key at its listed shape, distinct random
    values, EMA shadows that differ from the live weights, and LPIPS/EMA bookkeeping keys."""
    generator = torch.Generator().manual_seed(0)
    shapes, ema_map = official_keys(preset)

    def tensor(shape, key=""):
        if device == "meta":
            return torch.empty(shape, device="meta")
        if key.endswith("num_batches_tracked"):
            return torch.tensor(7)
        if key.endswith("current_range_max"):
            return torch.tensor(3.5)
        return torch.rand(shape, generator=generator) + 0.5

    state = {key: tensor(shape, key) for key, shape in shapes.items()}
    state[LPIPS_KEY] = tensor((64, 3, 3, 3))
    if ema:
        for shadow, param in ema_map.items():
            state[shadow] = tensor(shapes[param])
        state["model_ema.decay"] = tensor(())
        state["model_ema.num_updates"] = torch.tensor(1000) if device != "meta" else tensor(())
    return state


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    state = _synthetic_state("cifar")
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"epoch": 29, "global_step": 1234, "state_dict": state}, path)
    return path, state


@pytest.fixture(scope="module")
def cifar_converted(cifar_checkpoint, tmp_path_factory):
    path, _ = cifar_checkpoint
    out = tmp_path_factory.mktemp("conv") / "cifar"
    report = convert_official(path, out)
    return out, report


@pytest.mark.slow
def test_every_official_tensor_lands_in_exactly_one_model_tensor(cifar_checkpoint, cifar_converted):
    """Matched by value (the synthetic tensors are distinct random draws), independently of
    the converter's name map: each kept official tensor (its EMA value when it has one)
    appears once in the converted model, and nothing in the model comes from elsewhere."""
    _, state = cifar_checkpoint
    out, report = cifar_converted
    shapes, ema_map = official_keys("cifar")
    shadow_of = {param: shadow for shadow, param in ema_map.items()}
    dropped_prefixes = ("gs_embed.op_module_map.", "loss.")
    dropped = ("to_features.", "range_scheduler.")
    kept = {
        k
        for k in shapes
        if not k.startswith(dropped_prefixes)
        and not (k.startswith(("gs_embed.layers.2.", "gs_embed.layers.5.")) and dropped[0] in k)
        and not (k.startswith(("gs_embed.layers.2.", "gs_embed.layers.5.")) and dropped[1] in k)
    }
    model_state = load_tokenizer(out).state_dict()

    def fingerprint(t: torch.Tensor) -> tuple:
        return tuple(t.float().flatten().tolist())

    ours = collections.Counter(fingerprint(t) for t in model_state.values())
    expected = collections.Counter(
        fingerprint(state[shadow_of.get(k, k)] if k in shadow_of else state[k]) for k in kept
    )
    assert ours == expected
    assert report.tensors_written == len(model_state) == len(kept)


def test_names_ema_and_buffers_land_where_the_paper_says(cifar_checkpoint, cifar_converted):
    _, state = cifar_checkpoint
    out, report = cifar_converted
    model = load_tokenizer(out).state_dict()
    ema = "model_ema."
    checks = {
        "encoder.conv_in.weight": state[f"{ema}img_encoderconv_inweight"],
        "decoder.up.1.upsample.conv1.bias": state[f"{ema}img_decoderup1upsampleconv1bias"],
        "gaussian_embed.layers.4.identity_fc.weight": state[
            f"{ema}gs_embedlayers4identity_fcweight"
        ],
        "gaussian_embed.layers.8.layers.11.scale": state[f"{ema}gs_embedlayers8layers11scale"],
        "gaussian_embed.layers.8.to_features.10.weight": state[
            f"{ema}gs_embedlayers8to_features10weight"
        ],
        "gaussian_embed.layers.0.layers.1.cross_attn.value_proj.weight": state[
            f"{ema}gs_embedlayers0layers1cross_attnvalue_projweight"
        ],
        # not trainable: no EMA shadow, the live value
        "gaussian_embed.gaussian_lifter.instance_feature": state[
            "gs_embed.gaussian_lifter.instance_feature"
        ],
        # buffers: live values, codebook without its group axis
        "gaussian_embed.layers.8.range_scheduler.current_range_max": state[
            "gs_embed.layers.8.range_scheduler.current_range_max"
        ],
        "quantize.embed": state["quantize._codebook.embed"][0],
        "quantize.cluster_size": state["quantize._codebook.cluster_size"][0],
    }
    for name, value in checks.items():
        assert torch.equal(model[name], value), name
    # 588 shadows, less those of dropped parameters: 83 template ops (87 keys less 4 frozen
    # fixed_offsets), 30 unused feature heads, 13 discriminator weights
    assert report.taken_from_ema == 588 - 83 - 30 - 13
    assert report.dropped == {
        "template copies of each op, never run in the forward pass": 87,
        "feature heads of the first two refines, unused": 30,
        "scale ranges of the first two refines; only the last refine's r_max shapes Gaussians": 2,
        "training losses (discriminator, LPIPS), not part of the tokenizer": 22 + 1,
        "EMA bookkeeping": 2,
    }


def test_converted_model_runs(cifar_converted):
    out, _ = cifar_converted
    model = load_tokenizer(out)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(images)
        assert tokens.indices.shape == (1, 64) and tokens.geometry.shape == (1, 64, 5)
        assert model.decode(tokens).shape == (1, 3, 32, 32)
    assert json.loads((out / "config.json").read_text())["preset"] == "cifar"


def test_imagenet_mapping_names_and_shapes_fit():
    converted, report = convert_state_dict(_synthetic_state("imagenet", device="meta"))
    assert report.preset == "imagenet"  # inferred from the 256 anchors
    assert report.tensors_written == len(converted)
    assert "gaussian_embed.layers.8.to_features.10.weight" in converted
    assert converted["quantize.embed"].shape == (1024, 8)


def test_no_ema_keeps_the_live_weights():
    without = _synthetic_state("cifar", device="meta", ema=False)
    with pytest.raises(GtokError, match=r"lacks 588 EMA weight\(s\).*ema=False"):
        convert_state_dict(without, "cifar")
    state = _synthetic_state("cifar", device="meta")
    converted, report = convert_state_dict(state, "cifar", ema=False)
    assert report.taken_from_ema == 0
    assert report.dropped["EMA weights, not used (--no-ema)"] == 588
    assert converted["encoder.conv_in.weight"] is state["img_encoder.conv_in.weight"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("img_decoder.conv_out.bias"), r"lacks 1 key\(s\) of the authors' cifar"),
        (lambda s: s.update(surprise=torch.zeros(1)), r"has 1 key\(s\) the authors' cifar model"),
        (
            lambda s: s.update({"img_encoder.conv_in.weight": torch.zeros(128, 3, 5, 5)}),
            r"unexpected shape \(e.g. img_encoder.conv_in.weight is \[128, 3, 5, 5\]",
        ),
        (
            lambda s: s.update({"model_ema.img_encoderconv_inweight": torch.zeros(1)}),
            r"EMA weight model_ema.img_encoderconv_inweight has shape \[1\]",
        ),
        (
            lambda s: s.update({"gs_embed.gaussian_lifter.anchor": torch.zeros(100, 69)}),
            r"not a GaussianToken checkpoint of a known config",
        ),
    ],
)
def test_mismatching_checkpoints_are_one_sentence_errors(edit, message):
    state = _synthetic_state("cifar", device="meta")
    edit(state)
    with pytest.raises(GtokError, match=message):
        convert_state_dict(state)


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": collections.OrderedDict, "x": _Opaque()}, path
    )
    with pytest.raises(GtokError, match=r"holds pickled Python objects besides tensors \(such as"):
        convert_official(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _Opaque:
    pass


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(GtokError, match="does not exist or is not a file"):
        convert_official(tmp_path / "nope.ckpt", tmp_path / "out")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(GtokError, match="is not a readable PyTorch checkpoint"):
        convert_official(tmp_path / "bad.ckpt", tmp_path / "out")
    torch.save({"state_dict": [1, 2]}, tmp_path / "odd.ckpt")
    with pytest.raises(GtokError, match="has no state_dict of tensors"):
        convert_official(tmp_path / "odd.ckpt", tmp_path / "out")


@pytest.mark.slow
def test_cli_converts_and_reports_json(cifar_checkpoint, tmp_path, runner):
    path, _ = cifar_checkpoint
    result = runner.invoke(
        app, ["convert-official", str(path), "-o", str(tmp_path / "m"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["preset"] == "cifar" and report["tensors_written"] > 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_cli_error_is_one_red_line(tmp_path, runner):
    result = runner.invoke(app, ["convert-official", str(tmp_path / "x.ckpt"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "does not exist or is not a file" in result.output
    assert "Traceback" not in result.output
