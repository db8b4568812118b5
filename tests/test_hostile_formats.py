"""Odd files through the real CLI (`tests/hostilekit.py`): PostScript named as a JPEG (which
Pillow would hand to Ghostscript), float TIFFs with NaN/inf pixels, tar members given twice,
and compressed tars. Each must be skipped or recorded with a reason that names what it is,
never run an outside program, never print a raw warning, and leave counts that add up.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path

import numpy as np
import pytest
from hostilekit import run_gtok
from PIL import Image
from shardmaker import encode, jpeg, pixels, tar_member, write_raw_tar, write_tar
from test_encode import SMALL, _save_model

from gtok.cli.main import app
from gtok.data import TarProblem, read_tar
from gtok.store import TokenStore
from gtok.store.verify import verify_store

POSTSCRIPT = "not an image: these bytes are PostScript, which gtok does not read"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _ok(result) -> dict:
    """The JSON of a run that must have succeeded without a traceback or a raw warning."""
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0 and "Traceback" not in result.stderr, detail
    assert "Warning" not in result.stderr, detail
    return json.loads(result.stdout)


def _encode(store: Path, model: Path, *shards: Path, env: dict | None = None) -> tuple[dict, str]:
    """(summary, stderr) of `gtok encode SHARDS... -o STORE --json` that must succeed."""
    args = ("encode", *shards, "-o", store, "-m", model, "--workers", "0", "--json")
    result = run_gtok(*args, env=env)
    return _ok(result), result.stderr


def _reasons(summary: dict) -> dict[tuple[str, str], str]:
    return {(e["shard"], e["key"]): e["reason"] for e in summary["skipped_examples"]}


def _eps() -> bytes:
    """A real Encapsulated PostScript file (Pillow writes them without Ghostscript)."""
    return encode(Image.fromarray(pixels(1)), "EPS")


def _stub_ghostscript(folder: Path) -> tuple[dict, Path]:
    """(environment with a `gs` first on PATH that logs each call, the log it writes)."""
    log = folder / "gs-calls.log"
    gs = folder / "bin" / "gs"
    gs.parent.mkdir(parents=True)
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    gs.chmod(0o755)
    return {"PATH": f"{gs.parent}{os.pathsep}{os.environ['PATH']}"}, log


@pytest.mark.subprocess
def test_postscript_members_are_skipped_without_running_ghostscript(tmp_path, model):
    env, log = _stub_ghostscript(tmp_path)
    shards = tmp_path / "shards"
    write_tar(shards / "s.tar", [("000", {"jpg": _eps()}), ("001", {"jpg": jpeg(1)})])
    summary, _ = _encode(tmp_path / "t.zarr", model, shards, env=env)
    assert not log.exists(), f"Ghostscript was run: {log.read_text()}"
    assert (summary["encoded"], summary["skipped"]) == (1, 1)
    assert _reasons(summary) == {("s.tar", "000"): POSTSCRIPT}


@pytest.mark.subprocess
def test_pack_skips_postscript_without_running_ghostscript(tmp_path):
    env, log = _stub_ghostscript(tmp_path)
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a-photo.jpg").write_bytes(_eps())
    (src / "b-photo.jpg").write_bytes(jpeg(2))
    out = tmp_path / "shards"
    summary = _ok(run_gtok("pack", src, "-o", out, "--workers", "0", "--json", env=env))
    assert not log.exists(), f"Ghostscript was run: {log.read_text()}"
    assert (summary["packed"], summary["skipped"]) == (1, 1)
    (stats,) = [json.loads(p.read_text()) for p in out.glob("shard-*_stats.json")]
    assert [(s["path"], s["reason"]) for s in stats["skipped_files"]] == [
        ("a-photo.jpg", POSTSCRIPT)
    ]


def _float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


@pytest.mark.subprocess
def test_float_tiffs_with_nan_or_inf_are_skipped_without_numpy_warnings(tmp_path):
    ramp = np.linspace(0, 1, 32 * 40).reshape(32, 40)
    holes, flood = ramp.copy(), np.full((32, 40), np.nan)
    holes[3, 4], holes[5, 6] = np.nan, np.inf
    src = tmp_path / "tiffs"
    src.mkdir()
    for name, values in (("flood", flood), ("holes", holes), ("ramp", ramp)):
        (src / f"{name}.tif").write_bytes(_float_tiff(values))
    out = tmp_path / "shards"
    summary = _ok(run_gtok("pack", src, "-o", out, "--workers", "0", "--json"))
    assert (summary["packed"], summary["skipped"]) == (1, 2)
    (stats,) = [json.loads(p.read_text()) for p in out.glob("shard-*_stats.json")]
    assert {s["path"]: s["reason"] for s in stats["skipped_files"]} == {
        "flood.tif": "float image with 1280 NaN or infinite pixels of 1280: they have no colour",
        "holes.tif": "float image with 2 NaN or infinite pixels of 1280: they have no colour",
    }


@pytest.mark.subprocess
def test_a_member_given_twice_skips_its_sample_with_the_reason(tmp_path, model):
    shards = tmp_path / "shards"
    members = [("000.jpg", 0), ("000.jpg", 1), ("001.jpg", 2), ("002.jpg", 3), ("002.JPG", 4)]
    write_raw_tar(shards / "dup.tar", [tar_member(name, jpeg(seed)) for name, seed in members])
    store = tmp_path / "t.zarr"
    summary, _ = _encode(store, model, shards)
    assert _reasons(summary) == {
        ("dup.tar", "000"): "duplicate member 000.jpg: the sample already has a .jpg member",
        ("dup.tar", "002"): "duplicate member 002.JPG: the sample already has a .jpg member",
    }
    counts = summary["store_counts"]
    assert (counts["samples"], counts["encoded"], counts["skipped"]) == (3, 1, 2)
    assert TokenStore(store).keys() == ["dup.tar/001"]
    report = verify_store(store, [shards])
    assert report.ok, report.problems


def test_a_gzipped_shard_is_refused_before_any_store_is_made(tmp_path, model, runner):
    shards = tmp_path / "shards"
    plain = write_tar(shards / "a.tar", [("000", {"jpg": jpeg(0)})])
    gzipped = shards / "b.tar.gz"
    gzipped.write_bytes(gzip.compress(plain.read_bytes()))
    store = tmp_path / "t.zarr"
    result = runner.invoke(app, ["encode", str(plain), str(gzipped), "-o", str(store)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {gzipped} is gzip-compressed, not a tar shard; gtok reads uncompressed tars: "
        "decompress it with gunzip."
    )
    assert not store.exists()


@pytest.mark.parametrize(
    ("compress", "name", "command"),
    [
        (gzip.compress, "gzip", "gunzip"),
        (bz2.compress, "bzip2", "bunzip2"),
        (lzma.compress, "xz", "unxz"),
    ],
)
def test_compressed_tars_are_named_by_their_compression(tmp_path, compress, name, command):
    tar = write_tar(tmp_path / "s.tar", [("000", {"jpg": jpeg(0)})])
    tar.write_bytes(compress(tar.read_bytes()))
    assert list(read_tar(str(tar))) == [
        TarProblem(
            f"not a readable tar (it is {name}-compressed; gtok reads uncompressed tars: "
            f"decompress it with {command})"
        )
    ]
