"""Tokens for sequence models: `--geometry-bits` (geometry_codes), the vocabulary layout,
`TokenStore.sequences` / `from_sequences`, and the refusals around them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from scriptkit import script_module
from shardmaker import write_clean_shards
from test_encode import SMALL, _save_model
from test_store_damage import header
from test_store_damage import rows as overwrite_rows

from gtok.cli.main import app
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.store import TokenStore
from gtok.store.geometry_bins import GeometryBinning
from gtok.store.info import store_info
from gtok.store.sequences import Vocabulary
from gtok.store.verify import verify_store

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ar_prior.py"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """test_encode's 16 px SMALL model (the shared `model` fixture is a 32 px one)."""
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_clean_shards(folder, 2, 5)
    return folder


def _encode(shards, out, model, **kw):
    return encode_shards([shards], out, model, batch_size=4, workers=0, **kw)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, model, shards) -> dict[str, Path]:
    """The same shards as float32 geometry, and with 6-bit and 10-bit bins."""
    folder = tmp_path_factory.mktemp("stores")
    out = {"float": folder / "float.zarr", 6: folder / "b6.zarr", 10: folder / "b10.zarr"}
    _encode(shards, out["float"], model, geometry_dtype="float32")
    _encode(shards, out[6], model, geometry_bits=6)
    _encode(shards, out[10], model, geometry_bits=10)
    return out


# -- the binning ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 5, 8, 10, 16])
def test_bins_round_trip_and_error_is_half_a_bin(bits):
    binning = GeometryBinning(bits, 0.1, 3.5)
    n = binning.bins
    codes = np.arange(n)[:, None].repeat(5, 1)
    assert np.array_equal(binning.quantize(binning.dequantize(codes)), codes)
    assert binning.dtype == (np.uint8 if bits <= 8 else np.uint16)
    rng = np.random.default_rng(bits)
    g = np.concatenate(
        [
            rng.uniform(-1, 1, (1000, 2)),
            np.exp(rng.uniform(math.log(0.1), math.log(3.5), (1000, 2))),
            rng.uniform(0, math.pi, (1000, 1)),
        ],
        -1,
    )
    back = binning.dequantize(binning.quantize(g)).astype(np.float64)
    assert np.abs(back[:, :2] - g[:, :2]).max() <= 1 / n + 1e-6
    log_step = math.log(3.5 / 0.1) / n
    assert np.abs(np.log(back[:, 2:4] / g[:, 2:4])).max() <= log_step / 2 + 1e-6
    assert np.abs(back[:, 4] - g[:, 4]).max() <= math.pi / n / 2 + 1e-6


def test_bins_clip_out_of_range_values_and_wrap_rotation():
    binning = GeometryBinning(4, 0.1, 3.0)
    codes = binning.quantize(np.array([[-1.5, 1.0, 0.01, 9.0, math.pi], [1.0, -1.0, 3.0, 0.1, 0]]))
    assert codes.tolist() == [[0, 15, 0, 15, 0], [15, 0, 15, 0, 0]]
    for bad in (3, 17):
        with pytest.raises(ValueError, match="bits"):
            GeometryBinning(bad, 0.1, 3.0)
    with pytest.raises(ValueError, match="scale_min"):
        GeometryBinning(8, 3.0, 0.1)
    assert GeometryBinning.from_attrs(binning.to_attrs()) == binning


# -- the store --------------------------------------------------------------------------------


@pytest.mark.slow
def test_geometry_codes_are_the_bins_of_the_models_geometry(stores, model):
    plain, store = TokenStore(stores["float"]), TokenStore(stores[6])
    assert store.fields == ("indices", "geometry", "labels")  # codes only on request
    binning = store.geometry_binning
    import gtok

    r_max = float(gtok.load_tokenizer(model).gaussian_embed.scale_range.r_max)
    assert (binning.bits, binning.scale_min, binning.scale_max) == (6, 0.1, r_max)
    assert store.attrs["geometry_bins"]["scale"]["transform"] == "log"
    codes = TokenStore(stores[6], fields=["geometry_codes"])[0 : len(store)]["geometry_codes"]
    assert codes.dtype == np.uint8 and codes.shape == (len(store), SMALL["num_gaussians"], 5)
    everything = plain[0 : len(plain)]
    assert np.array_equal(codes, binning.quantize(everything["geometry"]))
    rows = store[0 : len(store)]
    assert np.array_equal(rows["indices"], everything["indices"])
    assert np.array_equal(rows["geometry"], binning.dequantize(codes).astype(np.float16))
    wide = TokenStore(stores[10], fields=["geometry_codes"])[0]["geometry_codes"]
    assert wide.dtype == np.uint16 and wide.max() < 1024
    assert "geometry_codes" not in zarr.open_group(str(stores["float"]), mode="r")
    info = store_info(stores[6])
    assert info["geometry_bits"] == 6 and info["arrays"]["geometry_codes"]["dtype"] == "uint8"
    assert store_info(stores["float"])["geometry_bits"] is None


def test_sequences_round_trip_through_the_documented_layout(stores, model):
    store = TokenStore(stores[6])
    vocabulary = store.vocabulary
    assert vocabulary == Vocabulary(64, 64) and vocabulary.size == 64 + 5 * 64
    assert vocabulary.offsets == {
        "code": 0,
        "mean_x": 64,
        "mean_y": 128,
        "scale_x": 192,
        "scale_y": 256,
        "rotation": 320,
    }
    ids = store.sequences()
    assert ids.dtype == np.int64 and ids.shape == (len(store), SMALL["num_gaussians"] * 6)
    rows = store[0 : len(store)]
    codes = TokenStore(stores[6], fields=["geometry_codes"])[0 : len(store)]["geometry_codes"]
    assert np.array_equal(ids[:, 0::6], rows["indices"])
    for i, offset in enumerate((64, 128, 192, 256, 320)):
        assert np.array_equal(ids[:, 1 + i :: 6] - offset, codes[..., i])
    assert np.array_equal(store.sequences(np.array([3, 0])), ids[[3, 0]])
    tokens = store.from_sequences(torch.from_numpy(ids))
    assert torch.equal(tokens.indices, torch.from_numpy(rows["indices"].astype(np.int64)))
    assert torch.equal(tokens.geometry, torch.from_numpy(store.geometry_binning.dequantize(codes)))
    assert torch.equal(store.from_sequences(ids[2].tolist()).indices, tokens.indices[2:3])
    import gtok

    tok = gtok.load_tokenizer(model).eval()
    stored = tok.decode(
        gtok.Tokens(torch.from_numpy(rows["indices"]), torch.from_numpy(rows["geometry"]))
    )
    assert torch.allclose(tok.decode(tokens), stored, atol=1e-2)
    assert isinstance(TokenStore(stores[6], format="torch").sequences(0), torch.Tensor)


def test_ids_outside_their_field_are_refused(stores):
    store = TokenStore(stores[6])
    ids = store.sequences(slice(0, 2))
    broken = ids.copy()
    broken[1, 7] = 5  # position 7 is a mean_x id (64..127), 5 is a code id
    with pytest.raises(ValueError, match="position 7 is not a mean_x id"):
        store.from_sequences(broken)
    with pytest.raises(ValueError, match="must be"):
        store.from_sequences(ids[:, :-1])
    with pytest.raises(ValueError, match="integers"):
        Vocabulary(64, 64).decode(ids.astype(np.float32))


@pytest.fixture(scope="module")
def vq(tmp_path_factory, shards) -> tuple[Path, Path]:
    """(a random-init VQ model, its store of one shard)."""
    folder = tmp_path_factory.mktemp("vq")
    model = _save_model(
        folder / "model", seed=0, preset="vq-tiny", image_size=16, ch_mult=(1, 2), map_size=8,
        codebook_size=64,
    )  # fmt: skip
    _encode(shards / "shard-0000.tar", folder / "vq.zarr", model)
    return model, folder / "vq.zarr"


def test_a_float_geometry_store_has_no_stream_and_a_vq_store_has_code_ids(stores, vq, shards):
    with pytest.raises(GtokError, match="--geometry-bits"):
        TokenStore(stores["float"]).sequences()
    model, path = vq
    store = TokenStore(path)
    assert store.vocabulary.to_dict() == {
        "size": 64,
        "ids_per_token": 1,
        "fields": [{"name": "code", "offset": 0, "size": 64}],
    }
    ids = store.sequences()
    assert np.array_equal(ids, store[0 : len(store)]["indices"])
    tokens = store.from_sequences(ids)
    assert tokens.geometry is None and tokens.indices.shape == (len(store), 64)
    with pytest.raises(GtokError, match="no geometry"):
        _encode(shards / "shard-0000.tar", path.parent / "vq6.zarr", model, geometry_bits=6)


# -- examples/ar_prior.py --smoke (what CI runs) ----------------------------------------------


def _check_prior(out: Path, ids_per_sequence: int) -> None:
    results = json.loads((out / "results.json").read_text())
    assert results["ids_per_sequence"] == ids_per_sequence
    bits = results["val_bits_per_id"]
    assert set(bits) == {"gpt", "unigram", "unigram_per_field", "unigram_per_position"}
    assert all(0 < v < 20 for v in bits.values())
    assert results["training"]["steps"] == 30
    by_field = results["val_bits_per_image_by_field"]  # the per-image bits, split by field
    names = [f["name"] for f in results["vocabulary"]["fields"]]
    for name, per_image in results["val_bits_per_image"].items():
        if name in by_field:
            assert list(by_field[name]) == names
            assert sum(by_field[name].values()) == pytest.approx(per_image, rel=1e-6)
    with Image.open(out / "samples.png") as picture:  # 2 rows of 2 samples, 1 of val tokens
        assert picture.size == (2 * 16, 3 * 16 + 2 * 2)


def _run_prior(argv: list[str]) -> None:
    """examples/ar_prior.py's main(argv), in this process."""
    with script_module(EXAMPLE) as module:
        module.main(argv)


def test_ar_prior_smoke_on_a_gaussian_store(stores, tmp_path):
    _run_prior([str(stores[6]), "--smoke", "-o", str(tmp_path / "prior")])
    _check_prior(tmp_path / "prior", SMALL["num_gaussians"] * 6)


def test_ar_prior_smoke_on_a_vq_store(vq, tmp_path):
    _run_prior([str(vq[1]), "--smoke", "-o", str(tmp_path / "prior")])
    _check_prior(tmp_path / "prior", 64)


def test_other_bits_are_refused_on_resume_and_bad_bits_on_the_command_line(
    stores, model, shards, runner
):
    with pytest.raises(GtokError, match=r"in 6-bit bins .*, not in 8-bit bins"):
        _encode(shards, stores[6], model, geometry_bits=8)
    with pytest.raises(GtokError, match="as floats without geometry_bits"):
        _encode(shards, stores[6], model)
    out = str(stores[6].parent / "bad.zarr")
    for bits in ("3", "17"):
        args = ["encode", str(shards), "-o", out, "-m", str(model), "--geometry-bits", bits]
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "--geometry-bits must be in 4..16" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_binning_that_does_not_fit_the_arrays_is_damage(stores, tmp_path):
    import shutil

    for name, edit, message in [
        ("nobins", lambda h: h.pop("geometry_bins"), "geometry_codes array, which its header"),
        ("badbins", lambda h: h["geometry_bins"].update(bits=2), "geometry_bins record"),
    ]:
        copy = tmp_path / name
        shutil.copytree(stores[6], copy)
        header(edit)(copy)
        with pytest.raises(GtokError, match=message):
            TokenStore(copy)


def test_verify_and_sequences_refuse_bins_that_do_not_fit(stores, shards, tmp_path):
    import shutil

    store = tmp_path / "t.zarr"
    shutil.copytree(stores[6], store)
    assert verify_store(store, [shards]).ok
    overwrite_rows("geometry_codes", 70, (1, 3))(store)  # bin 70 of 64
    overwrite_rows("geometry", 0.5, (4, 2))(store)  # no longer the centre of its bins
    report = verify_store(store, [shards])
    assert report.problem_count == 2
    assert "row 1: geometry bin 70 beyond the 64 bins" in report.problems[0]
    assert "row 4: geometry that is not the centre" in report.problems[1]
    with pytest.raises(GtokError, match="row 1 holds geometry bin 70"):
        TokenStore(store).sequences()
    assert TokenStore(store).sequences(slice(2, 5)).shape == (3, SMALL["num_gaussians"] * 6)
