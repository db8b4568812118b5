"""The tokenizer as a Python caller uses it: the default model from
`gtok.load_tokenizer()`, PIL images in and out giving the CLI's tokens and pixels, what a
TokenStore yields decoded as it comes, a differentiable decode, bfloat16 and float16
models on the CPU, and int64 ids from `gtok.collate`."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from evalkit import read_png
from PIL import Image
from shardmaker import exif_rotated_jpeg, jpeg, pixels, png, write_tar

import gtok
from gtok.cli.main import app
from gtok.decode import key_path
from gtok.model import Tokens

SIZE = 32  # evalkit's model: 32 px images


def _rgba_png(seed: int) -> bytes:
    rgba = np.dstack([pixels(seed, (36, 50)), np.linspace(0, 255, 36 * 50).reshape(50, 36)])
    buffer = io.BytesIO()
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


SAMPLES = {  # sizes other than 32 px, EXIF rotation and alpha: every step of the CLI's path
    "a": {"jpg": jpeg(0, (40, 32))},
    "b": {"png": png(1, (30, 64))},
    "c": {"jpg": exif_rotated_jpeg(2)},
    "d": {"png": _rgba_png(3)},
}


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, model):
    """`gtok encode` of SAMPLES, float32 geometry, one batch."""
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("api")
    write_tar(folder / "shards" / "s.tar", list(SAMPLES.items()))
    out = folder / "tokens.zarr"
    args = ["encode", str(folder / "shards"), "-o", str(out), "-m", str(model), "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--geometry-dtype", "float32", "--batch-size", "4"])
    assert result.exit_code == 0, result.stderr
    return out


def _pil_images() -> list[Image.Image]:
    return [Image.open(io.BytesIO(next(iter(f.values())))) for f in SAMPLES.values()]


def test_load_tokenizer_without_a_path_is_the_default_model(standin_default):
    want = gtok.load_tokenizer(standin_default).state_dict()
    for tok in (gtok.load_tokenizer(), gtok.load_tokenizer("default")):
        got = tok.state_dict()
        assert not tok.training and all(torch.equal(got[k], want[k]) for k in want)
    low = gtok.load_tokenizer(dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}


def test_tokens_of_pil_images_equal_the_cli_store(cli_store, model):
    tok = gtok.load_tokenizer(model)
    store = gtok.TokenStore(cli_store, format="torch")
    tokens = tok.encode(_pil_images())  # a list of PIL images, as opened
    assert torch.equal(tokens.indices, store[:]["indices"])
    torch.testing.assert_close(tokens.geometry, store[:]["geometry"], rtol=0, atol=1e-5)
    assert torch.equal(tok.preprocess(_pil_images()), tok.preprocess(tok.preprocess(_pil_images())))


def test_uint8_arrays_and_tensors_are_taken_like_pil_images(model):
    tok = gtok.load_tokenizer(model)
    image = Image.fromarray(pixels(4, (48, 40)))
    hwc = np.array(image)
    want = tok.preprocess(image)
    assert want.shape == (1, 3, SIZE, SIZE) and want.dtype == torch.float32
    for same in (hwc, hwc[None], torch.from_numpy(hwc).permute(2, 0, 1), [hwc, image]):
        got = tok.preprocess(same)
        assert torch.equal(got, want.expand(len(got), -1, -1, -1))


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(1, 3, SIZE, SIZE) * 255, ValueError, r"must lie in \[-1, 1\], got values"),
        (torch.rand(1, 3, SIZE, SIZE) * 1.5, ValueError, "map floats x in 0..1 to 2 \\* x - 1"),
        (torch.zeros(1, 3, 48, 48), ValueError, "pass PIL images or uint8 pixels to have them"),
        (np.zeros((40, 40, 3), dtype=np.int64), TypeError, "int64 are ambiguous"),
        (np.zeros((40, 40, 4), dtype=np.uint8), ValueError, r"\[H, W, 3\], \[3, H, W\]"),
        ("photo.jpg", TypeError, "got str"),
        ([], ValueError, "empty list"),
    ],
)
def test_ambiguous_images_are_refused_in_one_sentence(model, images, error, message):
    tok = gtok.load_tokenizer(model)
    with pytest.raises(error, match=message):
        tok.encode(images)


def test_postprocess_gives_what_gtok_decode_writes(tmp_path, cli_store, model, runner):
    out = tmp_path / "recon"
    result = runner.invoke(app, ["decode", str(cli_store), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    tok = gtok.load_tokenizer(model)
    store = gtok.TokenStore(cli_store, fields=("indices", "geometry", "keys"))
    batch = store[:]
    images = tok.decode(batch)  # numpy, as the store yields it
    arrays = tok.postprocess(images, output="numpy")
    pictures = tok.postprocess(images)
    assert arrays.dtype == np.uint8 and arrays.shape == (4, SIZE, SIZE, 3)
    for key, array, picture in zip(batch["keys"], arrays, pictures, strict=True):
        written = read_png(out / f"{key_path(key)}.png").permute(1, 2, 0).numpy()
        assert np.array_equal(array, written) and np.array_equal(np.asarray(picture), written)
    assert json.loads(result.stdout)["written"] == 4


def test_decode_takes_whatever_a_token_store_yields(cli_store, model):
    tok = gtok.load_tokenizer(model)
    numpy_store = gtok.TokenStore(cli_store)
    torch_store = gtok.TokenStore(cli_store, format="torch")
    batch = torch_store[:]
    want = tok.decode(Tokens(batch["indices"], batch["geometry"]))
    assert numpy_store[:]["indices"].dtype == np.uint16
    for tokens in (
        numpy_store[:],
        batch,
        (numpy_store[:]["indices"], numpy_store[:]["geometry"]),
        gtok.collate([numpy_store[i] for i in range(4)]),
    ):
        assert torch.equal(tok.decode(tokens), want)
    one_row = tok.decode(numpy_store[2])  # a batch of one: convolutions may round differently
    torch.testing.assert_close(one_row, want[2:3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs an 'indices' entry"):
        tok.decode({"geometry": batch["geometry"]})


def test_decode_with_grad_keeps_the_graph_through_rasterizer_and_decoder(cli_store, model):
    tok = gtok.load_tokenizer(model)
    batch = gtok.TokenStore(cli_store, format="torch")[:]
    assert not tok.decode(batch).requires_grad
    grads = {}
    for implementation in ("taichi", "reference"):
        tok.set_implementation(implementation)
        geometry = batch["geometry"].clone().requires_grad_()
        features = tok.quantize.lookup(batch["indices"]).requires_grad_()
        tok.decode((batch["indices"], geometry), grad=True).square().mean().backward()
        tok.decode_gaussians(geometry.detach(), features).square().mean().backward()
        grads[implementation] = (geometry.grad, features.grad)
        assert geometry.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    for got, want in zip(grads["taichi"], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_run_on_the_cpu(cli_store, model, dtype):
    tok = gtok.load_tokenizer(model)
    want = tok.decode(tok.encode(_pil_images()))
    for low in (gtok.load_tokenizer(model, dtype=dtype), gtok.load_tokenizer(model).to(dtype)):
        tokens = low.encode(_pil_images())
        images = low.decode(tokens)
        assert tokens.indices.dtype == torch.int64 and images.dtype == dtype
        assert tokens.geometry.dtype == dtype
        assert (images.float() - want).abs().mean() < 0.1  # low precision, same pictures
    assert gtok.load_tokenizer(model).half().decode(tokens).dtype == torch.float16


def test_collate_gives_int64_ids_for_an_embedding(cli_store):
    store = gtok.TokenStore(cli_store)  # numpy: uint16 ids
    loader = torch.utils.data.DataLoader(store, batch_size=3, collate_fn=gtok.collate)
    batch = next(iter(loader))
    assert batch["indices"].dtype == torch.int64 and batch["geometry"].dtype == torch.float32
    assert torch.nn.Embedding(64, 4)(batch["indices"]).shape == (3, 8, 4)
    default = next(iter(torch.utils.data.DataLoader(store, batch_size=3)))
    assert default["indices"].dtype == torch.uint16  # what collate_fn=gtok.collate avoids
