"""Token layouts (`gtok encode --layout raster|codebook`, `gtok.store.layouts`): recorded in
the header, followed by `sequences` / `from_sequences` / `vocabulary` / decode, and the
refusals around them (`gtok fit-codebook` fits the codebook)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scriptkit import ROOT, script_module
from test_encode import SMALL
from test_token_stream import _check_prior, _run_prior, model, shards  # noqa: F401 (fixtures)

import gtok
from gtok.cli.main import app
from gtok.errors import GtokError
from gtok.store import TokenStore
from gtok.store.geometry_bins import from_unit, to_unit
from gtok.store.geometry_codebook import (
    GeometryCodebook,
    file_sha256,
    fit_codebook,
    from_shape_space,
    load_codebook,
    to_shape_space,
)
from gtok.store.layouts import raster_order
from gtok.store.sequences import Vocabulary

G = SMALL["num_gaussians"]


def _cli(runner, *args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, model, shards) -> dict[str, Path]:  # noqa: F811
    """The same shards as float32 geometry, 6-bit fields, 6-bit raster and a codebook
    layout (16 entries, fitted on the fields store), all written by `gtok encode`."""
    from typer.testing import CliRunner

    runner, folder = CliRunner(), tmp_path_factory.mktemp("layouts")
    out = {name: folder / f"{name}.zarr" for name in ("float", "fields", "raster", "codebook")}
    common = ["encode", str(shards), "-m", str(model), "--batch-size", "4", "--workers", "0"]
    _cli(runner, *common, "-o", str(out["float"]), "--geometry-dtype", "float32")
    _cli(runner, *common, "-o", str(out["fields"]), "--geometry-bits", "6")
    _cli(runner, *common, "-o", str(out["raster"]), "--geometry-bits", "6", "--layout", "raster")
    out["codebook.npz"] = folder / "codebook.npz"
    _cli(runner, "fit-codebook", str(out["fields"]), "--size", "16", "-o", str(out["codebook.npz"]))
    codebook = ["--layout", "codebook", "--geometry-codebook", str(out["codebook.npz"])]
    _cli(runner, *common, "-o", str(out["codebook"]), *codebook)
    return out


def _decode(model_dir: Path, tokens) -> torch.Tensor:
    return gtok.load_tokenizer(model_dir).eval().decode(tokens)


def _stored(store: TokenStore) -> gtok.Tokens:
    rows = store[0 : len(store)]
    return gtok.Tokens(torch.from_numpy(rows["indices"]), torch.from_numpy(rows["geometry"]))


def _check_round_trip(path: Path, model_dir: Path) -> TokenStore:
    """from_sequences(sequences()) gives the stored tokens back and decodes like them."""
    store = TokenStore(path)
    tokens = store.from_sequences(store.sequences())
    stored = _stored(store)
    assert torch.equal(tokens.indices, stored.indices.long())
    assert torch.equal(tokens.geometry.half(), stored.geometry)
    assert torch.allclose(_decode(model_dir, tokens), _decode(model_dir, stored), atol=1e-2)
    return store


def test_an_older_store_and_a_default_encode_read_as_the_fields_layout(layouts):
    store = TokenStore(layouts["fields"])
    assert "layout" not in store.attrs  # as every store written before layouts
    assert store.layout == "fields" and store.vocabulary == Vocabulary(64, 64)


def test_raster_layout_sorts_every_array_alike_and_decodes_the_same_images(layouts, model):  # noqa: F811
    store = _check_round_trip(layouts["raster"], model)
    assert store.attrs["layout"] == {"name": "raster"} and store.layout == "raster"
    assert store.vocabulary == Vocabulary(64, 64)  # the same ids, in another order
    fields = TokenStore(layouts["fields"], fields=("indices", "geometry", "geometry_codes"))
    raster = TokenStore(layouts["raster"], fields=("indices", "geometry", "geometry_codes"))
    a, b = fields[0 : len(fields)], raster[0 : len(raster)]
    order = raster_order(a["geometry_codes"], 64)
    for name in ("indices", "geometry", "geometry_codes"):
        expected = np.take_along_axis(
            a[name], order.reshape(*order.shape, *[1] * (a[name].ndim - 2)), 1
        )
        assert np.array_equal(b[name], expected), name
    assert not np.array_equal(a["indices"], b["indices"])  # the order did change
    band = (b["geometry_codes"][..., 1].astype(int) * 3) // 64  # round(sqrt(8)) = 3 bands
    assert (np.diff(band, axis=1) >= 0).all()
    assert torch.allclose(
        _decode(model, _stored(raster)), _decode(model, _stored(fields)), atol=1e-4
    )


def test_codebook_layout_is_two_ids_per_gaussian_decoded_from_the_centroids(layouts, model):  # noqa: F811
    store = _check_round_trip(layouts["codebook"], model)
    record = store.attrs["geometry_codebook"]
    codebook = load_codebook(layouts["codebook.npz"])
    size = codebook.size  # at most the 16 asked for: the fit drops entries nobody chose
    assert 8 <= size <= 16 and codebook.rate_weight > 0  # the tool's default is entropy-constrained
    assert store.attrs["layout"] == {"name": "codebook"} and record["size"] == size
    assert record["path"] == str(layouts["codebook.npz"].resolve())
    assert store.vocabulary == Vocabulary(64, None, size)
    assert store.vocabulary.to_dict()["fields"][1] == {
        "name": "geometry",
        "offset": 64,
        "size": size,
    }
    ids = store.sequences()
    assert ids.shape == (len(store), G * 2) and (ids[:, 1::2] >= 64).all()
    exact = TokenStore(layouts["float"])[0 : len(store)]
    rows = TokenStore(layouts["codebook"], fields=("indices", "geometry_ids"))[0 : len(store)]
    assert np.array_equal(rows["geometry_ids"], codebook.quantize(exact["geometry"]))
    assert np.array_equal(ids[:, 1::2] - 64, rows["geometry_ids"])
    assert np.array_equal(ids[:, 0::2], exact["indices"])


def test_codebook_fit_is_deterministic_and_nearer_than_the_anchors(layouts):
    geometry = TokenStore(layouts["float"])[0:10]["geometry"]
    one, two = (fit_codebook(geometry, 8, 0.1, 3.0, seed=3) for _ in range(2))
    assert np.array_equal(one.centroids, two.centroids)
    residuals = one.residuals(geometry)
    error = residuals - one.centroids[one.quantize(geometry).astype(int)]
    assert (error**2).sum(-1).mean() < (residuals**2).sum(-1).mean()


def _entropy_bits(ids: np.ndarray) -> float:
    """Empirical entropy of ids (bits per id)."""
    shares = np.bincount(ids.ravel()) / ids.size
    shares = shares[shares > 0]
    return float(-(shares * np.log2(shares)).sum())


def test_a_rate_weight_trades_distortion_for_cheaper_ids_and_survives_a_file(tmp_path):
    rng = np.random.default_rng(1)
    geometry = np.concatenate(
        [rng.normal(0, 0.3, (400, 16, 2)), np.exp(rng.normal(0, 0.3, (400, 16, 2))),
         rng.uniform(0, np.pi, (400, 16, 1))], axis=-1,
    )  # fmt: skip
    fits = [fit_codebook(geometry, 64, 0.1, 3.0, rate_weight=rate) for rate in (0.0, 2e-3)]
    ids = [fit.quantize(geometry) for fit in fits]
    errors = [
        ((fit.residuals(geometry) - fit.centroids[i.astype(int)]) ** 2).sum(-1).mean()
        for fit, i in zip(fits, ids, strict=True)
    ]
    assert _entropy_bits(ids[1]) < _entropy_bits(ids[0]) - 0.5 and errors[1] > errors[0]
    assert fits[1].size < 64 and np.bincount(ids[1].ravel(), minlength=fits[1].size).min() > 0
    # the lengths are the fitted shares, and quantize pays them: plain nearest differs
    assert np.allclose(
        2.0 ** -fits[1].entry_bits, np.bincount(ids[1].ravel()) / ids[1].size, atol=0.02
    )
    plain = GeometryCodebook(fits[1].anchors, fits[1].centroids, 0.1, 3.0)
    assert not np.array_equal(plain.quantize(geometry), ids[1])
    fits[1].save(tmp_path / "rate.npz")
    loaded = load_codebook(tmp_path / "rate.npz")
    assert loaded.rate_weight == 2e-3 and np.array_equal(loaded.entry_bits, fits[1].entry_bits)
    assert np.array_equal(loaded.quantize(geometry), ids[1])


def _covariance(geometry: np.ndarray) -> np.ndarray:
    """geometry [n, 5] -> each Gaussian's covariance [n, 2, 2] (map pixels squared)."""
    cos, sin = np.cos(geometry[:, 4]), np.sin(geometry[:, 4])
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    scales = np.stack([np.diag(s**2) for s in geometry[:, 2:4]])
    return rotation @ scales @ rotation.transpose(0, 2, 1)


def test_the_shape_space_gives_one_point_per_gaussian_and_maps_back_to_it():
    rng = np.random.default_rng(0)
    n, scale_range, weight = 200, (0.1, 3.0), 0.4
    geometry = np.concatenate(
        [rng.uniform(-0.9, 0.9, (n, 2)), rng.uniform(0.2, 2.5, (n, 2)),
         rng.uniform(0, np.pi, (n, 1))], axis=1,
    )  # fmt: skip
    # the same Gaussians with their axes swapped and turned by pi/2, or turned by pi
    turn = np.array([0, 0, 0, 0, np.pi])
    swapped, turned = geometry[:, [0, 1, 3, 2, 4]] + turn / 2, geometry + turn
    points = [to_shape_space(to_unit(g, *scale_range), weight) for g in (geometry, swapped, turned)]
    assert np.allclose(points[0], points[1]) and np.allclose(points[0], points[2])
    back = from_unit(from_shape_space(points[0], weight), *scale_range).astype(np.float64)
    assert np.allclose(back[:, :2], geometry[:, :2], atol=1e-5)
    assert np.allclose(_covariance(back), _covariance(geometry), rtol=1e-4, atol=1e-5)
    # a round Gaussian's rotation is no distance at all
    round_ = geometry.copy()
    round_[:, 3] = round_[:, 2]
    spun = round_ + turn / 3
    assert np.allclose(*(to_shape_space(to_unit(g, *scale_range), weight) for g in (round_, spun)))


def test_wrong_layout_options_and_codebooks_are_refused_in_one_sentence(
    layouts,
    model,  # noqa: F811
    shards,  # noqa: F811
    runner,
    tmp_path,
):
    out = str(tmp_path / "x.zarr")
    common = ["encode", str(shards), "-o", out, "-m", str(model), "--workers", "0"]
    wrong = tmp_path / "wrong.npz"
    codebook = load_codebook(layouts["codebook.npz"])
    GeometryCodebook(np.zeros((G + 1, 5)), codebook.centroids, 0.1, 3.0).save(wrong)
    for args, message in [
        (["--layout", "raster"], "--layout raster sorts Gaussians by binned position"),
        (["--layout", "codebook"], "--layout codebook needs a --geometry-codebook file"),
        (["--layout", "spiral"], "--layout must be one of fields, raster, codebook"),
        (["--geometry-codebook", str(wrong)], "--geometry-codebook goes with --layout codebook"),
        (["--layout", "codebook", "--geometry-codebook", str(wrong)], f"was fitted for {G + 1}"),
        (["--layout", "codebook", "--geometry-codebook", str(tmp_path)], "not a geometry codebook"),
    ]:
        result = runner.invoke(app, [*common, *args])
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_store_whose_codebook_file_changed_refuses_its_stream(layouts, tmp_path):
    import shutil

    store_path, codebook_path = tmp_path / "cb.zarr", layouts["codebook.npz"]
    shutil.copytree(layouts["codebook"], store_path)
    saved = codebook_path.read_bytes()
    try:
        codebook_path.write_bytes(saved + b"\0")
        with pytest.raises(GtokError, match="which is not that file any more; restore"):
            TokenStore(store_path).sequences()
        codebook_path.unlink()
        with pytest.raises(GtokError, match="which is missing; restore that file"):
            TokenStore(store_path).from_sequences(np.tile([0, 64], G))
    finally:
        codebook_path.write_bytes(saved)
    assert len(TokenStore(store_path).sequences()) == len(TokenStore(store_path))


@pytest.mark.parametrize("layout", ["raster", "codebook"])
def test_ar_prior_smoke_on_each_layout(layouts, layout, tmp_path):
    _run_prior([str(layouts[layout]), "--smoke", "-o", str(tmp_path / "prior")])
    _check_prior(tmp_path / "prior", G * (6 if layout == "raster" else 2))
    results = json.loads((tmp_path / "prior" / "results.json").read_text())
    assert results["vocabulary"]["size"] == 64 + (5 * 64 if layout == "raster" else 16)


def test_ar_prior_refuses_a_validation_store_of_another_layout(layouts, tmp_path):
    argv = [str(layouts["raster"]), "--val-store", str(layouts["fields"]), "--smoke"]
    with pytest.raises(SystemExit, match="token layout differs from training's"):
        _run_prior([*argv, "-o", str(tmp_path / "prior")])


@pytest.mark.slow
def test_rate_distortion_bench_measures_each_row(model, vq_model, tmp_path, capsys):  # noqa: F811
    """bench/rate_distortion.py end to end on a tiny model (smoke priors): every row gets
    its PSNR, bits and ids, the VQ row is the recorded one, and the plot is written; rerun
    with `--vq-model`, the VQ row is measured and the ratios are against it."""
    from shardmaker import write_clean_shards

    write_clean_shards(tmp_path / "shards", 2, 20)  # 40 images x 8 Gaussians >= 256 points
    args = ["--train", str(tmp_path / "shards" / "shard-*.tar"), "--val",
            str(tmp_path / "shards" / "shard-0001.tar"), "--work", str(tmp_path / "work"),
            "--model", str(model), "--smoke", "--plot", str(tmp_path / "rd.png"),
            "--rows", "fields-b8", "raster-b8", "codebook-256"]  # fmt: skip
    with script_module(ROOT / "bench" / "rate_distortion.py") as bench:
        document = bench.main(args)
    assert json.loads(capsys.readouterr().out) == document
    rows = {row["row"]: row for row in document["rows"]}
    assert [rows[n]["ids_per_image"] for n in rows] == [G * 6, G * 6, G * 2, 64]
    assert rows["vq-tiny"]["recorded"] and rows["vq-tiny"]["bits_per_image"] == 430.0
    # the same tokens in another order: the same images
    assert rows["raster-b8"]["psnr_db"] == pytest.approx(rows["fields-b8"]["psnr_db"], abs=1e-3)
    for name in ("fields-b8", "raster-b8", "codebook-256"):
        assert 0 < rows[name]["bits_per_image"] < 20 * rows[name]["ids_per_image"]
        assert np.isfinite(rows[name]["psnr_vs_float16_db"])
    assert abs(rows["fields-b8"]["psnr_vs_float16_db"]) < 0.1  # 8 bits cost next to nothing
    assert (tmp_path / "rd.png").stat().st_size > 0

    with script_module(ROOT / "bench" / "rate_distortion.py") as bench:
        measured = bench.main([*args, "--vq-model", str(vq_model)])
    capsys.readouterr()
    vq = measured["rows"][-1]
    assert (vq["row"], vq["recorded"], vq["layout"], vq["ids_per_image"]) == (
        "vq-tiny", False, None, 64)  # fmt: skip
    assert 0 < vq["bits_per_image"] < 20 * 64 and np.isfinite(vq["psnr_db"])
    assert vq["psnr_vs_float16_db"] == pytest.approx(vq["psnr_db"] - measured["float16_psnr_db"])
    fields = measured["rows"][0]
    assert fields["bits_per_image"] == rows["fields-b8"]["bits_per_image"]  # cached, not redone
    assert fields["bits_vs_vq"] == pytest.approx(fields["bits_per_image"] / vq["bits_per_image"])
    assert fields["ids_vs_vq"] == G * 6 / 64
    assert fields["psnr_vs_vq_db"] == pytest.approx(fields["psnr_db"] - vq["psnr_db"])


def test_info_shows_the_layout_and_verify_and_sequences_refuse_an_id_beyond_the_codebook(
    layouts,
    shards,  # noqa: F811
    tmp_path,
    runner,
):
    import shutil

    from test_store_damage import rows

    info = json.loads(runner.invoke(app, ["info", str(layouts["codebook"]), "--json"]).stdout)
    size = load_codebook(layouts["codebook.npz"]).size
    assert info["layout"] == "codebook" and info["geometry_codebook"]["size"] == size
    assert info["arrays"]["geometry_ids"]["dtype"] == "uint16"
    against = ["--against", str(shards)]
    assert runner.invoke(app, ["verify", str(layouts["codebook"]), *against]).exit_code == 0
    broken = tmp_path / "broken.zarr"
    shutil.copytree(layouts["codebook"], broken)
    rows("geometry_ids", size, selection=slice(1, 2))(broken)
    result = runner.invoke(app, ["verify", str(broken), *against])
    assert result.exit_code == 1 and f"row 1: a geometry id beyond the {size} of its codebook" in (
        result.output
    )
    with pytest.raises(GtokError, match=f"row 1 holds a geometry id beyond the {size}"):
        TokenStore(broken).sequences()


def test_codebook_sweep_bench_scores_each_setting(layouts, model, shards, capsys):  # noqa: F811
    """bench/codebook_sweep.py: one entry gives ids of no information and the largest error,
    a rate weight cheaper ids; the document is printed (the test model's PSNR hardly moves
    with its geometry, so only the shape-space error is ordered)."""
    args = ["--train-store", str(layouts["fields"]), "--val-store", str(layouts["float"]),
            "--val-shards", *map(str, sorted(shards.glob("*.tar"))), "--model", str(model),
            "--settings", "1:0.4:0", "16:0.4:0", "16:0.4:1e-3"]  # fmt: skip
    with script_module(ROOT / "bench" / "codebook_sweep.py") as bench:
        document = bench.main(args)
    assert json.loads(capsys.readouterr().out) == document
    one, plain, rated = document["settings"]
    assert document["val_images"] == 10 and np.isfinite(document["psnr_db"])
    assert one["entries"] == 1 and one["bits_per_image"] == 0.0
    assert one["mean_squared_error"] > plain["mean_squared_error"] > 0
    assert all(np.isfinite(entry["psnr_loss_db"]) for entry in document["settings"])
    assert (
        rated["entries"] <= plain["entries"] and rated["bits_per_image"] <= plain["bits_per_image"]
    )


def test_fit_codebook_writes_a_new_file_and_refuses_what_it_cannot_fit(layouts, runner, tmp_path):
    from gtok.store.geometry_codebook import RATE_WEIGHT, SHAPE_WEIGHT

    out = tmp_path / "cb.npz"
    result = runner.invoke(app, ["fit-codebook", str(layouts["fields"]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    codebook = load_codebook(out)
    assert report["entries"] == codebook.size and report["sha256"] == file_sha256(out)
    # the CLI's defaults are the library's recommended setting
    assert (codebook.shape_weight, codebook.rate_weight) == (SHAPE_WEIGHT, RATE_WEIGHT)
    assert report["size"] == 1024 and report["bits_per_gaussian"] > 0
    for args, message in [
        (["-o", str(out)], "exists, and stores encoded with it would no longer match it"),
        (["-o", str(tmp_path / "x.npz"), "--size", "0"], "--size must be in 1..65535, got 0."),
        (["-o", str(tmp_path / "x.npz"), "--shape-weight", "0"], "--shape-weight must be above 0"),
        (["-o", str(tmp_path / "x.npz"), "--rate-weight", "-1"], "--rate-weight must be 0 or more"),
    ]:
        refused = runner.invoke(app, ["fit-codebook", str(layouts["fields"]), *args])
        assert refused.exit_code == 1 and message in refused.stderr, (args, refused.output)
    floats = runner.invoke(
        app, ["fit-codebook", str(layouts["float"]), "-o", str(tmp_path / "x.npz")]
    )
    assert floats.exit_code == 1 and "has no geometry bins" in floats.stderr
    assert not (tmp_path / "x.npz").exists()
