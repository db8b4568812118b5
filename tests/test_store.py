"""gtok.store with synthetic tokens: schema, parts, finalize, crash safety, TokenStore."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from gtok.data import Preprocess
from gtok.errors import GtokError
from gtok.store import (
    Location,
    Part,
    StoreHeader,
    StoreWriter,
    TokenStore,
    finalize_store,
    schema,
)
from gtok.store import finalize as finalize_module
from gtok.store.info import store_info
from gtok.store.rowread import RowReader

G = 4  # tokens per image in these tests
NAMES = ("a.tar", "b.tar", "c.tar")
ROWS = {"a.tar": 5, "b.tar": 0, "c.tar": 7}


def header(**changes) -> StoreHeader:
    fields = {
        "model_config": {
            "kind": "gaussian",
            "preset": "test",
            "num_gaussians": G,
            "codebook_size": 16,
        },
        "weights_sha256": "ab" * 32,
        "num_tokens": G,
        "codebook_size": 16,
        "has_geometry": True,
        "preprocessing": Preprocess(8).to_dict(),
        "geometry_dtype": "float16",
        "shard_names": NAMES,
        "shard_urls": tuple(f"/data/{n}" for n in NAMES),
    }
    return StoreHeader(**{**fields, **changes})


def make_part(name: str, seed: int = 0) -> Part:
    """Rows of shard `name`: values derived from the shard and row, so order is checkable."""
    n = ROWS[name]
    base = NAMES.index(name) * 100
    indices = (base + np.arange(n * G).reshape(n, G)) % 16
    geometry = np.random.default_rng([seed, base]).normal(size=(n, G, 5)).astype(np.float16)
    return Part(
        shard=name,
        indices=indices.astype(np.uint16),
        geometry=geometry,
        keys=[f"{name}/{i:03d}" for i in range(n)],
        labels=np.arange(n, dtype=np.int32) if name != "c.tar" else np.full(n, -1, np.int32),
        skipped=[("bad", "not an image")] if name == "b.tar" else [],
        samples=n + (name == "b.tar"),
        problem="tar is truncated" if name == "c.tar" else None,
        upscaled=1,
    )


def build(out, order=NAMES, **header_changes) -> str:
    writer = StoreWriter.open(str(out), header(**header_changes))
    for name in order:
        writer.write_part(make_part(name))
    finalize_store(str(out))
    return str(out)


def test_finalized_store_layout_and_order(tmp_path):
    out = build(tmp_path / "s.zarr", order=("c.tar", "a.tar", "b.tar"))  # written out of order
    root = zarr.open_group(out, mode="r")  # plain zarr, consolidated metadata
    assert root.metadata.consolidated_metadata is not None
    assert "parts" not in root
    total = sum(ROWS.values())
    assert root["indices"].shape == (total, G) and root["indices"].dtype == np.uint16
    assert root["geometry"].shape == (total, G, 5) and root["geometry"].dtype == np.float16
    assert root["labels"].dtype == np.int32 and root["keys"].shape == (total,)
    expected = np.concatenate([make_part(n).indices for n in NAMES])
    assert np.array_equal(root["indices"][...], expected)
    assert [str(k) for k in root["keys"][...]][:2] == ["a.tar/000", "a.tar/001"]
    assert list(root["labels"][...]) == [0, 1, 2, 3, 4] + [-1] * 7
    assert root["indices"].fill_value == schema.INDEX_FILL
    assert np.isnan(root["geometry"].fill_value)
    codecs = root["indices"].metadata.to_dict()["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert any(c["name"] == "zstd" for c in codecs[0]["configuration"]["codecs"])
    skipped = [
        tuple(map(str, r))
        for r in zip(*(root["skipped"][c][...] for c in ("shard", "key", "reason")), strict=True)
    ]
    assert skipped == [("b.tar", "bad", "not an image"), ("c.tar", "", "tar is truncated")]
    assert list(root["inputs"]["first_row"][...]) == [0, 5, 5]
    attrs = root.attrs["gtok"]
    assert attrs["state"] == "complete"
    assert attrs["counts"] == {
        "shards": 3,
        "samples": total + 1,
        "encoded": total,
        "skipped": 1,
        "damaged_shards": 1,
        "labeled": 5,
        "upscaled": 3,
        "captioned": 0,
    }


def test_rows_cross_zarr_shards_and_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "SHARD_ROWS", 4)
    monkeypatch.setattr(schema, "CHUNK_ROWS", 2)
    out = build(tmp_path / "s.zarr")
    root = zarr.open_group(out, mode="r")
    expected = np.concatenate([make_part(n).indices for n in NAMES])
    assert np.array_equal(root["indices"][...], expected)
    shard_files = list((tmp_path / "s.zarr" / "indices" / "c").rglob("*"))
    assert len([f for f in shard_files if f.is_file()]) == 3  # 12 rows / 4 per Zarr shard


def test_unfinished_store_is_refused_and_finalize_lists_missing(tmp_path):
    writer = StoreWriter.open(str(tmp_path / "s.zarr"), header())
    writer.write_part(make_part("a.tar"))
    with pytest.raises(GtokError, match=r"2 of 3 input shards .* not encoded yet \(b.tar, c.tar"):
        finalize_store(str(tmp_path / "s.zarr"))
    with pytest.raises(GtokError, match="not finished"):
        TokenStore(tmp_path / "s.zarr")
    assert writer.completed() == {"a.tar"}
    info = store_info(tmp_path / "s.zarr")
    assert (info["state"], info["shards_done"], info["input_shards"]) == ("encoding", 1, 3)


def test_part_without_geometry_the_header_calls_for_is_refused(tmp_path):
    writer = StoreWriter.open(str(tmp_path / "s.zarr"), header())
    with pytest.raises(ValueError, match=r"part a\.tar has no geometry; the header calls for it"):
        writer.write_part(replace(make_part("a.tar"), geometry=None))
    assert writer.completed() == set()


@pytest.mark.slow
def test_part_without_completion_mark_is_redone(tmp_path, monkeypatch):
    writer = StoreWriter.open(str(tmp_path / "s.zarr"), header())

    def crash(self, path):  # the arrays are written; dying before the mark leaves them unmarked
        raise KeyboardInterrupt

    monkeypatch.setattr(Location, "sync", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.write_part(make_part("a.tar", seed=1))
    monkeypatch.undo()
    writer = StoreWriter.open(str(tmp_path / "s.zarr"), header())
    assert writer.completed() == set()
    for name in NAMES:
        writer.write_part(make_part(name))
    finalize_store(str(tmp_path / "s.zarr"))
    assert_same_store(tmp_path / "s.zarr", build(tmp_path / "clean.zarr"))


@pytest.mark.slow
@pytest.mark.parametrize("crash_in", ["_string_table", "_clean_up"])
def test_interrupted_finalize_reruns_to_the_same_store(tmp_path, monkeypatch, crash_in):
    out = tmp_path / "s.zarr"
    writer = StoreWriter.open(str(out), header())
    for name in NAMES:
        writer.write_part(make_part(name))
    original = getattr(finalize_module, crash_in)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finalize_module, crash_in, crash)
    with pytest.raises(KeyboardInterrupt):
        finalize_store(str(out))
    state = zarr.open_group(str(out), mode="r").attrs["gtok"]["state"]
    assert state == ("encoding" if crash_in == "_string_table" else "complete")
    if state == "encoding":
        with pytest.raises(GtokError, match="not finished"):
            TokenStore(out)
    monkeypatch.setattr(finalize_module, crash_in, original)
    finalize_store(str(out))
    assert_same_store(out, build(tmp_path / "clean.zarr"))


def test_writer_refuses_what_does_not_belong(tmp_path):
    out = str(tmp_path / "s.zarr")
    StoreWriter.open(out, header()).write_part(make_part("a.tar"))
    with pytest.raises(GtokError, match="another model"):
        StoreWriter.open(out, header(weights_sha256="cd" * 32))
    with pytest.raises(GtokError, match=r"different preprocessing .*resize"):
        StoreWriter.open(out, header(preprocessing=Preprocess(8, 9).to_dict()))
    with pytest.raises(GtokError, match="another list of input shards"):
        StoreWriter.open(out, header(shard_names=NAMES[:2], shard_urls=("x", "y")))
    with pytest.raises(GtokError, match="float16, not float32"):
        StoreWriter.open(out, header(geometry_dtype="float32"))
    # --overwrite starts over with the new model
    writer = StoreWriter.open(out, header(weights_sha256="cd" * 32), overwrite=True)
    assert writer.completed() == set()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("do not delete")
    for overwrite in (False, True):
        with pytest.raises(GtokError, match="not a gtok token store"):
            StoreWriter.open(str(other), header(), overwrite=overwrite)
    assert (other / "thesis.txt").exists()


def test_store_on_an_fsspec_url():
    out = "memory://gtok-store-test/s.zarr"
    writer = StoreWriter.open(out, header())
    for name in NAMES:
        writer.write_part(make_part(name))
    finalize_store(out)
    store = TokenStore(out)
    assert len(store) == 12 and store.index("c.tar/006") == 11


# ---- TokenStore ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return build(tmp_path_factory.mktemp("reader") / "s.zarr")


def test_indexing(store_path):
    store = TokenStore(store_path)
    everything = zarr.open_group(store_path, mode="r")
    indices, geometry = everything["indices"][...], everything["geometry"][...]
    assert len(store) == 12 and store.num_tokens == G and store.codebook_size == 16
    row = store[3]
    assert row["row"] == 3 and np.array_equal(row["indices"], indices[3])
    assert np.array_equal(store[-1]["indices"], indices[-1])
    assert np.array_equal(store[2:6]["indices"], indices[2:6])
    assert np.array_equal(store[1:9:3]["row"], [1, 4, 7])
    pick = np.array([9, 0, 9, 4])
    batch = store[pick]
    assert np.array_equal(batch["indices"], indices[pick])
    assert np.array_equal(batch["geometry"], geometry[pick], equal_nan=True)
    assert np.array_equal(store[torch.tensor([1, 2])]["row"], [1, 2])
    mask = np.zeros(12, bool)
    mask[[0, 11]] = True
    assert np.array_equal(store[mask]["row"], [0, 11])
    assert store[[]]["indices"].shape == (0, G)
    for bad in (12, -13, [0, 12]):
        with pytest.raises(IndexError):
            store[bad]


def test_one_read_per_array_per_batch(store_path, monkeypatch):
    calls = []
    original_take = RowReader.take
    original_select = zarr.Array.get_orthogonal_selection

    def spy_take(self, rows):
        calls.append(("fast", self.folder.name))
        return original_take(self, rows)

    def spy_select(self, *args, **kwargs):
        calls.append(("zarr", self.name))
        return original_select(self, *args, **kwargs)

    monkeypatch.setattr(RowReader, "take", spy_take)
    monkeypatch.setattr(zarr.Array, "get_orthogonal_selection", spy_select)
    rows = np.array([11, 0, 5, 2, 7])
    TokenStore(store_path, fields=("indices", "geometry", "labels", "keys"))[rows]
    assert sorted(calls) == [
        ("fast", "geometry"),
        ("fast", "indices"),
        ("fast", "labels"),
        ("zarr", "/keys"),
    ]
    calls.clear()
    monkeypatch.setattr(RowReader, "open", classmethod(lambda cls, folder, array: None))
    TokenStore(store_path)[rows]  # the plain zarr path: one selection per array
    assert sorted(calls) == [("zarr", "/geometry"), ("zarr", "/indices"), ("zarr", "/labels")]


def test_row_reader_matches_zarr(tmp_path, monkeypatch):
    """The direct shard reader against zarr-python on a store of several shards, with an
    empty part, chunks missing from a shard's index and a shard file that does not exist."""
    monkeypatch.setattr(schema, "SHARD_ROWS", 8)
    monkeypatch.setattr(schema, "CHUNK_ROWS", 2)
    out = build(tmp_path / "s.zarr")
    root = zarr.open_group(out, mode="r+")
    for name in ("indices", "geometry", "labels"):
        array = root[name]
        reader = RowReader.open(tmp_path / "s.zarr" / name, array)
        assert reader is not None and (reader.chunk_rows, reader.shard_rows) == (2, 8)
        expected = array[...]
        assert np.array_equal(reader.take(np.arange(12)), expected, equal_nan=True)
        picked = np.array([1, 4, 5, 10, 11])
        assert np.array_equal(reader.take(picked), expected[picked], equal_nan=True)
    grown = root["indices"]
    grown.resize((20, G))  # rows 12-15: not in shard 1's index; rows 16-19: no shard 2 file
    reader = RowReader.open(tmp_path / "s.zarr" / "indices", grown)
    assert np.array_equal(reader.take(np.arange(20)), grown[...])
    assert (reader.take(np.arange(12, 20)) == schema.INDEX_FILL).all()
    assert RowReader.open(tmp_path / "s.zarr" / "keys", root["keys"]) is None


def test_torch_format_keys_and_lookup(store_path):
    store = TokenStore(store_path, format="torch", fields=("indices", "keys"))
    batch = store[[0, 5]]
    assert batch["indices"].dtype == torch.int64 and batch["keys"] == ["a.tar/000", "c.tar/000"]
    assert store.index("c.tar/002") == 7 and store.get("c.tar/002")["row"] == 7
    with pytest.raises(KeyError, match="nope"):
        store.index("nope")
    full = TokenStore(store_path, format="torch")
    assert full[0]["geometry"].dtype == torch.float32 and full[0]["labels"] == 0
    assert full.skipped() == [("b.tar", "bad", "not an image"), ("c.tar", "", "tar is truncated")]
    assert [i["rows"] for i in full.inputs()] == [5, 0, 7]


def test_dataset_with_dataloader_pickle_and_memory(store_path):
    store = TokenStore(store_path, format="torch")
    batches = list(DataLoader(store, batch_size=5))  # __getitems__: one read per batch
    assert [len(b["row"]) for b in batches] == [5, 5, 2]
    assert torch.equal(torch.cat([b["indices"] for b in batches]), store[0:12]["indices"])
    sampler = BatchSampler(SequentialSampler(store), 4, drop_last=False)
    direct = list(DataLoader(store, batch_size=None, sampler=sampler))
    assert torch.equal(direct[1]["indices"], store[4:8]["indices"])
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone[[3, 1]]["indices"], store[[3, 1]]["indices"])
    memory = TokenStore(store_path, format="torch", in_memory=True)
    assert torch.equal(memory[[7, 2, 7]]["geometry"], store[[7, 2, 7]]["geometry"])
    seen = torch.cat([b["row"] for b in store.batches(5, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == list(range(12)) and seen.tolist() != list(range(12))


def assert_same_store(a, b) -> None:
    """Two stores are the same: the same files with the same bytes."""
    from pathlib import Path

    a, b = Path(a), Path(b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
