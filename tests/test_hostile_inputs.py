"""Hostile inputs through the real CLI (`tests/hostilekit.py`: a subprocess under a 4 GiB
address-space limit): tar members that claim gigabytes, member names that are not UTF-8, and
image folders with symbolic-link loops. Each must be skipped with a reason, exit 0, no
traceback, and leave a store that `gtok verify` accepts and a rerun leaves as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostilekit import assert_no_temp_files, run_gtok
from shardmaker import (
    huge_pax_header,
    jpeg,
    pax_size_member,
    sparse_member,
    tar_member,
    write_raw_tar,
)
from test_encode import SMALL, _save_model

from gtok.data.tario import unescape_name
from gtok.encode import encode_shards
from gtok.store import TokenStore
from gtok.store.verify import verify_store

pytestmark = pytest.mark.subprocess

LIMIT = "over the limit of 268435456 bytes per member (--max-member-bytes)"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _ok(result) -> dict:
    """The JSON of a run that must have succeeded without a traceback."""
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0 and "Traceback" not in result.stderr, detail
    return json.loads(result.stdout)


def _encode(shards: Path, store: Path, model: Path) -> dict:
    args = ("encode", shards, "-o", store, "-m", model, "--workers", "0", "--json")
    return _ok(run_gtok(*args))


def _verified(store: Path, shards: Path) -> None:
    report = verify_store(store, [shards])
    assert report.ok, report.problems


def _around(folder: Path, name: str, hostile: bytes) -> None:
    """A tar `name`: a good sample 000, the hostile member(s), a good sample 002."""
    before = tar_member("000.jpg", jpeg(0))
    write_raw_tar(folder / name, [before, hostile, tar_member("002.jpg", jpeg(2))])


def test_members_claiming_gigabytes_are_skipped_without_reading_them(tmp_path, model):
    shards = tmp_path / "shards"
    _around(shards, "sparse.tar", sparse_member("001.jpg", 6 * 10**9))  # 6 GB in 4 KB
    _around(shards, "pax-size.tar", pax_size_member("001.jpg", 10**12))
    _around(shards, "pax-header.tar", huge_pax_header(10**12))
    store = tmp_path / "t.zarr"
    summary = _encode(shards, store, model)
    assert summary["finalized"] and summary["shards_encoded"] == 3
    reasons = {(e["shard"], e["key"]): e["reason"] for e in summary["skipped_examples"]}
    assert reasons[("sparse.tar", "001")] == f"member 001.jpg is 6000000000 bytes, {LIMIT}"
    assert reasons[("pax-size.tar", "001")] == f"member 001.jpg is 1000000000000 bytes, {LIMIT}"
    assert "truncated or corrupt" in reasons[("pax-size.tar", "")]
    assert reasons[("pax-header.tar", "")] == (
        f"tar is truncated or corrupt (a tar header claims 1000000000000 bytes, {LIMIT})"
    )
    keys = TokenStore(store).keys()
    assert {"sparse.tar/000", "sparse.tar/002", "pax-size.tar/000"} <= set(keys)
    assert summary["damaged_shards"] == 2
    _verified(store, shards)
    assert_no_temp_files(tmp_path)


def test_non_utf8_member_names_give_a_finished_store_and_reruns_stay_fine(tmp_path, model):
    shards = tmp_path / "shards"
    names = ["a\udcff.jpg", "b\udce9t\u00e9.jpg", "c%41.jpg", "d%.jpg"]  # \udcXX: raw byte XX
    tar = shards / "n\udce4mes.tar"  # the shard's file name is not UTF-8 either
    write_raw_tar(tar, [tar_member(n, jpeg(i)) for i, n in enumerate(names)])
    store = tmp_path / "t.zarr"
    first = _encode(shards, store, model)  # before: UnicodeEncodeError, on every rerun too
    assert first["finalized"] and first["encoded"] == 4 and first["skipped"] == 0
    keys = TokenStore(store).keys()
    assert keys == [f"n%E4mes.tar/{k}" for k in ("a%FF", "b%E9t\u00e9", "c%2541", "d%")]
    assert [[unescape_name(part) for part in k.split("/")] for k in keys] == [
        [b"n\xe4mes.tar", raw] for raw in (b"a\xff", b"b\xe9t\xc3\xa9", b"c%41", b"d%")
    ]
    assert TokenStore(store).inputs()[0]["url"] == str(shards / "n\\xe4mes.tar")
    again = encode_shards([shards], store, model, workers=0)
    assert again.finalized and again.shards_already_done == 1 and again.encoded == 0
    assert TokenStore(store).keys() == keys
    _verified(store, shards)


def test_pack_skips_symlink_loops_with_reasons(tmp_path):
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    (src / "01.jpg").write_bytes(jpeg(1))
    (src / "sub" / "02.jpg").write_bytes(jpeg(2))
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # to an ancestor
    (src / "self.jpg").symlink_to("self.jpg")
    (src / "loop-a").symlink_to("loop-b")
    (src / "loop-b").symlink_to("loop-a")
    (src / "dangling.jpg").symlink_to("nowhere.jpg")
    (src / "link.jpg").symlink_to("01.jpg")
    out = tmp_path / "shards"
    summary = _ok(run_gtok("pack", src, "-o", out, "--workers", "0", "--json"))
    assert (summary["packed"], summary["skipped"]) == (3, 5)
    (stats,) = [json.loads(p.read_text()) for p in out.glob("shard-*_stats.json")]
    assert {s["path"]: s["reason"] for s in stats["skipped_files"]} == {
        "dangling.jpg": "broken symbolic link",
        "loop-a": "symbolic link loop: not followed",
        "loop-b": "symbolic link loop: not followed",
        "self.jpg": "symbolic link loop: not followed",
        "sub/up": "symbolic link to a folder: not followed",
    }
    assert stats["reasons"]["symbolic link loop"] == 3
    assert_no_temp_files(out)
