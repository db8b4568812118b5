"""Check a complete store's arrays against the format (`gtok.store.schema`) before reading
any of its data.

Every reader (`gtok info`, `gtok verify`, `gtok decode`, `gtok eval`, `TokenStore`) opens a
store with `open_checked`: its header is read and checked (`gtok.store.opening`), then, once
the store is complete, `check_arrays` checks every row array and table: present, with the
schema's data type, fill value, shape (the same N rows everywhere, G and 5 as the header
says), chunk and shard shape and codecs, so a chunk cannot hold more than `CHUNK_ROWS` rows
of the row size; and, on a local disk, a data file for every Zarr shard of the token arrays.
The optional text arrays (`captions` when the counts say rows have one, `meta/<field>` for
each of the header's `metadata_fields`) are checked the same way, and so are the inputs
table's fingerprint columns where it has one of them (`gtok.store.identity`; both or
neither). Nothing it reads next can then surprise a reader.

A failure is a `GtokError`: one sentence naming the store and what is wrong with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gtok.store import schema
from gtok.store.identity import has_identity_table
from gtok.store.location import Location
from gtok.store.opening import damaged, get_array, is_int, open_root, read_header

__all__ = ["CheckedStore", "check_arrays", "open_checked"]


def _codec_names(codecs: Any) -> list[str]:
    """Codec names, "bytes" with its byte order when it is not little-endian."""
    names = []
    for codec in codecs if isinstance(codecs, (list, tuple)) else ():
        name = codec.get("name") if isinstance(codec, dict) else None
        endian = ((codec.get("configuration") or {}) if name == "bytes" else {}).get("endian")
        names.append(f"bytes ({endian})" if endian not in (None, "little") else str(name))
    return names


def _layout(meta: dict) -> dict[str, Any]:
    """What of an array's Zarr metadata the format fixes, in comparable form."""
    codecs = meta.get("codecs") or []
    sharding = codecs[0].get("configuration", {}) if len(codecs) == 1 else {}
    sharded = _codec_names(codecs) == ["sharding_indexed"]
    return {
        "data type": meta.get("data_type"),
        "shape": list(meta.get("shape") or []),
        "chunk shape": list(meta["chunk_grid"].get("configuration", {}).get("chunk_shape", [])),
        "codecs": _codec_names(sharding.get("codecs")) if sharded else _codec_names(codecs),
        "inner chunk shape": list(sharding.get("chunk_shape", [])) if sharded else None,
        "shard index": (
            [*_codec_names(sharding.get("index_codecs")), sharding.get("index_location", "end")]
            if sharded
            else None
        ),
        "chunk key separator": (meta.get("chunk_key_encoding", {}).get("configuration") or {}).get(
            "separator", "/"
        ),
    }


def _value_codec(dtype: Any) -> str:
    return "vlen-utf8" if dtype is str else "bytes"


def _row_layout(spec: schema.ArraySpec, rows: int) -> dict[str, Any]:
    row = list(spec.row_shape)
    return {
        "data type": schema.data_type_name(spec.dtype),
        "shape": [rows, *row],
        "chunk shape": [schema.SHARD_ROWS, *row],
        "codecs": [_value_codec(spec.dtype), "zstd"],
        "inner chunk shape": [schema.CHUNK_ROWS, *row],
        "shard index": ["bytes", "crc32c", "end"],
        "chunk key separator": "/",
    }


def _same_fill(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, float) and math.isnan(wanted):
        return isinstance(found, (float, np.floating)) and math.isnan(found)
    return found == wanted


def _check_layout(store: str, path: str, array, wanted: dict, fill: Any) -> None:
    try:
        found = _layout(array.metadata.to_dict())
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        raise damaged(store, f"its {path} array has unreadable metadata ({exc})") from exc
    for what, value in wanted.items():
        if what == "chunk shape" and value is None:  # a table: any chunk up to SHARD_ROWS
            chunk = found[what]
            if len(chunk) == 1 and is_int(chunk[0]) and 1 <= chunk[0] <= schema.SHARD_ROWS:
                continue
            value = [f"1..{schema.SHARD_ROWS}"]
        if found[what] != value:
            raise damaged(
                store, f"its {path} array has {what} {found[what]}, the gtok format says {value}"
            )
    if not _same_fill(array.fill_value, fill):
        shown = [repr(v) if isinstance(v, str) else str(v) for v in (array.fill_value, fill)]
        raise damaged(
            store, f"its {path} array has fill value {shown[0]}, the gtok format says {shown[1]}"
        )


def _check_table(root, store: str, group: str, columns: dict[str, Any], rows: int | None) -> int:
    """Check the 1-D table `group` (all columns `rows` long, or as long as the first)."""
    for name, dtype in columns.items():
        path = f"{group}/{name}"
        array = get_array(root, path, store)
        rows = int(array.shape[0]) if rows is None and array.ndim == 1 else rows
        wanted = {
            "data type": schema.data_type_name(dtype),
            "shape": [rows],
            "chunk shape": None,
            "codecs": [_value_codec(dtype), "zstd"],
            "inner chunk shape": None,
            "shard index": None,
        }
        _check_layout(store, path, array, wanted, "" if dtype is str else -1)
    return rows or 0


def _check_files(location: Location, store: str, spec: schema.ArraySpec, rows: int) -> None:
    """Each Zarr shard of a token array has its file (a local store only)."""
    if not location.is_local:
        return
    tail = ["0"] * len(spec.row_shape)
    for shard in range(math.ceil(rows / schema.SHARD_ROWS)):
        relative = "/".join([spec.name, "c", str(shard), *tail])
        if not (location.path / relative).is_file():
            first = shard * schema.SHARD_ROWS
            last = min(first + schema.SHARD_ROWS, rows) - 1
            raise damaged(store, f"{relative}, the {spec.name} of rows {first}-{last}, is missing")


def check_arrays(root, header: schema.StoreHeader, attrs: dict, location: Location) -> int:
    """Check every array of a complete store against the schema; returns its rows N."""
    store = str(location)
    has_labels = attrs["counts"]["labeled"] > 0
    specs = header.row_arrays(has_labels=has_labels)
    optional = {schema.GEOMETRY, schema.GEOMETRY_CODES, schema.GEOMETRY_IDS, schema.LABELS}
    for name in sorted(optional - {s.name for s in specs}):
        if name in root:
            raise damaged(store, f"it has a {name} array, which its header rules out")
    keys = get_array(root, schema.KEYS, store)
    rows = int(keys.shape[0]) if keys.ndim else 0
    for spec in specs:
        array = get_array(root, spec.name, store)
        _check_layout(store, spec.name, array, _row_layout(spec, rows), spec.fill)
        if spec.name != schema.LABELS:  # a shard of -1 labels is never written
            _check_files(location, store, spec, rows)
    captions = attrs["counts"].get(schema.CAPTIONED, 0) > 0
    if not captions and schema.CAPTIONS in root:
        raise damaged(store, f"it has a {schema.CAPTIONS} array, which its header rules out")
    for spec in schema.text_arrays(captions=captions, metadata_fields=header.metadata_fields):
        array = get_array(root, spec.name, store)
        _check_layout(store, spec.name, array, _row_layout(spec, rows), spec.fill)
    _check_table(root, store, schema.SKIPPED, schema.SKIPPED_COLUMNS, None)
    _check_table(root, store, schema.INPUTS, schema.INPUT_COLUMNS, len(header.shard_names))
    if has_identity_table(root):
        identity = schema.INPUT_IDENTITY_COLUMNS
        _check_table(root, store, schema.INPUTS, identity, len(header.shard_names))
    return rows


@dataclass(frozen=True)
class CheckedStore:
    """An opened store whose header (and, once complete, arrays) passed the checks."""

    location: Location
    root: Any  # zarr.Group
    header: schema.StoreHeader
    attrs: dict
    rows: int | None  # N; None while the store is still being encoded

    @property
    def complete(self) -> bool:
        return self.rows is not None


def open_checked(location: Location) -> CheckedStore:
    """Open the store at `location` for reading and check it (see the module doc)."""
    root = open_root(location)
    header, attrs = read_header(root)
    rows = None
    if attrs["state"] == schema.STATE_COMPLETE:
        rows = check_arrays(root, header, attrs, location)
    return CheckedStore(location, root, header, attrs, rows)
