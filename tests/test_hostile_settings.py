"""What a token store records about how its tokens were made, and the writers and readers
that meet it later: a resume after an `--append` whose shards sort first, a
reader opened before an append, a resume or append with another `--batch-size`, and a
`--resize` that no image could pass. Each is run as the user would: the CLI in-process for
writers, `TokenStore` for readers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostilekit import assert_one_error
from shardmaker import clean_samples, png, write_clean_shards, write_tar
from test_encode import SMALL, _save_model
from test_hostile_cli import _in_process
from test_store_append import append, encode

from gtok.errors import GtokError
from gtok.store import TokenStore
from gtok.store import finalize as finalize_module
from gtok.store.info import store_info


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _encode(runner, shards, store: Path, model: Path, *flags: str) -> subprocess.CompletedProcess:
    """`gtok encode SHARDS... -o STORE -m MODEL --workers 0 FLAGS` in-process."""
    args = ["encode", *shards, "-o", store, "-m", model, "--workers", "0", *flags]
    return _in_process(runner, *args)


def _ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a run that must have succeeded."""
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_resume_with_every_shard_after_an_append_of_shards_that_sort_first(tmp_path, runner, model):
    """Point 12: the store lists its shards in row order (appended ones last), the command
    line in name order; the same set is the same plan."""
    old = write_tar(tmp_path / "old" / "shard-b.tar", clean_samples(3))
    new = write_tar(tmp_path / "new" / "shard-a.tar", clean_samples(2, start=10))
    store = tmp_path / "s.zarr"
    _ok(_encode(runner, [old], store, model))
    _ok(_encode(runner, [new], store, model, "--append"))
    before = TokenStore(store).keys()
    assert [k.split("/")[0] for k in before] == ["shard-b.tar"] * 3 + ["shard-a.tar"] * 2
    out = _ok(_encode(runner, [old, new], store, model))
    assert "from 0 shards (2 were already done)" in out
    assert TokenStore(store).keys() == before


def _first_worker(runner, shards: Path, store: Path, model: Path) -> None:
    """Worker 0 of 2 encodes its shard with --batch-size 4; the store stays unfinished."""
    flags = ("--batch-size", "4", "--shard-id", "0", "--num-shards", "2")
    _ok(_encode(runner, [shards], store, model, *flags))
    assert store_info(store)["shards_done"] == 1


def _edit_numerics(store: Path, edit: Callable[[dict], object]) -> None:
    """Edit the `numerics` record of the store's header in place."""
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"]["gtok"]["numerics"])
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_a_resume_or_append_with_another_batch_size_is_refused(tmp_path, runner, model):
    """Point 4: tokens depend slightly on the batch size, so the store records it, a rerun
    without --batch-size takes the recorded one, and another one is refused."""
    shards = tmp_path / "shards"
    write_clean_shards(shards, 2, 3)
    store = tmp_path / "s.zarr"
    _first_worker(runner, shards, store, model)
    assert store_info(store)["numerics"]["batch_size"] == 4
    resumed = _encode(runner, [shards], store, model, "--batch-size", "2")
    assert_one_error(resumed, contains="was encoded with --batch-size 4, not 2")
    assert store_info(store)["shards_done"] == 1
    _ok(_encode(runner, [shards], store, model))  # no --batch-size: the recorded one
    more = write_tar(tmp_path / "more" / "shard-9.tar", clean_samples(2, start=20))
    appended = _encode(runner, [more], store, model, "--append", "--batch-size", "2")
    assert_one_error(appended, contains="was encoded with --batch-size 4, not 2")
    finished = TokenStore(store)
    assert len(finished) == 6 and finished.header.appends == ()
    _ok(_encode(runner, [more], store, model, "--append"))
    assert len(TokenStore(store)) == 8 and store_info(store)["numerics"]["batch_size"] == 4


def test_a_store_that_predates_the_recorded_batch_size_resumes_with_any(tmp_path, runner, model):
    shards = tmp_path / "shards"
    write_clean_shards(shards, 2, 3)
    store = tmp_path / "s.zarr"
    _first_worker(runner, shards, store, model)
    _edit_numerics(store, lambda numerics: numerics.pop("batch_size"))  # as gtok wrote it
    _ok(_encode(runner, [shards], store, model, "--batch-size", "2"))
    assert len(TokenStore(store)) == 6
    assert "batch_size" not in store_info(store)["numerics"]  # still unknown, not guessed


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (lambda numerics: numerics.update(batch_size="4"), "numerics.batch_size is '4'"),
        (lambda numerics: numerics.update(precision=["fp32"]), "numerics.precision is ['fp32']"),
    ],
    ids=["batch size a string", "precision a list"],
)
def test_a_hand_edited_numerics_record_is_one_sentence(tmp_path, runner, model, edit, phrase):
    shards = tmp_path / "shards"
    write_clean_shards(shards, 2, 3)
    store = tmp_path / "s.zarr"
    _first_worker(runner, shards, store, model)
    _edit_numerics(store, edit)
    line = assert_one_error(_encode(runner, [shards], store, model), contains=phrase)
    assert f"{store} is damaged" in line


RESIZE_CASES = [  # (gtok arguments after the command, the one error); the model takes 16 px
    ("encode --resize 20000", "--resize 20000 is so large that every resized image would"),
    ("encode --resize 8", "--resize 8 is smaller than the model's image size 16; use --resize"),
    ("encode --max-pixels 100", "--max-pixels 100 would skip every image"),
    ("eval --resize 20000", "use --resize in 16..9459."),
    ("pairs --resize 20000", "use --resize in 16..9459."),
]


@pytest.mark.parametrize(("command", "message"), RESIZE_CASES, ids=[c[0] for c in RESIZE_CASES])
def test_a_resize_no_image_could_pass_is_refused_before_any_work(
    tmp_path, runner, model, command, message
):
    """Point 17: a resized image has at least --resize squared pixels, so a --resize whose
    square exceeds --max-pixels would skip every image and exit 0."""
    shards = tmp_path / "shards"
    write_clean_shards(shards, 1, 2)
    (tmp_path / "recon").mkdir()
    (tmp_path / "recon" / "shard-0000.tar").mkdir()
    (tmp_path / "recon" / "shard-0000.tar" / "000000.png").write_bytes(png(0, (16, 16)))
    name, *flags = command.split()
    args = {
        "encode": ["encode", shards, "-o", tmp_path / "out", "-m", model, "--workers", "0"],
        "eval": ["eval", shards, "-m", model, "--workers", "0"],
        "pairs": ["eval", "--reference", shards, "--reconstructed", tmp_path / "recon",
                  "--size", "16", "--workers", "0"],
    }[name]  # fmt: skip
    assert_one_error(_in_process(runner, *args, *flags), contains=message)
    assert not (tmp_path / "out").exists()


def _rows(store: TokenStore, rows: slice) -> dict:
    """Rows of every array of `store` a reader reads, keys included."""
    batch = store[rows]
    return {"keys": store.keys()[rows], **{k: v for k, v in batch.items() if k != "row"}}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, values in a.items():
        assert np.array_equal(values, b[name], equal_nan=name == "geometry"), name


@pytest.mark.slow
def test_a_reader_opened_before_an_append_reads_on_and_sees_the_new_rows(tmp_path, runner, model):
    """Point 6, the issue's sequence: a TokenStore opened before `gtok encode --append` and
    read after its finalize, which rewrote the Zarr shard file holding its last rows."""
    old = write_tar(tmp_path / "old" / "shard-0.tar", clean_samples(3))
    new = write_tar(tmp_path / "new" / "shard-1.tar", clean_samples(2, start=10))
    path = tmp_path / "s.zarr"
    _ok(_encode(runner, [old], path, model))
    reader = TokenStore(path, fields=("indices", "geometry", "labels", "keys"))
    before = _rows(reader, slice(0, 3))
    flags = ("--append", "--shard-id", "0", "--num-shards", "2")  # one worker: unfinished
    _ok(_encode(runner, [new], path, model, *flags))
    assert len(reader) == 3  # the append is under way: the old rows read as they were
    _assert_same(_rows(reader, slice(0, 3)), before)
    _ok(_in_process(runner, "encode", "--finalize", "-o", path))
    assert len(reader) == 5
    _assert_same(_rows(reader, slice(0, 3)), before)
    fresh = TokenStore(path, fields=reader.fields)
    _assert_same(_rows(reader, slice(0, 5)), _rows(fresh, slice(0, 5)))
    assert reader.counts == fresh.counts and [i["name"] for i in reader.inputs()] == [
        "shard-0.tar",
        "shard-1.tar",
    ]
    _ok(_encode(runner, [new], path, model, "--overwrite"))  # another store at the path
    with pytest.raises(GtokError, match="changed while it was open: it is no longer the store"):
        reader[0]


@pytest.mark.slow
@pytest.mark.usefixtures("small_shards")
def test_a_reader_reads_its_rows_while_finalize_rewrites_their_file(tmp_path, monkeypatch):
    """Point 6 inside the append's finalize: the last Zarr shard file is rewritten before
    the header says so; a reader that indexed the old file reads the new one."""
    out = encode(tmp_path / "s.zarr", ["a.tar", "b.tar"])  # 7 rows: shard 1 holds rows 4-6
    reader = TokenStore(out, fields=("indices", "geometry", "keys"))
    before = _rows(reader, slice(0, 7))
    during = []
    original = finalize_module._string_table

    def read_then_write(*args, **kwargs):  # after the row arrays, before the header
        during.append(_rows(reader, slice(0, 7)))
        original(*args, **kwargs)

    monkeypatch.setattr(finalize_module, "_string_table", read_then_write)
    append(out, ["a.tar", "b.tar", "c.tar", "d.tar"])
    assert during and len(reader) == 17
    for rows in (*during, _rows(reader, slice(0, 7))):
        _assert_same(rows, before)
