"""A shard's identity in a store is more than its file name.

Every img2dataset download names its shards `00000.tar`, `00001.tar`, ... and every
`gtok pack` output `shard-000000.tar`, so a second dataset under the first one's names must
not pass for it: `--append` and a resume refuse such a file with one sentence naming it,
and `gtok verify --against` reports it, even where its sample keys are the same. One file
named several ways is one shard. Stores written before gtok recorded fingerprints still
open, resume, take appends and verify (by sample keys, as before).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pytest
import zarr
from hostilekit import assert_one_error, run_gtok
from shardmaker import clean_samples, img2dataset_shard, jpeg, write_tar
from test_encode import SMALL, _save_model

from gtok.cli.main import app
from gtok.data.shards import FINGERPRINT_SPAN, expand_shards, shard_fingerprint
from gtok.store import TokenStore, schema
from gtok.store.verify import verify_store


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _args(model: Path, out: Path, *specs, extra=()) -> list[str]:
    return ["encode", *map(str, specs), "-o", str(out), "-m", str(model), "--workers", "0", *extra]


def _encoded(runner, model: Path, out: Path, *specs, extra=()) -> dict:
    """The JSON summary of an in-process `gtok encode` that must succeed."""
    result = runner.invoke(app, [*_args(model, out, *specs, extra=extra), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _refused(model: Path, out: Path, *specs, extra=()) -> str:
    """The one error line of a `gtok encode` (a subprocess, as a user runs it) that must fail."""
    return assert_one_error(run_gtok(*_args(model, out, *specs, extra=extra)))


def _second_download(folder: Path, shard: int, n: int) -> Path:
    """A shard named and keyed as `img2dataset_shard(folder, shard, n)` names and keys it,
    holding other pictures: what a second img2dataset download of other URLs writes."""
    samples = [(f"{shard:05d}{i:04d}", {"jpg": jpeg(500 + i)}) for i in range(n)]
    return write_tar(folder / f"{shard:05d}.tar", samples)


def _drop_columns(store: Path, columns) -> None:
    """Delete these columns of `store`'s inputs table, as gtok before fingerprints wrote it."""
    for column in columns:
        shutil.rmtree(store / schema.INPUTS / column)
    zarr.consolidate_metadata(str(store))


# ---- point 1: --append ------------------------------------------------------------------


@pytest.mark.subprocess
def test_append_of_another_file_under_a_stored_name_is_refused(tmp_path, model, runner):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "s.zarr"
    img2dataset_shard(first, 0, 4)
    assert _encoded(runner, model, out, first)["encoded"] == 4
    changed = _second_download(second, 0, 4)  # same name, same keys, other pictures
    img2dataset_shard(second, 1, 2)  # and a shard the store lacks
    line = _refused(model, out, second, extra=["--append"])
    assert str(changed) in line and "as its shard 00000.tar" in line
    assert "but their content differs" in line or "bytes, the encoded file was" in line
    assert "rename it" in line and "another store" in line
    store = TokenStore(out)
    assert len(store) == 4 and store.header.appends == ()  # refused before any change
    # the same file again with a new shard: it is skipped as before, the new one appended
    summary = _encoded(runner, model, out, first, second / "00001.tar", extra=["--append"])
    assert summary["shards_encoded"] == 1 and len(TokenStore(out)) == 6
    # verify compared keys only: the swapped-in file had passed
    report = verify_store(out, [changed, second / "00001.tar"])
    assert not report.ok and report.fingerprints_checked == 2
    assert f"00000.tar: {changed} is not the file the store encoded" in report.problems[0]
    assert verify_store(out, [first, second / "00001.tar"]).ok


@pytest.mark.subprocess
def test_a_resumed_append_checks_the_shards_it_keeps(tmp_path, model, runner):
    """An append whose workers have not been finalized compares the shards the store held
    before it with the copy of the tables it made (`parts/_before`)."""
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "s.zarr"
    img2dataset_shard(first, 0, 3)
    _encoded(runner, model, out, first)
    img2dataset_shard(second, 1, 2)
    worker = ["--append", "--shard-id", "0", "--num-shards", "2"]
    assert _encoded(runner, model, out, first, second, extra=worker)["shards_encoded"] == 1
    changed = _second_download(tmp_path / "third", 0, 3)
    line = _refused(model, out, changed, second / "00001.tar", extra=worker)
    assert str(changed) in line and "as its shard 00000.tar" in line
    assert _encoded(runner, model, out, first, second, extra=worker)["shards_encoded"] == 0


# ---- point 2: resume --------------------------------------------------------------------


def _pack_output(folder: Path, start: int) -> Path:
    """A folder as `gtok pack` writes it: `shard-000000.tar`, `shard-000001.tar`."""
    for shard in range(2):
        write_tar(folder / f"shard-{shard:06d}.tar", clean_samples(3, start=start + 3 * shard))
    return folder


@pytest.mark.subprocess
def test_resume_with_other_files_of_the_same_names_is_refused(tmp_path, model, runner):
    one, two = _pack_output(tmp_path / "one", 0), _pack_output(tmp_path / "two", 100)
    out = tmp_path / "s.zarr"
    _encoded(runner, model, out, one)
    line = _refused(model, out, two)
    assert str(two / "shard-000000.tar") in line and "as its shard shard-000000.tar" in line
    keys = TokenStore(out).keys()
    assert keys[0] == "shard-000000.tar/000000" and len(keys) == 6  # the old rows, untouched
    assert _encoded(runner, model, out, one)["shards_already_done"] == 2  # the same files
    # an unfinished store: its parts record the files they were read from
    parts = tmp_path / "parts.zarr"
    worker = ["--shard-id", "0", "--num-shards", "2"]
    assert _encoded(runner, model, parts, one, extra=worker)["shards_encoded"] == 1
    line = _refused(model, parts, two, extra=worker)
    assert str(two / "shard-000000.tar") in line
    assert _encoded(runner, model, parts, one, extra=worker)["shards_already_done"] == 1


# ---- point 20: one file named several ways ----------------------------------------------


@pytest.mark.subprocess
def test_one_shard_named_several_ways_is_one_shard(tmp_path, model, runner):
    shard = write_tar(tmp_path / "A" / "x.tar", clean_samples(3))
    (tmp_path / "L").symlink_to("A")
    ways = [tmp_path / "A" / ".." / "A" / "x.tar", tmp_path / "L", f"file://{shard}", shard]
    assert [r.name for r in expand_shards(ways)] == ["x.tar"]
    summary = _encoded(runner, model, tmp_path / "s.zarr", *ways)
    assert summary["shards_total"] == 1 and summary["encoded"] == 3
    other = write_tar(tmp_path / "B" / "x.tar", clean_samples(2, start=10))
    line = _refused(model, tmp_path / "t.zarr", shard, other)
    assert "Two shards are named x.tar" in line


# ---- stores written before fingerprints -------------------------------------------------


@pytest.mark.slow
def test_stores_without_fingerprints_open_resume_append_and_verify(tmp_path, model, runner):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "s.zarr"
    img2dataset_shard(first, 0, 3)
    _encoded(runner, model, out, first)
    _drop_columns(out, schema.INPUT_IDENTITY_COLUMNS)
    assert len(TokenStore(out)) == 3
    result = runner.invoke(app, ["verify", str(out), "--against", str(first)])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "1 shards have no recorded fingerprint" in result.stdout
    assert _encoded(runner, model, out, first)["shards_already_done"] == 1
    img2dataset_shard(second, 1, 2)
    assert _encoded(runner, model, out, first, second, extra=["--append"])["encoded"] == 2
    inputs = zarr.open_group(str(out), mode="r")[schema.INPUTS]
    assert inputs["bytes"][...].tolist() == [-1, (second / "00001.tar").stat().st_size]
    assert inputs["fingerprint"][0] == ""
    report = verify_store(out, [first, second])
    assert report.ok and (report.fingerprints_checked, report.fingerprints_missing) == (1, 1)


@pytest.mark.subprocess
def test_damaged_fingerprint_records_are_one_sentence(tmp_path, model, runner):
    shards, out = tmp_path / "shards", tmp_path / "s.zarr"
    img2dataset_shard(shards, 0, 2)
    _encoded(runner, model, out, shards)
    zarr.open_group(str(out), mode="r+")[f"{schema.INPUTS}/fingerprint"][0] = "not hex"
    line = assert_one_error(run_gtok("verify", out, "--against", shards))
    assert "is damaged" in line and "malformed shard fingerprint" in line
    line = _refused(model, out, shards, extra=["--append"])
    assert "malformed shard fingerprint" in line
    half = tmp_path / "half.zarr"
    _encoded(runner, model, half, shards)
    _drop_columns(half, ["bytes"])
    line = assert_one_error(run_gtok("info", half))
    assert "is damaged" in line and "inputs/bytes" in line
    img2dataset_shard(shards, 1, 2)
    parts, worker = tmp_path / "parts.zarr", ["--shard-id", "0", "--num-shards", "2"]
    _encoded(runner, model, parts, shards, extra=worker)
    part = zarr.open_group(str(parts / schema.PARTS / "00000.tar"), mode="r+")
    part.attrs[schema.PART_SOURCE] = {"bytes": "many"}
    line = _refused(model, parts, shards, extra=worker)
    assert "the part of 00000.tar" in line and "malformed shard fingerprint" in line


# ---- the fingerprint ----------------------------------------------------------------------


def test_fingerprint_reads_two_ranges_and_sees_size_head_and_tail(tmp_path, monkeypatch):
    size = 3 * FINGERPRINT_SPAN
    data = bytearray(bytes(range(256)) * (size // 256))
    local = tmp_path / "a.tar"
    local.write_bytes(data)
    memory = fsspec.filesystem("memory")
    memory.pipe_file("/identity/a.tar", bytes(data))
    ranges = []
    cat_file = type(memory).cat_file

    def recorded(self, path, start=None, end=None, **kw):
        ranges.append((start, end))
        return cat_file(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(type(memory), "cat_file", recorded)
    remote = shard_fingerprint("memory://identity/a.tar")
    assert ranges == [(0, FINGERPRINT_SPAN), (size - FINGERPRINT_SPAN, size)]
    assert remote == shard_fingerprint(str(local)) and remote.size == size
    data[size // 2] ^= 1  # the middle is not read: cheap, and said so
    local.write_bytes(data)
    assert shard_fingerprint(str(local)) == remote
    data[-1] ^= 1
    local.write_bytes(data)
    changed = shard_fingerprint(str(local))
    assert changed != remote and "their content differs" in changed.difference(remote)
    local.write_bytes(data[:100])
    short = shard_fingerprint(str(local))
    assert short.difference(remote) == f"it is 100 bytes, the encoded file was {size}"
    (tmp_path / "empty.tar").write_bytes(b"")
    assert shard_fingerprint(str(tmp_path / "empty.tar")).size == 0
