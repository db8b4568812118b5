"""Check a store against the format (`gtok.store.schema`) before reading any of its data.

Every reader (`gtok info`, `gtok verify`, `gtok decode`, `gtok eval`, `TokenStore`) runs
these right after opening the store, so that nothing it reads next can surprise it:

- `check_header`: every header field present with the right type; `num_tokens` and
  `codebook_size` within the format's bounds and equal to the model config's; the geometry
  dtype one of the format's; the geometry binning (if any) usable; counts present once the
  store is complete.
- `check_arrays` (complete stores): every row array and table present, with the schema's
  data type, fill value, shape (the same N rows everywhere, G and 5 as the header says),
  chunk and shard shape and codecs, so a chunk cannot hold more than `CHUNK_ROWS` rows of
  the row size; and, on a local disk, a data file for every Zarr shard of the token arrays.
  The optional text arrays (`captions` when the counts say rows have one, `meta/<field>` for
  each of the header's `metadata_fields`) are checked the same way, and so are the inputs
  table's fingerprint columns where it has one of them (`gtok.store.identity`; both or
  neither); the header's optional `appends` records by `gtok.store.append.check_appends`.

A failure is a `GtokError`: one sentence naming the store and what is wrong with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gtok.errors import GtokError
from gtok.store import schema
from gtok.store.identity import has_identity_table
from gtok.store.location import Location

__all__ = ["CheckedStore", "check_arrays", "check_header", "get_array", "open_checked"]

_FIX = "re-encode it or restore it from a copy"


def _damaged(store: str, what: str) -> GtokError:
    return GtokError(f"{store} is damaged: {what}; {_FIX}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- header ----------------------------------------------------------------------------------


def _field(store: str, record: Any, path: str, kind: type | tuple) -> Any:
    """record[path] ("a.b" for nested dicts), which must be an instance of `kind`."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _damaged(store, f"its header has no {path!r}")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _damaged(store, f"its header's {path!r} is {value!r}, not {names}")
    return value


def _bounded(store: str, attrs: dict, path: str, low: int, high: int) -> int:
    value = _field(store, attrs, path, int)
    if not low <= value <= high:
        raise _damaged(store, f"its header's {path!r} is {value}, outside {low}..{high}")
    return value


def _model_tokens(config: dict) -> tuple[str, Any, Any]:
    """(kind, tokens per image, codebook size) a model config describes."""
    kind = config.get("kind")
    if kind == "gaussian":
        tokens = config.get("num_gaussians")
    else:
        side = config.get("map_size")
        tokens = side * side if _is_int(side) else None
    return kind, tokens, config.get("codebook_size")


def _check_preprocessing(store: str, record: dict) -> None:
    from gtok.data import Preprocess

    try:
        Preprocess.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(store, f"its header's preprocessing record is unusable ({exc!r})") from exc


def _check_binning(store: str, attrs: dict, has_geometry: bool) -> None:
    """The optional `geometry_bins` record (--geometry-bits) is a usable binning."""
    from gtok.store.geometry_bins import GeometryBinning

    record = attrs.get("geometry_bins")
    if record is None:
        return
    if not has_geometry:
        raise _damaged(store, "its header has geometry bins but its tokens have no geometry")
    try:
        GeometryBinning.from_attrs(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(store, f"its header's geometry_bins record is unusable ({exc!r})") from exc


def _check_numerics(store: str, numerics: Any) -> None:
    """The optional `numerics` record: None, or a dict whose `precision` (if any) is a
    string and whose `batch_size` (if any) is a positive int."""
    if numerics is None:
        return
    if not isinstance(numerics, dict):
        raise _damaged(store, f"its header's numerics record is {type(numerics).__name__}")
    batch_size = numerics.get("batch_size", 1)
    if not _is_int(batch_size) or batch_size < 1:
        raise _damaged(store, f"its header's numerics.batch_size is {batch_size!r}")
    if not isinstance(numerics.get("precision", ""), str):
        raise _damaged(store, f"its header's numerics.precision is {numerics['precision']!r}")


def check_header(store: str, attrs: dict) -> None:
    """The root attribute `gtok` (format and version already checked) is well formed."""
    state = _field(store, attrs, "state", str)
    if state not in (schema.STATE_ENCODING, schema.STATE_COMPLETE):
        raise _damaged(store, f"its header's state is {state!r}")
    _field(store, attrs, "gtok_version", str)
    config = _field(store, attrs, "model.config", dict)
    _field(store, attrs, "model.weights_sha256", str)
    _field(store, attrs, "model.path", (str, type(None)))
    num_tokens = _bounded(store, attrs, "model.num_tokens", 1, schema.MAX_NUM_TOKENS)
    codebook = _bounded(
        store, attrs, "model.codebook_size", schema.MIN_CODEBOOK_SIZE, schema.INDEX_FILL
    )
    has_geometry = _field(store, attrs, "model.has_geometry", bool)
    if "refinement" in attrs:
        _field(store, attrs, "refinement", (dict, type(None)))
    _check_preprocessing(store, _field(store, attrs, "preprocessing", dict))
    _check_numerics(store, attrs.get("numerics"))
    if has_geometry:
        dtype = _field(store, attrs, "geometry_dtype", str)
        if dtype not in schema.GEOMETRY_DTYPES:
            raise _damaged(
                store, f"its geometry dtype is {dtype!r}, not one of {schema.GEOMETRY_DTYPES}"
            )
    _check_binning(store, attrs, has_geometry)
    names = _field(store, attrs, "inputs.names", list)
    urls = _field(store, attrs, "inputs.urls", list)
    if not all(isinstance(v, str) for v in [*names, *urls]) or len(names) != len(urls):
        raise _damaged(store, "its header's input shard names and urls are not two equal lists")
    if len(set(names)) != len(names):
        raise _damaged(store, "its header lists an input shard twice")
    kind, tokens, model_codebook = _model_tokens(config)
    expected = ("gaussian" if has_geometry else "vq", num_tokens, codebook)
    if (kind, tokens, model_codebook) != expected:
        raise _damaged(
            store,
            f"its header says {expected[0]} tokens, {num_tokens} per image from {codebook} "
            f"codes, but its model config says {kind} tokens, {tokens} per image from "
            f"{model_codebook} codes",
        )
    if state == schema.STATE_COMPLETE:
        for key in schema.COUNT_KEYS:
            if _field(store, attrs, f"counts.{key}", int) < 0:
                raise _damaged(store, f"its header's counts.{key} is negative")
        captioned = attrs["counts"].get(schema.CAPTIONED, 0)
        if not _is_int(captioned) or captioned < 0:
            raise _damaged(store, f"its header's counts.{schema.CAPTIONED} is {captioned!r}")
    _check_metadata_fields(store, attrs.get("metadata_fields", []))
    from gtok.store.append import check_appends

    check_appends(store, attrs)


def _check_metadata_fields(store: str, fields: Any) -> None:
    """The optional header list `metadata_fields`: unique usable field names."""
    if not isinstance(fields, list) or not all(
        isinstance(f, str) and schema.is_field_name(f) for f in fields
    ):
        raise _damaged(store, f"its header's metadata_fields {fields!r} are not field names")
    if len(set(fields)) != len(fields):
        raise _damaged(store, "its header lists a metadata field twice")


# -- arrays ----------------------------------------------------------------------------------


def get_array(root, path: str, store: str):
    """The zarr array at `path`, its zstd bounded (`zstdguard`); a `GtokError` when absent."""
    import zarr

    from gtok.store.zstdcodec import bounded_zstd

    try:
        with bounded_zstd():
            node = root[path]
    except KeyError:
        raise _damaged(store, f"it has no {path} array") from None
    except Exception as exc:  # unreadable array metadata
        raise _damaged(store, f"the metadata of its {path} array cannot be read ({exc})") from exc
    if not isinstance(node, zarr.Array):
        raise _damaged(store, f"its {path} is a group, not an array")
    return node


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
        raise _damaged(store, f"its {path} array has unreadable metadata ({exc})") from exc
    for what, value in wanted.items():
        if what == "chunk shape" and value is None:  # a table: any chunk up to SHARD_ROWS
            chunk = found[what]
            if len(chunk) == 1 and _is_int(chunk[0]) and 1 <= chunk[0] <= schema.SHARD_ROWS:
                continue
            value = [f"1..{schema.SHARD_ROWS}"]
        if found[what] != value:
            raise _damaged(
                store, f"its {path} array has {what} {found[what]}, the gtok format says {value}"
            )
    if not _same_fill(array.fill_value, fill):
        shown = [repr(v) if isinstance(v, str) else str(v) for v in (array.fill_value, fill)]
        raise _damaged(
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
            raise _damaged(store, f"{relative}, the {spec.name} of rows {first}-{last}, is missing")


def check_arrays(root, header: schema.StoreHeader, attrs: dict, location: Location) -> int:
    """Check every array of a complete store against the schema; returns its rows N."""
    store = str(location)
    has_labels = attrs["counts"]["labeled"] > 0
    specs = header.row_arrays(has_labels=has_labels)
    optional = {schema.GEOMETRY, schema.GEOMETRY_CODES, schema.LABELS}
    for name in sorted(optional - {s.name for s in specs}):
        if name in root:
            raise _damaged(store, f"it has a {name} array, which its header rules out")
    keys = get_array(root, schema.KEYS, store)
    rows = int(keys.shape[0]) if keys.ndim else 0
    for spec in specs:
        array = get_array(root, spec.name, store)
        _check_layout(store, spec.name, array, _row_layout(spec, rows), spec.fill)
        if spec.name != schema.LABELS:  # a shard of -1 labels is never written
            _check_files(location, store, spec, rows)
    captions = attrs["counts"].get(schema.CAPTIONED, 0) > 0
    if not captions and schema.CAPTIONS in root:
        raise _damaged(store, f"it has a {schema.CAPTIONS} array, which its header rules out")
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
    from gtok.store.writer import open_root, read_header

    root = open_root(location)
    header, attrs = read_header(root)
    rows = None
    if attrs["state"] == schema.STATE_COMPLETE:
        rows = check_arrays(root, header, attrs, location)
    return CheckedStore(location, root, header, attrs, rows)
