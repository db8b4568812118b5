"""The store's Zarr `dimension_names`: xarray opens a finished store as a Dataset and as a
DataTree, and stores written without them still open in gtok."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from test_store import NAMES, build, header, make_part

from gtok.store import StoreWriter, TokenStore, schema
from gtok.store.info import store_info


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    return build(tmp_path_factory.mktemp("xarray") / "s.zarr")


def test_open_zarr_reads_the_row_arrays(store_path):
    root = zarr.open_group(store_path, mode="r")
    ds = xr.open_zarr(store_path)
    assert dict(ds.sizes) == {"row": 12, "token": 4, "param": 5}
    assert ds["indices"].dims == ("row", "token") and ds["indices"].dtype == np.uint16
    assert ds["geometry"].dims == ("row", "token", "param")
    assert np.array_equal(ds["indices"].values, root["indices"][...])
    assert np.array_equal(ds["geometry"].values, root["geometry"][...], equal_nan=True)
    assert [str(k) for k in ds["keys"].values] == [str(k) for k in root["keys"][...]]
    assert ds["labels"].dims == ("row",) and list(ds["labels"].values[:2]) == [0, 1]
    assert ds.attrs["gtok"]["state"] == "complete"


def test_open_datatree_reads_the_tables(store_path):
    tree = xr.open_datatree(store_path, engine="zarr")
    skipped, inputs = tree["skipped"].to_dataset(), tree["inputs"].to_dataset()
    assert dict(skipped.sizes) == {"skipped": 2} and dict(inputs.sizes) == {"input": 3}
    assert [str(r) for r in skipped["reason"].values] == ["not an image", "tar is truncated"]
    assert [str(n) for n in inputs["name"].values] == list(NAMES)
    assert list(inputs["first_row"].values) == [0, 5, 5]


def _dimension_names(group) -> dict[str, tuple | None]:
    """path -> dimension_names of every array under `group`."""
    members = group.members(max_depth=None)
    return {p: n.metadata.dimension_names for p, n in members if isinstance(n, zarr.Array)}


def test_every_array_names_each_dimension(tmp_path, store_path):
    specs = schema.row_arrays(4, has_geometry=True, geometry_dtype="float16", has_labels=True)
    inputs = schema.INPUT_COLUMNS | schema.INPUT_IDENTITY_COLUMNS
    tables = {schema.SKIPPED: schema.SKIPPED_COLUMNS, schema.INPUTS: inputs}
    expected = {s.name: s.dimension_names for s in specs} | {
        f"{table}/{column}": (schema.TABLE_DIMS[table],)
        for table, columns in tables.items()
        for column in columns
    }
    assert _dimension_names(zarr.open_group(store_path, mode="r")) == expected
    writer = StoreWriter.open(str(tmp_path / "p.zarr"), header())
    writer.write_part(make_part("b.tar"))  # a part while encoding: its arrays too
    part = zarr.open_group(tmp_path / "p.zarr" / schema.PARTS / "b.tar", mode="r")
    in_part = [*specs, *schema.text_arrays(captions=True, metadata_fields=())]
    assert _dimension_names(part) == {
        **{s.name: s.dimension_names for s in in_part},
        schema.PART_SKIPPED_KEYS: ("skipped",),
        schema.PART_SKIPPED_REASONS: ("skipped",),
    }


def _strip_dimension_names(folder: Path) -> None:
    """Make the store look written before gtok named dimensions (consolidated copy too)."""
    for meta in folder.rglob("zarr.json"):
        record = json.loads(meta.read_text())
        record.pop("dimension_names", None)
        for entry in (record.get("consolidated_metadata") or {}).get("metadata", {}).values():
            entry.pop("dimension_names", None)
        meta.write_text(json.dumps(record))


def test_a_store_without_dimension_names_still_opens(tmp_path):
    out = Path(build(tmp_path / "s.zarr"))
    expected = TokenStore(out)[0:12]["indices"]
    _strip_dimension_names(out)
    assert "dimension_names" not in (out / "indices" / "zarr.json").read_text()
    assert "dimension_names" not in (out / "zarr.json").read_text()
    store = TokenStore(out)
    assert np.array_equal(store[0:12]["indices"], expected)
    assert store_info(str(out), usage=False)["rows"] == 12


def test_array_spec_names_each_row_dimension():
    spec = schema.ArraySpec("captions", str, (), "")
    assert spec.dimension_names == ("row",)
    with pytest.raises(ValueError, match="row_dims"):
        schema.ArraySpec("codes", schema.INDEX_DTYPE, (4, 2), 0, ("token",))
