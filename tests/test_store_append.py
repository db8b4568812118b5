"""Captions, metadata and appends at the store level, with synthetic parts: text arrays are
row-aligned and read on request; an append keeps every existing row, adds the new shards'
rows after them, equals a store encoded in one go, and survives a crash at any step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zarr
from test_store import G, header

from gtok.data.shards import ShardRef
from gtok.errors import GtokError
from gtok.store import Part, StoreWriter, TokenStore, finalize_store, schema
from gtok.store import append as append_module
from gtok.store import finalize as finalize_module
from gtok.store.append import begin_append
from gtok.store.info import store_info

ROWS = {"a.tar": 5, "b.tar": 2, "c.tar": 7, "d.tar": 3}
FIELDS = ("url", "width")


def part(name: str, *, text: bool = True, fields=FIELDS) -> Part:
    """Rows of `name` derived from its name and row; captions on even rows only."""
    n, base = ROWS[name], ord(name[0]) * 10
    rng = np.random.default_rng(base)
    return Part(
        shard=name,
        indices=((base + np.arange(n * G)) % 16).reshape(n, G).astype(np.uint16),
        geometry=rng.normal(size=(n, G, 5)).astype(np.float16),
        keys=[f"{name}/{i:03d}" for i in range(n)],
        labels=np.arange(n, dtype=np.int32) if name == "a.tar" else np.full(n, -1, np.int32),
        skipped=[(f"bad{name[0]}", "not an image")],
        samples=n + 1,
        captions=[f"caption {name} {i}" if i % 2 == 0 else None for i in range(n)]
        if text
        else None,
        meta={f: [f"{f}-{name}-{i}" for i in range(n)] for f in fields},
    )


def _refs(names) -> list[ShardRef]:
    return [ShardRef(n, f"/data/{n}") for n in names]


def _header(names, **changes):
    names = tuple(sorted(names))
    return header(
        shard_names=names,
        shard_urls=tuple(f"/data/{n}" for n in names),
        metadata_fields=FIELDS,
        **changes,
    )


def encode(out, names, **part_kw) -> str:
    """A store of `names` encoded in one go."""
    with StoreWriter.open(str(out), _header(names)) as writer:
        for name in sorted(names):
            writer.write_part(part(name, **part_kw))
    finalize_store(str(out))
    return str(out)


def append(out, names, *, finalize: bool = True, **part_kw) -> list[str]:
    """`gtok encode NAMES --append` in steps: begin, write the new parts, finalize."""
    store_header, todo = begin_append(str(out), _header(names), _refs(names))
    with StoreWriter.open(str(out), store_header) as writer:
        for ref in todo:
            writer.write_part(part(ref.name, **part_kw))
    if finalize:
        finalize_store(str(out))
    return [r.name for r in todo]


def columns(path, names=("indices", "geometry", "keys", "labels", "captions")) -> dict:
    root = zarr.open_group(str(path), mode="r")
    out = {n: root[n][...] for n in names if n in root}
    out |= {f"meta/{f}": root[f"meta/{f}"][...] for f in FIELDS}
    for table, cols in (("skipped", schema.SKIPPED_COLUMNS), ("inputs", schema.INPUT_COLUMNS)):
        out |= {f"{table}/{c}": root[f"{table}/{c}"][...] for c in cols}
    return {k: v.astype(object) if v.dtype.kind in "OTU" else v for k, v in out.items()}


def assert_same_columns(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict:
    """The columns of a.tar..d.tar encoded in one go (values do not depend on SHARD_ROWS)."""
    out = encode(tmp_path_factory.mktemp("whole") / "s.zarr", list(ROWS))
    return {"columns": columns(out), "counts": TokenStore(out).counts}


def test_captions_and_metadata_are_row_aligned_and_read_on_request(tmp_path):
    out = encode(tmp_path / "s.zarr", ["a.tar", "b.tar"])
    store = TokenStore(out)
    assert store.fields == ("indices", "geometry", "labels")  # text only on request
    assert store.has_captions and store.metadata_fields == FIELDS
    text = TokenStore(out, format="torch", fields=("indices", "keys", "captions", "meta/url"))
    batch = text[np.array([6, 0, 1])]
    assert batch["keys"] == ["b.tar/001", "a.tar/000", "a.tar/001"]
    assert batch["captions"] == ["", "caption a.tar 0", ""]
    assert batch["meta/url"] == ["url-b.tar-1", "url-a.tar-0", "url-a.tar-1"]
    assert text[5]["captions"] == "caption b.tar 0"
    assert store_info(out)["counts"]["captioned"] == 4
    arrays = store_info(out)["arrays"]
    assert arrays["captions"] == arrays["meta/width"] == {"shape": [7], "dtype": "StringDType()"}
    with pytest.raises(ValueError, match="meta/height"):
        TokenStore(out, fields=("meta/height",))
    bare = TokenStore(encode(tmp_path / "bare.zarr", ["a.tar"], text=False))
    assert not bare.has_captions and "captions" not in zarr.open_group(bare.path, mode="r")
    with pytest.raises(GtokError, match="metadata fields"):
        StoreWriter.open(out, replace(_header(["a.tar", "b.tar"]), metadata_fields=("url",)))


def test_append_keeps_existing_rows_and_equals_one_encode(tmp_path, small_shards, whole):
    out = encode(tmp_path / "s.zarr", ["a.tar", "b.tar"])  # 7 rows: shard 1 holds 3 of 4
    before = columns(out)
    first_file = (tmp_path / "s.zarr" / "indices" / "c" / "0" / "0").read_bytes()
    assert append(out, ["a.tar", "b.tar", "c.tar", "d.tar"]) == ["c.tar", "d.tar"]
    after = columns(out)
    assert (tmp_path / "s.zarr" / "indices" / "c" / "0" / "0").read_bytes() == first_file
    for name, values in before.items():
        if not name.startswith("inputs/") and not name.startswith("skipped/"):
            assert np.array_equal(after[name][:7], values, equal_nan=values.dtype.kind == "f")
    assert_same_columns(after, whole["columns"])
    store = TokenStore(out)
    assert len(store) == 17 and store.counts == whole["counts"]
    (record,) = store.header.appends
    assert (record["first_row"], record["first_shard"], record["shards"]) == (7, 2, 2)
    assert record["finished"] and "parts" not in zarr.open_group(out, mode="r")
    assert zarr.open_group(out, mode="r").metadata.consolidated_metadata is not None
    # nothing new: nothing changes
    assert append(out, ["c.tar", "d.tar"]) == [] and len(TokenStore(out).header.appends) == 1


def test_append_order_and_arrays_new_to_the_store(tmp_path, small_shards):
    """Rows of shards appended later follow, even when their names sort first; labels and
    captions that only the new shards have read as -1 and "" for the old rows."""
    out = encode(tmp_path / "s.zarr", ["c.tar"], text=False)
    assert "labels" not in zarr.open_group(out, mode="r")
    append(out, ["a.tar", "c.tar"])
    store = TokenStore(out, fields=("labels", "keys", "captions"))
    batch = store[0 : len(store)]
    assert [k.split("/")[0] for k in batch["keys"]] == ["c.tar"] * 7 + ["a.tar"] * 5
    assert list(batch["labels"]) == [-1] * 7 + list(range(5))
    assert batch["captions"][:7] == [""] * 7 and batch["captions"][7] == "caption a.tar 0"
    assert [i["name"] for i in store.inputs()] == ["c.tar", "a.tar"]
    assert [i["first_row"] for i in store.inputs()] == [0, 7]


@pytest.mark.parametrize("crash_in", ["snapshot", "parts", "_grow", "_string_table", "_clean_up"])
def test_an_interrupted_append_never_reads_complete_and_reruns(
    tmp_path, small_shards, monkeypatch, whole, crash_in
):
    out = encode(tmp_path / "s.zarr", ["a.tar", "b.tar"])
    names = ["a.tar", "b.tar", "c.tar", "d.tar"]
    module = append_module if crash_in == "snapshot" else finalize_module
    target = {"snapshot": "_snapshot", "parts": "finalize_store"}.get(crash_in, crash_in)
    original = getattr(module, target, None)

    def crash(*args, **kwargs):
        if crash_in == "snapshot":
            original(*args, **kwargs)  # the copy is written, the header not yet
        raise KeyboardInterrupt

    if crash_in == "parts":
        append(out, names, finalize=False)  # parts written, finalize never ran
    else:
        monkeypatch.setattr(module, target, crash)
        with pytest.raises(KeyboardInterrupt):
            append(out, names)
        monkeypatch.undo()
        monkeypatch.setattr(schema, "SHARD_ROWS", 4)
        monkeypatch.setattr(schema, "CHUNK_ROWS", 2)
    state = zarr.open_group(out, mode="r", use_consolidated=False).attrs["gtok"]["state"]
    if crash_in in ("snapshot", "_clean_up"):
        assert state == "complete"
        assert len(TokenStore(out)) == (7 if crash_in == "snapshot" else 17)
    else:
        assert state == "encoding"
        with pytest.raises(GtokError, match="not finished"):
            TokenStore(out)
        assert store_info(out)["shards_done"] == 4
    append(out, names)  # rerunning the same append finishes it
    assert_same_columns(columns(out), whole["columns"])


def test_append_refusals(tmp_path):
    out = encode(tmp_path / "s.zarr", ["a.tar"])
    other = _header(["a.tar", "b.tar"], weights_sha256="cd" * 32)
    with pytest.raises(GtokError, match="another model"):
        begin_append(out, other, _refs(["b.tar"]))
    assert TokenStore(out).header.shard_names == ("a.tar",)  # refused before any change
    with StoreWriter.open(str(tmp_path / "u.zarr"), _header(["a.tar", "b.tar"])) as writer:
        writer.write_part(part("a.tar"))  # a first encode, unfinished
    with pytest.raises(GtokError, match="still being encoded"):
        begin_append(str(tmp_path / "u.zarr"), _header(["c.tar"]), _refs(["c.tar"]))
    assert begin_append(str(tmp_path / "none.zarr"), _header(["a.tar"]), _refs(["a.tar"])) is None
    append(out, ["b.tar"], finalize=False)
    with pytest.raises(GtokError, match="still being appended to"):
        begin_append(out, _header(["c.tar"]), _refs(["c.tar"]))
