"""`gtok encode`, `gtok info`, `gtok verify` end to end with a small random-initialized model.

Covers: rows equal the model's own tokens, in input order; odd and corrupt samples accounted
for one by one; kill -9 during a run then resume gives the same store; 2 workers + finalize
equal 1 process; a different model is refused; verify finds a missing sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from docskit import DOCS, python_blocks, section
from shardmaker import (
    clean_samples,
    img2dataset_shard,
    odd_samples,
    write_clean_shards,
    write_tar,
)
from test_store import assert_same_store

from gtok.cli.main import app
from gtok.data import Preprocess, center_crop, decode_rgb, to_tensor
from gtok.data.tario import read_tar
from gtok.encode import encode_shards, worker_slice
from gtok.errors import GtokError
from gtok.store import TokenStore

REPO = Path(__file__).resolve().parents[1]
SMALL = {  # a tiny GaussianToken: 16x16 images, 8 Gaussians, 64 codes
    "image_size": 16,
    "ch": 32,
    "ch_mult": (1, 2),
    "map_size": 8,
    "num_gaussians": 8,
    "num_res_blocks": 1,
    "ffn_dim": 64,
    "num_rounds": 1,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "codebook_size": 64,
}


def _save_model(folder: Path, seed: int, preset: str = "tiny", **overrides) -> Path:
    import gtok

    tok = gtok.build_tokenizer(preset, seed=seed, **overrides)
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    tok.train()
    with torch.no_grad():
        tok(images)  # k-means initializes the codebook, so tokens use many codes
    tok.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("other"), seed=1, **SMALL)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 clean shards of 5 labeled samples, one of odd samples, one empty, one truncated."""
    folder = tmp_path_factory.mktemp("shards")
    write_clean_shards(folder, 4, 5)
    write_tar(folder / "odd.tar", [sample for sample, _ in odd_samples()])
    (folder / "zz-empty.tar").write_bytes(b"")
    whole = write_tar(folder / "cut.tar", clean_samples(3, start=100)).read_bytes()
    (folder / "cut.tar").write_bytes(whole[: len(whole) // 2])
    return folder


def _encode(shards, out, model, **kw):
    return encode_shards([shards], out, model, batch_size=4, workers=0, **kw)


def test_rows_are_the_models_tokens_in_input_order(tmp_path, model, shards):
    summary = _encode(shards, tmp_path / "t.zarr", model)
    assert summary.finalized and summary.encoded + summary.skipped == summary.samples_read
    store = TokenStore(tmp_path / "t.zarr")
    keys = store.keys()
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert [k.split("/")[0] for k in keys] == sorted(k.split("/")[0] for k in keys)
    assert {k.split("/")[0] for k in keys} == set(names) - {"zz-empty.tar"}
    # the model's own tokens of shard-0001, batched as encode batches them (4, then 1)
    import gtok

    tok = gtok.load_tokenizer(model)
    preprocess = Preprocess(16, jpeg_draft=True)  # on for new stores; these JPEGs are small
    samples = clean_samples(5, start=5)
    images = torch.stack([to_tensor(center_crop(decode_rgb(f["jpg"]), 16)[0]) for _, f in samples])
    with torch.inference_mode():
        parts = [tok.encode(images[:4]), tok.encode(images[4:])]
    indices = torch.cat([p.indices for p in parts]).numpy()
    geometry = torch.cat([p.geometry for p in parts]).to(torch.float16).numpy()
    rows = [store.index(f"shard-0001.tar/{key}") for key, _ in samples]
    assert rows == list(range(rows[0], rows[0] + 5))
    got = store[np.array(rows)]
    assert np.array_equal(got["indices"], indices)
    assert np.array_equal(got["geometry"], geometry)
    assert list(got["labels"]) == [5 % 10, 6, 7, 8, 9]
    assert len(np.unique(store[0 : len(store)]["indices"])) > 10
    assert store.preprocessing == preprocess.to_dict()
    assert store.weights_sha256 == summary.weights_sha256


@pytest.mark.slow
def test_odd_and_corrupt_samples_are_accounted_for_one_by_one(tmp_path, model, shards):
    _encode(shards, tmp_path / "t.zarr", model)
    store = TokenStore(tmp_path / "t.zarr")
    skipped = {(shard, key): reason for shard, key, reason in store.skipped()}
    encoded = set(store.keys())
    cases = odd_samples()
    for (key, _), expected in cases:
        if expected is None:
            assert f"odd.tar/{key}" in encoded, key
        elif expected != "duplicate key":
            assert expected in skipped[("odd.tar", key)], key
    assert "duplicate key" in skipped[("odd.tar", "plain")]
    assert "empty file" in skipped[("zz-empty.tar", "")]
    assert "truncated or corrupt" in skipped[("cut.tar", "")]
    counts = store.counts
    assert counts["encoded"] + counts["skipped"] == counts["samples"]
    assert counts["damaged_shards"] == 2 and counts["upscaled"] >= 1
    assert counts["encoded"] == len(store)


def test_vq_model_and_float32_geometry(tmp_path, shards):
    vq = _save_model(
        tmp_path / "vq",
        seed=0,
        preset="vq-tiny",
        image_size=16,
        ch_mult=(1, 2),
        map_size=8,
        codebook_size=64,
    )
    _encode(shards / "shard-0000.tar", tmp_path / "vq.zarr", vq)
    store = TokenStore(tmp_path / "vq.zarr")
    assert store.fields == ("indices", "labels") and store[0]["indices"].shape == (64,)
    assert "geometry" not in zarr.open_group(str(tmp_path / "vq.zarr"), mode="r")


def test_geometry_float32(tmp_path, model, shards):
    _encode(shards / "shard-0000.tar", tmp_path / "f.zarr", model, geometry_dtype="float32")
    assert TokenStore(tmp_path / "f.zarr")[0]["geometry"].dtype == np.float32


@pytest.mark.subprocess
def test_spawn_workers_give_the_same_store(tmp_path, model, shards):
    subset = [shards / "shard-0000.tar", shards / "odd.tar", shards / "cut.tar"]
    encode_shards(subset, tmp_path / "w0.zarr", model, batch_size=4, workers=0)
    encode_shards(subset, tmp_path / "w2.zarr", model, batch_size=4, workers=2)
    assert_same_store(tmp_path / "w0.zarr", tmp_path / "w2.zarr")


@pytest.mark.slow
def test_a_different_model_is_refused(tmp_path, model, other_model, shards, runner):
    out = tmp_path / "t.zarr"
    _encode(shards / "shard-0000.tar", out, model)
    result = runner.invoke(
        app, ["encode", str(shards / "shard-0000.tar"), "-o", str(out), "-m", str(other_model)]
    )
    assert result.exit_code == 1
    assert "another model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(GtokError, match="another list of input shards"):
        _encode(shards / "shard-0001.tar", out, model)
    again = ["encode", str(shards / "shard-0000.tar"), "-o", str(out), "-m", str(other_model)]
    result = runner.invoke(app, [*again, "--overwrite", "--json", "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    assert TokenStore(out).weights_sha256 == json.loads(result.stdout)["weights_sha256"]


def test_missing_path_fails_before_any_work(tmp_path, model, runner):
    out = tmp_path / "t.zarr"
    result = runner.invoke(
        app, ["encode", str(tmp_path / "nowhere"), "-o", str(out), "-m", str(model)]
    )
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert not out.exists()
    result = runner.invoke(app, ["encode", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 1


def test_worker_slice_sources():
    assert worker_slice() == worker_slice(environ={})
    assert worker_slice(1, 3).shard_id == 1
    assert worker_slice(environ={"RANK": "2", "WORLD_SIZE": "4"}).num_shards == 4
    slurm = worker_slice(environ={"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert (slurm.shard_id, slurm.num_shards, slurm.source) == (
        1,
        2,
        "Slurm SLURM_PROCID/SLURM_NTASKS",
    )
    for bad in ({"shard_id": 1}, {"shard_id": 3, "num_shards": 3}):
        with pytest.raises(GtokError):
            worker_slice(**bad)


# ---- processes: kill -9 and resume; two workers + finalize ------------------------------------


def _gtok(*args: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-c", "from gtok.cli.main import main; main()", *args]
    return subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _completed_parts(store: Path) -> int:
    return sum('"complete"' in p.read_text() for p in store.glob("parts/*/zarr.json"))


def kill_then_resume(data: Path, out: Path, model: Path) -> tuple[int, dict, str]:
    """Start `gtok encode data -o out` (12 input shards, batches of 4), SIGKILL it once two
    parts are complete, run the same command again: (parts complete at the kill, the resumed
    run's JSON summary, its stderr)."""
    args = (str(data), "-o", str(out), "-m", str(model), "--workers", "0", "--batch-size", "4")
    run = _gtok("encode", *args)
    deadline = time.monotonic() + 120
    while _completed_parts(out) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = _completed_parts(out)
    assert 2 <= done < 12
    resumed = _gtok("encode", *args, "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    return done, json.loads(stdout), stderr.decode()


@pytest.mark.subprocess
def test_kill_during_a_run_then_resume_gives_the_same_store(tmp_path, model):
    data = tmp_path / "data"
    write_clean_shards(data, 12, 4)
    out = tmp_path / "killed.zarr"
    done, summary, stderr = kill_then_resume(data, out, model)
    assert "took over the stale lock of input shard" in stderr  # the killed run's
    assert summary["shards_already_done"] >= done and summary["finalized"]
    encode_shards([data], tmp_path / "clean.zarr", model, batch_size=4, workers=0)
    assert_same_store(out, tmp_path / "clean.zarr")


@pytest.mark.subprocess
def test_two_workers_and_finalize_equal_one_process(tmp_path, model, shards, runner):
    out = tmp_path / "two.zarr"
    common = (str(shards), "-o", str(out), "-m", str(model), "--workers", "0", "--batch-size", "4")
    first = _gtok("encode", *common, "--shard-id", "0", "--num-shards", "2", "--json")
    second = _gtok("encode", *common, "--json", RANK="1", WORLD_SIZE="2")  # torchrun's variables
    summaries = []
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()
        summaries.append(json.loads(stdout))
    assert [s["worker"]["shard_id"] for s in summaries] == [0, 1]
    assert not any(s["finalized"] for s in summaries)
    assert sum(s["shards_encoded"] for s in summaries) == 7
    result = runner.invoke(app, ["encode", "--finalize", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    _encode(shards, tmp_path / "one.zarr", model)
    assert_same_store(out, tmp_path / "one.zarr")


# ---- info and verify ----------------------------------------------------------------------------


@pytest.mark.slow
def test_info_and_verify(tmp_path, model, shards, runner):
    out = tmp_path / "t.zarr"
    result = runner.invoke(
        app, ["encode", str(shards), "-o", str(out), "-m", str(model), "--workers", "0"]
    )
    assert result.exit_code == 0, result.stderr
    assert "skipped" in result.stdout
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["rows"] == info["counts"]["encoded"] == len(TokenStore(out))
    assert info["code_usage"]["used"] > 10 and info["code_usage"]["codebook_size"] == 64
    assert info["sizes"]["total_bytes"] > 0 and "not an image" in info["skipped_reasons"]
    assert "rows" in runner.invoke(app, ["info", str(out)]).stdout
    ok = runner.invoke(app, ["verify", str(out), "--against", str(shards)])
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout
    # a sample the store does not have: verify must find it
    write_tar(shards.parent / "grown" / "shard-0002.tar", clean_samples(6, start=10))
    grown = [str(p) for p in shards.glob("*.tar") if p.name != "shard-0002.tar"]
    bad = runner.invoke(
        app,
        ["verify", str(out), "--json"]
        + [a for p in [*grown, str(shards.parent / "grown")] for a in ("--against", p)],
    )
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert not report["ok"] and any("shard-0002.tar/000015" in p for p in report["problems"])


@pytest.mark.slow
def test_readme_training_snippet_runs(tmp_path, model, shards):
    """The TokenStore example of docs/stores.md, run as written against a real store."""
    _encode(shards, tmp_path / "tokens.zarr", model)
    (snippet,) = python_blocks(section(DOCS / "stores.md", "## Reading in a training loop"))
    snippet = snippet.replace('"tokens.zarr"', repr(str(tmp_path / "tokens.zarr")))
    namespace: dict = {}
    exec(compile(snippet, "docs/stores.md", "exec"), namespace)
    assert namespace["row"]["indices"].shape == (SMALL["num_gaussians"],)
    first = next(iter(namespace["loader"]))
    assert first["indices"].shape[1:] == (SMALL["num_gaussians"],)


def test_max_member_bytes_skips_larger_members_unread(tmp_path, model, runner):
    samples = clean_samples(3)
    sizes = [len(files["jpg"]) for _, files in samples]
    limit = sorted(sizes)[1]  # the largest image is over it, the others not
    shards = tmp_path / "shards"
    write_tar(shards / "s.tar", samples)
    out = tmp_path / "t.zarr"
    args = ["encode", str(shards), "-o", str(out), "-m", str(model), "--workers", "0"]
    result = runner.invoke(app, [*args, "--max-member-bytes", str(limit), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    big = max(range(3), key=sizes.__getitem__)
    assert summary["encoded"] == 2 and summary["skipped_examples"] == [
        {
            "shard": "s.tar",
            "key": f"{big:06d}",
            "reason": f"member {big:06d}.jpg is {sizes[big]} bytes, over the limit of {limit} "
            "bytes per member (--max-member-bytes)",
        }
    ]
    bad = runner.invoke(app, [*args, "--max-member-bytes", "0", "--overwrite"])
    assert bad.exit_code == 1 and "--max-member-bytes must be at least 1" in bad.output


# ---- non-finite model outputs -------------------------------------------------------------------


def test_a_model_with_nan_weights_is_refused(tmp_path, model, shards, runner):
    import gtok

    tok = gtok.load_tokenizer(model)
    with torch.no_grad():
        next(tok.parameters()).fill_(float("nan"))
    tok.save_pretrained(tmp_path / "nan")
    out = tmp_path / "t.zarr"
    args = ["encode", str(shards / "shard-0000.tar"), "-o", str(out), "-m", str(tmp_path / "nan")]
    result = runner.invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: the model ") and "NaN or infinite weights" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # refused before a store was made, let alone marked complete


@pytest.mark.slow
def test_rows_with_non_finite_geometry_are_skipped_with_the_reason(
    tmp_path, model, shards, monkeypatch
):
    from gtok.encode import run

    tokens = run._tokens

    def first_row_nan(*args):  # a model that breaks on one image of each batch
        indices, geometry = tokens(*args)
        geometry[0, 1, 2] = np.inf
        return indices, geometry

    subset = [shards / "shard-0000.tar", shards / "shard-0001.tar"]
    encode_shards(subset, tmp_path / "clean.zarr", model, batch_size=4, workers=0)
    monkeypatch.setattr(run, "_tokens", first_row_nan)
    summary = encode_shards(subset, tmp_path / "t.zarr", model, batch_size=4, workers=0)
    store, clean = TokenStore(tmp_path / "t.zarr"), TokenStore(tmp_path / "clean.zarr")
    first_of_batches = {f"shard-000{s}.tar/{k:06d}" for s in (0, 1) for k in (5 * s, 5 * s + 4)}
    assert set(clean.keys()) - set(store.keys()) == first_of_batches
    assert summary.skipped == 4 and summary.encoded + summary.skipped == summary.samples_read
    reasons = {f"{shard}/{key}": reason for shard, key, reason in store.skipped()}
    assert set(reasons) == first_of_batches and set(reasons.values()) == {run.NON_FINITE}
    kept = store.keys()
    rows = [clean.index(k) for k in kept]
    assert np.array_equal(store[0 : len(store)]["geometry"], clean[np.array(rows)]["geometry"])
    assert np.isfinite(store[0 : len(store)]["geometry"]).all()


# ---- img2dataset output: captions, metadata, stats, appends -------------------------------


@pytest.mark.slow
def test_img2dataset_captions_metadata_stats_and_append(tmp_path, model, runner):
    """Captions and chosen .json fields stay row-aligned through encode, --append, TokenStore
    and decode --format wds; verify compares each shard with img2dataset's stats."""
    folder = tmp_path / "laion"
    img2dataset_shard(folder, 0, 5)
    out = str(tmp_path / "t.zarr")
    args = ["encode", str(folder), "-o", out, "-m", str(model), "--workers", "0", "--json"]
    fields = ["--metadata-fields", "url,width"]
    result = runner.invoke(app, [*args, *fields])
    assert result.exit_code == 0, result.stderr
    text = ("keys", "captions", "meta/url", "meta/width")
    first = TokenStore(out, fields=("indices", *text))[0:5]
    assert first["keys"][0] == "00000.tar/000000000"
    assert first["captions"][:3] == [
        "a picture number 0 of shard 0, caf\u00e9",
        first["captions"][1],
        "",
    ]
    assert first["meta/url"][4] == "https://example.com/000000004.jpg"
    assert first["meta/width"] == ["40"] * 5  # JSON numbers as JSON text
    info = json.loads(runner.invoke(app, ["info", out, "--json"]).stdout)
    assert {"captions", "meta/url", "meta/width"} <= set(info["arrays"])
    assert info["metadata_fields"] == ["url", "width"] and info["counts"]["captioned"] == 4
    ok = json.loads(runner.invoke(app, ["verify", out, "--against", str(folder), "--json"]).stdout)
    assert ok["ok"] and ok["stats_checked"] == 1
    # img2dataset's incremental mode adds a shard; this copy stopped after 2 of 5 samples
    img2dataset_shard(folder, 1, 5, keep=2)
    other = runner.invoke(app, [*args, "--metadata-fields", "url", "--append"])
    assert other.exit_code == 1 and "metadata fields" in other.stderr
    result = runner.invoke(app, [*args, *fields, "--append"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["shards_encoded"] == 1
    store = TokenStore(out, fields=("indices", *text))
    assert len(store) == 7 and store.header.appends[0]["first_row"] == 5
    whole = store[0:7]
    assert np.array_equal(whole["indices"][:5], first["indices"])  # existing rows kept
    assert whole["keys"][5:] == ["00001.tar/000010000", "00001.tar/000010001"]
    assert whole["meta/url"][6] == "https://example.com/000010001.jpg"
    bad = json.loads(runner.invoke(app, ["verify", out, "--against", str(folder), "--json"]).stdout)
    assert not bad["ok"] and bad["stats_checked"] == 2
    assert any("recorded 5 successes" in p and "(3 missing)" in p for p in bad["problems"])
    again = runner.invoke(app, [*args, *fields, "--append"])
    assert again.exit_code == 0 and json.loads(again.stdout)["shards_encoded"] == 0
    assert len(TokenStore(out)) == 7
    # decode --format wds writes the text back
    wds = tmp_path / "wds"
    decoded = runner.invoke(app, ["decode", out, "-o", str(wds), "--format", "wds"])
    assert decoded.exit_code == 0, decoded.stderr
    samples = [s for t in sorted(wds.glob("*.tar")) for s in read_tar(str(t))]
    assert [s.files["txt"].decode() for s in samples] == whole["captions"]
    meta = [json.loads(s.files["json"]) for s in samples]
    assert meta[6] == {"url": "https://example.com/000010001.jpg", "width": "40"}
    refused = runner.invoke(app, [*args, "--metadata-fields", "url,a/b", "-o", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "'a/b' cannot name an array" in refused.stderr
