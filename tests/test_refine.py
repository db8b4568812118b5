"""Encode-time geometry refinement (`gtok.model.refine`, `tok.encode(refine_steps=...)`,
`gtok encode/eval --refine-steps`).

Covers: refinement lowers every image's reconstruction loss and keeps the geometry in the
model's ranges; the model's weights get no gradient; refinement is deterministic and each
image's result does not depend on the rest of its batch; it works under inference mode;
each loss wins on its own objective; the step size warms up, then decays; the store
records the settings, refuses a resume with other settings (or another optimizer), and two
workers equal one process; bad values and VQ models get one error line.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zarr
from shardmaker import write_clean_shards
from test_encode import SMALL, _save_model
from test_store import assert_same_store

import gtok
from gtok.cli.main import app
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.model.refine import FINAL_FRACTION, RefineSettings, _step_size
from gtok.store import TokenStore, finalize_store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def tok(model_dir):
    return gtok.load_tokenizer(model_dir).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_clean_shards(folder, 2, 3)
    return folder


def _pixels(tok, tokens) -> torch.Tensor:
    """The decoded images as refinement scores them: clamped to [-1, 1], as pixels are."""
    return tok.decode(tokens).clamp(-1.0, 1.0)


def _l1(tok, tokens, images) -> torch.Tensor:
    return (_pixels(tok, tokens) - images).abs().mean(dim=(1, 2, 3))


def test_refinement_lowers_every_images_loss_within_the_models_ranges(tok, images):
    plain = tok.encode(images)
    refined = tok.encode(images, refine_steps=15, refine_lr=0.1, refine_loss="l1")
    assert torch.equal(refined.indices, plain.indices)  # codes fixed
    assert (_l1(tok, refined, images) < _l1(tok, plain, images) - 1e-3).all()
    g = refined.geometry
    r_max = float(tok.gaussian_embed.scale_range.r_max)
    assert g[..., 0:2].abs().max() <= 1.0
    assert g[..., 2:4].min() >= tok.config.scale_min and g[..., 2:4].max() <= r_max + 1e-6
    assert g[..., 4].min() >= 0.0 and g[..., 4].max() < math.pi
    assert (g - plain.geometry).abs().max() > 1e-3  # it moved


@pytest.mark.slow
def test_each_loss_lowers_its_own_objective_more_than_the_other_does(tok, images):
    """psnr (the default), mse and l1 refine toward different optima: squared-error losses
    win on the squared error, l1 on the absolute error."""
    plain = tok.encode(images)
    by_loss = {
        loss: tok.encode(images, refine_steps=30, refine_loss=loss)
        for loss in ("psnr", "mse", "l1")
    }
    assert torch.equal(by_loss["psnr"].geometry, tok.encode(images, refine_steps=30).geometry)
    assert not torch.equal(by_loss["psnr"].geometry, by_loss["mse"].geometry)

    def mse(tokens):
        return (_pixels(tok, tokens) - images).square().mean(dim=(1, 2, 3))

    for squared in ("psnr", "mse"):
        assert (mse(by_loss[squared]) < mse(plain)).all()
        assert mse(by_loss[squared]).sum() < mse(by_loss["l1"]).sum()
    assert mse(by_loss["psnr"]).log().sum() < mse(by_loss["l1"]).log().sum()
    assert _l1(tok, by_loss["l1"], images).sum() < _l1(tok, by_loss["mse"], images).sum()


def test_step_size_warms_up_then_decays():
    sizes = [_step_size(0.2, step, 50) for step in range(1, 51)]
    assert sizes[:11] == sorted(sizes[:11]) and max(sizes) == pytest.approx(0.2)
    assert sizes[10:] == sorted(sizes[10:], reverse=True)
    assert sizes[-1] == pytest.approx(0.2 * FINAL_FRACTION) and sizes[0] < sizes[-1]
    assert 0 < _step_size(0.2, 1, 1) < 0.2  # a single step is still damped


def test_weights_get_no_gradient_and_do_not_change(tok, images):
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    tok.encode(images, refine_steps=3)
    assert all(p.grad is None for p in tok.parameters())
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())


def test_deterministic_and_independent_of_the_batch(tok, images):
    whole = tok.encode(images, refine_steps=5)
    again = tok.encode(images, refine_steps=5)
    assert torch.equal(whole.geometry, again.geometry)
    alone = tok.encode(images[2:3], refine_steps=5)
    torch.testing.assert_close(alone.geometry[0], whole.geometry[2], atol=2e-5, rtol=0)


def test_inference_mode_callers_and_zero_steps(tok, images):
    with torch.inference_mode():
        refined = tok.encode(images, refine_steps=4)
        plain = tok.encode(images, refine_steps=0)
    assert torch.equal(refined.geometry, tok.encode(images, refine_steps=4).geometry)
    assert torch.equal(plain.geometry, tok.encode(images).geometry)


def test_bad_settings_are_value_errors():
    bad_values = [{"steps": -1}, {"steps": 1.5}, {"lr": 0.0}, {"lr": float("nan")}]
    for bad in (*bad_values, {"loss": "l2"}):
        with pytest.raises(ValueError):
            RefineSettings(**bad)


# ---- token stores ---------------------------------------------------------------------------


def _encode(shards, out, model, **kw):
    return encode_shards([shards], out, model, batch_size=2, workers=0, **kw)


def test_store_records_refinement_and_matches_the_library(tmp_path, model_dir, tok, shards):
    settings = RefineSettings(steps=3, lr=0.05)
    _encode(shards, tmp_path / "r.zarr", model_dir, refine=settings)
    store = TokenStore(tmp_path / "r.zarr")
    record = zarr.open_group(str(tmp_path / "r.zarr"), mode="r").attrs["gtok"]["refinement"]
    assert record["steps"] == 3 and record["lr"] == 0.05
    _encode(shards, tmp_path / "plain.zarr", model_dir)
    plain = TokenStore(tmp_path / "plain.zarr")
    assert (
        zarr.open_group(str(tmp_path / "plain.zarr"), mode="r").attrs["gtok"]["refinement"] is None
    )
    rows = np.arange(len(store))
    assert np.array_equal(store[rows]["indices"], plain[rows]["indices"])
    assert not np.array_equal(store[rows]["geometry"], plain[rows]["geometry"])


def test_resume_with_other_refinement_is_refused(tmp_path, model_dir, shards, runner):
    out = tmp_path / "t.zarr"
    _encode(shards / "shard-0000.tar", out, model_dir, refine=RefineSettings(steps=2))
    with pytest.raises(GtokError, match=r"geometry refinement steps=2.*not off"):
        _encode(shards / "shard-0000.tar", out, model_dir)
    with pytest.raises(GtokError, match="geometry refinement"):
        _encode(shards / "shard-0000.tar", out, model_dir, refine=RefineSettings(steps=3))
    l1 = RefineSettings(steps=2, loss="l1")
    with pytest.raises(GtokError, match=r"loss=psnr, optimizer=\S+, not steps=2, lr=0.2, loss=l1"):
        _encode(shards / "shard-0000.tar", out, model_dir, refine=l1)
    _encode(shards / "shard-0000.tar", out, model_dir, refine=RefineSettings(steps=2))  # resumes


def test_a_store_refined_with_an_older_optimizer_is_not_resumed(tmp_path, model_dir, shards):
    """Tokens depend on the optimizer: a store from gtok's earlier cosine schedule is refused."""
    out = tmp_path / "old.zarr"
    _encode(shards / "shard-0000.tar", out, model_dir, refine=RefineSettings(steps=2))
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["gtok"]["refinement"]["optimizer"] = "adam-cosine"
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(GtokError, match=r"optimizer=adam-cosine, not .*optimizer=adam-warmup"):
        _encode(shards / "shard-0000.tar", out, model_dir, refine=RefineSettings(steps=2))


def test_two_refining_workers_equal_one_process(tmp_path, model_dir, shards):
    settings = RefineSettings(steps=2)
    for worker in (0, 1):
        _encode(
            shards, tmp_path / "two.zarr", model_dir, refine=settings, shard_id=worker, num_shards=2
        )
    finalize_store(str(tmp_path / "two.zarr"))
    _encode(shards, tmp_path / "one.zarr", model_dir, refine=settings)
    assert_same_store(tmp_path / "two.zarr", tmp_path / "one.zarr")


def test_cli_refine_options(tmp_path, model_dir, shards, runner):
    out = tmp_path / "c.zarr"
    common = [str(shards / "shard-0000.tar"), "-o", str(out), "-m", str(model_dir)]
    result = runner.invoke(app, ["encode", *common, "--refine-steps", "-1"])
    assert result.exit_code == 1 and "--refine-steps must be" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = runner.invoke(app, ["encode", *common, "--refine-steps", "2", "--refine-loss", "l2"])
    assert result.exit_code == 2  # a usage error listing the choices, before any work
    assert "'--refine-loss': 'l2' is not one of 'psnr', 'mse', 'l1'" in result.stderr
    args = ["encode", *common, "--workers", "0", "--refine-steps", "2", "--refine-lr", "0.3"]
    result = runner.invoke(app, [*args, "--refine-loss", "l1", "--json"])
    assert result.exit_code == 0, result.stderr
    info = runner.invoke(app, ["info", str(out), "--json"])
    record = json.loads(info.stdout)["refinement"]
    assert (record["lr"], record["loss"]) == (0.3, "l1")


def test_vq_model_refuses_refinement(tmp_path, shards, runner):
    vq = _save_model(tmp_path / "vq", seed=0, preset="vq-tiny", image_size=16, ch_mult=(1, 2),
                     map_size=8, num_res_blocks=1, codebook_size=64)  # fmt: skip
    result = runner.invoke(
        app,
        [
            "encode",
            str(shards),
            "-o",
            str(tmp_path / "v.zarr"),
            "-m",
            str(vq),
            "--refine-steps",
            "2",
        ],
    )
    assert result.exit_code == 1 and "VQ model" in result.stderr


def test_a_store_written_before_refinement_was_recorded_opens_and_resumes(
    tmp_path, model_dir, shards
):
    old = tmp_path / "old.zarr"
    _encode(shards / "shard-0000.tar", old, model_dir)
    meta = json.loads((old / "zarr.json").read_text())
    assert meta["attributes"]["gtok"].pop("refinement", "absent") is None
    (old / "zarr.json").write_text(json.dumps(meta))
    assert TokenStore(old).refinement is None
    assert _encode(shards / "shard-0000.tar", old, model_dir).shards_already_done == 1
    with pytest.raises(GtokError, match="geometry refinement off, not steps=2"):
        _encode(shards / "shard-0000.tar", old, model_dir, refine=RefineSettings(steps=2))


def test_eval_refine_steps_against_the_unrefined_model(model_dir, shards, runner):
    args = ["eval", str(shards), "-m", str(model_dir), "--compare", str(model_dir)]
    args += ["--workers", "0", "--skip", "lpips-vgg", "--skip", "lpips-alex", "--skip", "rfid"]
    result = runner.invoke(app, [*args, "--refine-steps", "10", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"]["refinement"]["steps"] == 10
    assert document["compare"]["model"]["refinement"] is None
    assert document["psnr"] > document["compare"]["psnr"]
    result = runner.invoke(
        app, ["eval", "--reference", str(shards), "--reconstructed", "x", "--refine-steps", "2"]
    )
    assert result.exit_code == 2 and "--refine-steps applies when eval encodes" in result.stderr
