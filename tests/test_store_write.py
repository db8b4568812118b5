"""`gtok.store.write`: tokens made with `tok.encode` outside `gtok encode` become a store.

Covers: rows written in two calls (the second with append=True) read back equal to `gtok
encode` of the same images (ids, geometry, keys, metadata), and `gtok info` / `gtok verify`
accept the store; tokens of the wrong shape, another model, or a store already there are
refused with one sentence each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from shardmaker import clean_samples, write_clean_shards
from test_encode import SMALL, _encode, _save_model

import gtok
from gtok.cli.main import app
from gtok.data import center_crop, decode_rgb, to_tensor
from gtok.errors import GtokError
from gtok.store import TokenStore, write

PER_SHARD = 5


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("other"), seed=1, **SMALL)


def _tokens_of_shard(tok, shard: int):
    """tok.encode of shard `shard`'s images, batched as `gtok encode --batch-size 4` does;
    (Tokens, keys, metadata `i`)."""
    samples = clean_samples(PER_SHARD, start=shard * PER_SHARD)
    images = torch.stack([to_tensor(center_crop(decode_rgb(f["jpg"]), 16)[0]) for _, f in samples])
    with torch.inference_mode():
        parts = [tok.encode(images[i : i + 4]) for i in range(0, len(images), 4)]
    tokens = gtok.Tokens(
        torch.cat([p.indices for p in parts]), torch.cat([p.geometry for p in parts])
    )
    keys = [f"shard-{shard:04d}.tar/{key}" for key, _ in samples]
    return tokens, keys, [json.loads(f["json"])["i"] for _, f in samples]


@pytest.mark.slow
def test_written_rows_equal_gtok_encode_of_the_same_images(tmp_path, model, runner):
    write_clean_shards(tmp_path / "data", 2, PER_SHARD)
    _encode(tmp_path / "data", tmp_path / "encoded.zarr", model, metadata_fields=["i"])
    tok = gtok.load_tokenizer(model)
    out = tmp_path / "written.zarr"
    for shard in (0, 1):
        tokens, keys, numbers = _tokens_of_shard(tok, shard)
        counts = write(
            out, tokens, keys=keys, model=model, metadata={"i": numbers}, append=shard > 0
        )
    assert counts["encoded"] == 2 * PER_SHARD and counts["shards"] == 2
    fields = ("indices", "geometry", "keys", "meta/i")
    written = TokenStore(out, fields=fields)
    encoded = TokenStore(tmp_path / "encoded.zarr", fields=fields)
    assert written.keys() == encoded.keys()
    rows = np.arange(len(encoded))
    for name in fields:
        assert np.array_equal(written[rows][name], encoded[rows][name]), name
    assert written.weights_sha256 == encoded.weights_sha256
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.stderr
    assert json.loads(info.stdout)["rows"] == 2 * PER_SHARD
    decode = runner.invoke(app, ["decode", str(out), "-o", str(tmp_path / "recon"), "--limit", "2"])
    assert decode.exit_code == 0, decode.stderr
    assert len(list((tmp_path / "recon").rglob("*.png"))) == 2


def test_tokens_that_do_not_fit_are_refused_with_one_sentence(tmp_path, model, other_model):
    tokens = gtok.Tokens(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, 5))
    keys = ["a", "b"]
    write(tmp_path / "t.zarr", tokens, keys=keys, model=model)
    refusals = {
        "has shape (2, 7) but the model makes 8 tokens per image": dict(
            tokens=gtok.Tokens(tokens.indices[:, :7], tokens.geometry[:, :7])
        ),
        "tokens.geometry has shape (2, 8, 4)": dict(
            tokens=gtok.Tokens(tokens.indices, tokens.geometry[..., :4])
        ),
        "captions has 1 entries for 2 rows": dict(captions=["one"]),
        "already holds a token store; pass append=True": {},
        "holds tokens of another model": dict(model=other_model, append=True),
    }
    for sentence, change in refusals.items():
        kw = {"tokens": tokens, "keys": keys, "model": model, **change}
        with pytest.raises(GtokError) as refused:
            write(tmp_path / "t.zarr", kw.pop("tokens"), **kw)
        assert sentence in str(refused.value) and "\n" not in str(refused.value)
    assert len(TokenStore(tmp_path / "t.zarr")) == 2  # unchanged
