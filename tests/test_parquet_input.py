"""Parquet files as input shards (issue 25, point 1): the Hugging Face Hub's shape (an image
struct column described by the `huggingface` schema metadata) and img2dataset's (`jpg`,
`caption`, `url` columns) encode, verify, evaluate and train as tars of the same images do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shardmaker import jpeg, write_tar
from test_encode import SMALL, _gtok, _save_model, kill_then_resume
from test_store import assert_same_store

from gtok.cli.main import app
from gtok.encode import encode_shards
from gtok.store import TokenStore

CAPTIONS = [f"picture {i}, caf\u00e9" if i % 3 else None for i in range(7)]
HF_FEATURES = {
    "info": {
        "features": {
            "image": {"_type": "Image"},
            "text": {"dtype": "string", "_type": "Value"},
        }
    }
}


def _images(n: int, start: int = 0) -> list[bytes]:
    return [jpeg(start + i) for i in range(n)]


def hub_parquet(path: Path, images: list[bytes], captions: list, rows_per_group: int = 3) -> Path:
    """A Parquet file as `datasets` writes it: `image` {bytes, path} structs, `text`, and the
    features in the `huggingface` schema metadata; several row groups."""
    cells = [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)]
    table = pa.table({"image": cells, "text": captions})
    metadata = {b"huggingface": json.dumps(HF_FEATURES).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path, row_group_size=rows_per_group)
    return path


def i2d_parquet(path: Path, images: list, captions: list, rows_per_group: int = 3) -> Path:
    """A Parquet file as img2dataset --output_format parquet writes it."""
    n = len(images)
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(n)],
            "caption": captions,
            "url": [f"https://example.com/{i}.jpg" for i in range(n)],
            "width": [40] * n,
            "jpg": pa.array(images, pa.binary()),
        }
    )
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def as_tar(path: Path, images: list[bytes], captions: list, meta: list[dict] | None = None):
    """The same samples as a WebDataset tar keyed by row number."""
    samples = []
    for i, image in enumerate(images):
        files = {"jpg": image}
        if captions[i] is not None:
            files["txt"] = captions[i].encode()
        if meta is not None:
            files["json"] = json.dumps(meta[i]).encode()
        samples.append((str(i), files))
    return write_tar(path, samples)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _encode(runner, model: Path, *args: str) -> dict:
    common = ["-m", str(model), "--workers", "0", "--batch-size", "4", "--json"]
    result = runner.invoke(app, ["encode", *args, *common])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _store(path: Path, *fields: str) -> dict:
    store = TokenStore(path, fields=("indices", "geometry", "keys", "captions", *fields))
    return store[0 : len(store)]


def _same_tokens(a: dict, b: dict) -> None:
    assert np.array_equal(a["indices"], b["indices"])
    assert np.array_equal(a["geometry"], b["geometry"])


def test_hub_and_img2dataset_parquet_encode_to_the_tokens_of_the_same_tars(tmp_path, model, runner):
    images = _images(7)
    meta = [{"url": f"https://example.com/{i}.jpg", "width": 40} for i in range(7)]
    data = tmp_path / "data"
    data.mkdir()
    hub_parquet(data / "hub.parquet", images, CAPTIONS)
    i2d_parquet(data / "i2d.parquet", images, CAPTIONS)
    tars = tmp_path / "tars"
    as_tar(tars / "hub.tar", images, CAPTIONS)
    as_tar(tars / "i2d.tar", images, CAPTIONS, meta)
    fields = ("--metadata-fields", "url,width")
    summary = _encode(runner, model, str(data), "-o", str(tmp_path / "pq.zarr"), *fields)
    assert (summary["encoded"], summary["skipped"], summary["shards_encoded"]) == (14, 0, 2)
    _encode(runner, model, str(tars), "-o", str(tmp_path / "tar.zarr"), *fields)
    meta_fields = ("meta/url", "meta/width")
    got, want = (
        _store(tmp_path / "pq.zarr", *meta_fields),
        _store(tmp_path / "tar.zarr", *meta_fields),
    )
    _same_tokens(got, want)
    assert got["keys"][:2] == ["hub.parquet/0", "hub.parquet/1"]
    assert [k.replace(".parquet/", ".tar/") for k in got["keys"]] == want["keys"]
    assert got["captions"] == want["captions"] == [c or "" for c in CAPTIONS * 2]
    assert got["meta/url"] == [""] * 7 + [m["url"] for m in meta]  # the Hub file has no url
    assert got["meta/width"] == [""] * 7 + ["40"] * 7
    verify = runner.invoke(app, ["verify", str(tmp_path / "pq.zarr"), "--against", str(data)])
    assert verify.exit_code == 0 and ": ok; 2 shards, 14 source samples" in verify.stdout


def test_bad_image_cells_are_skipped_with_their_reasons(tmp_path, model, runner):
    images: list = _images(6)
    images[1] = b"\xff\xd8 not a jpeg"
    images[2] = None
    images[4] = jpeg(4, size=(400, 320))  # larger than --max-member-bytes
    path = i2d_parquet(tmp_path / "odd.parquet", images, [None] * 6)
    out = tmp_path / "t.zarr"
    limit = str(len(max((b for b in images if b), key=len)) - 1)
    summary = _encode(runner, model, str(path), "-o", str(out), "--max-member-bytes", limit)
    assert (summary["encoded"], summary["skipped"]) == (3, 3)
    reasons = {key: reason for _, key, reason in TokenStore(out).skipped()}
    assert set(reasons) == {"1", "2", "4"}
    assert "cannot identify image" in reasons["1"] or "not an image" in reasons["1"]
    assert reasons["2"] == "the image cell is null"
    assert reasons["4"].endswith(f"over the limit of {limit} bytes per member (--max-member-bytes)")
    verify = runner.invoke(app, ["verify", str(out), "--against", str(path), "--json"])
    assert json.loads(verify.stdout)["ok"], verify.stdout


def test_key_column_names_the_rows_and_verify_compares_with_it(tmp_path, model, runner):
    images = _images(5)
    table = pa.table({"id": ["a", "b", "a", None, "e"], "jpg": images})
    pq.write_table(table, tmp_path / "keys.parquet", row_group_size=2)
    out = tmp_path / "t.zarr"
    summary = _encode(
        runner, model, str(tmp_path / "keys.parquet"), "-o", str(out), "--key-column", "id"
    )
    assert (summary["encoded"], summary["skipped"]) == (3, 2)
    store = TokenStore(out)
    assert store.keys() == ["keys.parquet/a", "keys.parquet/b", "keys.parquet/e"]
    reasons = {key: reason for _, key, reason in store.skipped()}
    assert reasons == {
        "a": "duplicate key: it already appeared in this file",
        "3": "the key column 'id' is null in row 3",
    }
    against = ["verify", str(out), "--against", str(tmp_path / "keys.parquet"), "--json"]
    assert json.loads(runner.invoke(app, [*against, "--key-column", "id"]).stdout)["ok"]
    by_row = json.loads(runner.invoke(app, against).stdout)  # keys 0..4: not what was encoded
    assert not by_row["ok"] and "keys.parquet/0: 1 in the source, 0 in the store" in str(by_row)
    missing = runner.invoke(
        app, ["encode", str(tmp_path / "keys.parquet"), "-o", str(out), "--key-column", "nope"]
    )
    assert missing.exit_code == 1
    assert (
        "keys.parquet has no column 'nope' (--key-column); its columns are id, jpg"
        in missing.stderr
    )


def test_an_unclear_image_column_is_named_with_image_column(tmp_path, model, runner):
    images = _images(3)
    pq.write_table(pa.table({"jpg": images, "png": images}), tmp_path / "two.parquet")
    out = str(tmp_path / "t.zarr")
    unclear = runner.invoke(app, ["encode", str(tmp_path / "two.parquet"), "-o", out])
    assert unclear.exit_code == 1 and not Path(out).exists()
    assert "two.parquet has several image columns (jpg, png); name the one" in unclear.stderr
    summary = _encode(
        runner, model, str(tmp_path / "two.parquet"), "-o", out, "--image-column", "png"
    )
    assert summary["encoded"] == 3


@pytest.mark.subprocess
def test_kill_during_a_parquet_run_then_resume_finishes_and_verify_says_ok(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for f in range(12):
        i2d_parquet(data / f"{f:05d}.parquet", _images(4, start=10 * f), ["x"] * 4, 2)
    out = tmp_path / "killed.zarr"
    done, summary, _ = kill_then_resume(data, out, model)
    assert summary["shards_already_done"] >= done and summary["finalized"]
    verify = _gtok("verify", str(out), "--against", str(data))
    stdout, _ = verify.communicate(timeout=120)
    assert verify.returncode == 0 and ": ok; 12 shards, 48 source samples" in stdout.decode()
    encode_shards([data], tmp_path / "clean.zarr", model, batch_size=4, workers=0)
    assert_same_store(out, tmp_path / "clean.zarr")


def test_a_parquet_file_changed_after_encoding_is_refused_on_resume(tmp_path, model, runner):
    path = i2d_parquet(tmp_path / "a.parquet", _images(3), [None] * 3)
    out = str(tmp_path / "t.zarr")
    _encode(runner, model, str(path), "-o", out)
    i2d_parquet(path, _images(4), [None] * 4)
    again = runner.invoke(app, ["encode", str(path), "-o", out, "-m", str(model), "--workers", "0"])
    assert again.exit_code == 1 and "is not the file" in again.stderr


def test_train_runs_a_few_steps_on_parquet(tmp_path, runner):
    path = hub_parquet(tmp_path / "train.parquet", _images(6), [None] * 6, rows_per_group=4)
    run_dir = tmp_path / "run"
    args = [str(path), "--preset", "tiny", "--out", str(run_dir), "--epochs", "1"]
    args += ["--batch-size", "2", "--image-size", "32", "--workers", "0", "--val-images", "2"]
    args += ["--model", "num_gaussians=16", "--model", "codebook_size=64"]
    args += ["--val-shards", str(path), "--image-column", "image"]
    result = runner.invoke(app, ["train", *args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == 3  # 6 rows (from the footer) in batches of 2
    record = json.loads((run_dir / "train.json").read_text())
    assert record["settings"]["image_column"] == "image"


def test_without_pyarrow_a_parquet_input_is_one_sentence(tmp_path, runner, monkeypatch):
    path = i2d_parquet(tmp_path / "x.parquet", _images(2), [None] * 2)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import` then raises
    out = tmp_path / "t.zarr"
    result = runner.invoke(app, ["encode", str(path), "-o", str(out)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and not out.exists()
    assert errors == [
        f"error: {path.name} is a Parquet file; reading it needs pyarrow: pip install "
        "'gtok[parquet]'."
    ]


def test_a_damaged_parquet_file_is_refused_before_any_store_is_made(tmp_path, runner):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1" + bytes(4096) + b"PAR1")
    out = tmp_path / "t.zarr"
    result = runner.invoke(app, ["encode", str(bad), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert "error: Cannot read the Parquet file bad.parquet (" in result.stderr


@pytest.mark.parametrize(
    ("name", "head", "kind"), [("x.zip", b"PK\x03\x04", "ZIP"), ("x.tar", b"%PDF-", "PDF")]
)
def test_verify_against_a_file_gtok_cannot_read_is_one_sentence_first(
    tmp_path, runner, name, head, kind
):
    source = tmp_path / name
    source.write_bytes(head + bytes(1024))
    missing_store = str(tmp_path / "nowhere.zarr")  # the source is named before the store
    result = runner.invoke(app, ["verify", missing_store, "--against", str(source)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1
    assert f"{name} is a {kind} file, not a tar shard or Parquet file" in errors[0]


def test_eval_scores_a_parquet_file_as_the_tar_of_its_images(tmp_path, model, runner):
    images = _images(5)
    pq_path = hub_parquet(tmp_path / "val.parquet", images, [None] * 5)
    tar_path = as_tar(tmp_path / "val.tar", images, [None] * 5)
    skip = ["--skip", "lpips-vgg", "--skip", "lpips-alex", "--skip", "rfid"]
    common = ["-m", str(model), "--workers", "0", "--device", "cpu", "--json", *skip]
    scores = []
    for source in (pq_path, tar_path):
        result = runner.invoke(app, ["eval", str(source), *common])
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout))
    assert scores[0]["n"] == scores[1]["n"] == 5
    assert scores[0]["psnr"] == scores[1]["psnr"]
