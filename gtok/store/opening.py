"""Open a token store and read its header, checked: the first steps of every reader and writer.

- `open_root(location)`: the store's root Zarr group, its zstd bounded (`zstdguard`).
- `read_header(root)`: (`schema.StoreHeader`, raw attributes) once `check_header` passed:
  every header field present with the right type; `num_tokens` and `codebook_size` within
  the format's bounds and equal to the model config's; the geometry dtype one of the
  format's; the geometry binning (if any) usable; counts present once the store is
  complete; the optional `appends` records (`gtok.store.append`) well formed.
- `get_array(root, path, store)`: one array of the store, or a `GtokError`.
- `damaged(store, what)`: the one sentence every check raises about a damaged store.

The arrays of a complete store are checked next, by `gtok.store.validate`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeGuard

from gtok.errors import UPGRADE, GtokError, version_refusal
from gtok.store import schema
from gtok.store.location import Location

__all__ = [
    "check_appends",
    "check_header",
    "damaged",
    "get_array",
    "is_int",
    "open_root",
    "read_header",
]

_FIX = "re-encode it or restore it from a copy"
_APPEND_INTS = ("first_shard", "first_row", "skipped_before", "shards")  # of an append record


def damaged(store: str, what: str) -> GtokError:
    """The error for a store that is damaged: what is wrong, and the next step."""
    return GtokError(f"{store} is damaged: {what}; {_FIX}.")


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool (JSON true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool)


# -- header ----------------------------------------------------------------------------------


def _field(store: str, record: Any, path: str, kind: type | tuple) -> Any:
    """record[path] ("a.b" for nested dicts), which must be an instance of `kind`."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise damaged(store, f"its header has no {path!r}")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise damaged(store, f"its header's {path!r} is {value!r}, not {names}")
    return value


def _bounded(store: str, attrs: dict, path: str, low: int, high: int) -> int:
    value = _field(store, attrs, path, int)
    if not low <= value <= high:
        raise damaged(store, f"its header's {path!r} is {value}, outside {low}..{high}")
    return value


def _model_tokens(config: dict) -> tuple[Any, Any, Any]:
    """(kind, tokens per image, codebook size) a model config describes, unchecked."""
    kind = config.get("kind")
    if kind == "gaussian":
        tokens = config.get("num_gaussians")
    else:
        side = config.get("map_size")
        tokens = side * side if is_int(side) else None
    return kind, tokens, config.get("codebook_size")


def _check_preprocessing(store: str, record: dict) -> None:
    from gtok.data import Preprocess

    try:
        Preprocess.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(store, f"its header's preprocessing record is unusable ({exc!r})") from exc


def _check_binning(store: str, attrs: dict, has_geometry: bool) -> None:
    """The optional `geometry_bins` record (--geometry-bits) is a usable binning."""
    from gtok.store.geometry_bins import GeometryBinning

    record = attrs.get("geometry_bins")
    if record is None:
        return
    if not has_geometry:
        raise damaged(store, "its header has geometry bins but its tokens have no geometry")
    try:
        GeometryBinning.from_attrs(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(store, f"its header's geometry_bins record is unusable ({exc!r})") from exc


def _check_layout(store: str, attrs: dict) -> None:
    """The optional `layout` record names a known layout, with what it needs: geometry bins
    for "raster", a `geometry_codebook` record (path, sha256, size) for "codebook"."""
    from gtok.store.layouts import CODEBOOK, LAYOUTS, RASTER

    record = attrs.get("layout") or {"name": "fields"}
    name = record.get("name") if isinstance(record, dict) else None
    if name not in LAYOUTS:
        raise damaged(store, f"its header's layout record {record!r} names no known layout")
    codebook = attrs.get("geometry_codebook")
    if name == RASTER and attrs.get("geometry_bins") is None:
        raise damaged(store, "its header has the raster layout but no geometry bins")
    if (name == CODEBOOK) != (codebook is not None):
        raise damaged(store, "its header's layout and geometry_codebook records disagree")
    fields = ("path", "sha256", "size")
    if codebook is not None and not (
        isinstance(codebook, dict)
        and all(isinstance(codebook.get(k), str) for k in fields[:2])
        and isinstance(codebook.get("size"), int)
        and attrs.get("geometry_bins") is None
    ):
        raise damaged(store, f"its header's geometry_codebook record {codebook!r} is unusable")


def _check_numerics(store: str, numerics: Any) -> None:
    """The optional `numerics` record: None, or a dict whose `precision` (if any) is a
    string and whose `batch_size` (if any) is a positive int."""
    if numerics is None:
        return
    if not isinstance(numerics, dict):
        raise damaged(store, f"its header's numerics record is {type(numerics).__name__}")
    batch_size = numerics.get("batch_size", 1)
    if not is_int(batch_size) or batch_size < 1:
        raise damaged(store, f"its header's numerics.batch_size is {batch_size!r}")
    if not isinstance(numerics.get("precision", ""), str):
        raise damaged(store, f"its header's numerics.precision is {numerics['precision']!r}")


def check_header(store: str, attrs: dict) -> None:
    """The root attribute `gtok` (format and version already checked) is well formed."""
    state = _field(store, attrs, "state", str)
    if state not in (schema.STATE_ENCODING, schema.STATE_COMPLETE):
        raise damaged(store, f"its header's state is {state!r}")
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
            raise damaged(
                store, f"its geometry dtype is {dtype!r}, not one of {schema.GEOMETRY_DTYPES}"
            )
    _check_binning(store, attrs, has_geometry)
    _check_layout(store, attrs)
    names = _field(store, attrs, "inputs.names", list)
    urls = _field(store, attrs, "inputs.urls", list)
    if not all(isinstance(v, str) for v in [*names, *urls]) or len(names) != len(urls):
        raise damaged(store, "its header's input shard names and urls are not two equal lists")
    if len(set(names)) != len(names):
        raise damaged(store, "its header lists an input shard twice")
    kind, tokens, model_codebook = _model_tokens(config)
    expected = ("gaussian" if has_geometry else "vq", num_tokens, codebook)
    if (kind, tokens, model_codebook) != expected:
        raise damaged(
            store,
            f"its header says {expected[0]} tokens, {num_tokens} per image from {codebook} "
            f"codes, but its model config says {kind} tokens, {tokens} per image from "
            f"{model_codebook} codes",
        )
    if state == schema.STATE_COMPLETE:
        for key in schema.COUNT_KEYS:
            if _field(store, attrs, f"counts.{key}", int) < 0:
                raise damaged(store, f"its header's counts.{key} is negative")
        captioned = attrs["counts"].get(schema.CAPTIONED, 0)
        if not is_int(captioned) or captioned < 0:
            raise damaged(store, f"its header's counts.{schema.CAPTIONED} is {captioned!r}")
    _check_metadata_fields(store, attrs.get("metadata_fields", []))
    check_appends(store, attrs)


def _check_metadata_fields(store: str, fields: Any) -> None:
    """The optional header list `metadata_fields`: unique usable field names."""
    if not isinstance(fields, list) or not all(
        isinstance(f, str) and schema.is_field_name(f) for f in fields
    ):
        raise damaged(store, f"its header's metadata_fields {fields!r} are not field names")
    if len(set(fields)) != len(fields):
        raise damaged(store, "its header lists a metadata field twice")


def check_appends(store: str, attrs: dict) -> None:
    """The header's optional `appends` list is well formed (the records `gtok.store.append`
    writes)."""
    records = attrs.get("appends", [])
    names = attrs["inputs"]["names"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise damaged(store, "its header's appends are not a list of records")
    for i, record in enumerate(records):
        values = [record.get(k) for k in _APPEND_INTS]
        counts = record.get("counts_before")
        if (
            not all(is_int(v) and v >= 0 for v in values)
            or not isinstance(record.get("finished"), bool)
            or not isinstance(counts, dict)
            or not all(isinstance(counts.get(k), int) for k in schema.COUNT_KEYS)
            or record["first_shard"] + record["shards"] > len(names)
            or counts["encoded"] != record["first_row"]
            or counts["shards"] != record["first_shard"]
        ):
            raise damaged(store, f"its header's append record {i} is malformed")
        if not record["finished"] and (
            i != len(records) - 1 or attrs["state"] != schema.STATE_ENCODING
        ):
            raise damaged(store, f"its header's append record {i} is unfinished")


# -- opening ---------------------------------------------------------------------------------


def open_root(location: Location, mode: Literal["r", "r+", "a", "w", "w-"] = "r"):
    """The store's root group, its arrays' zstd bounded (`zstdguard`); a `GtokError` when
    there is none or its metadata cannot be read."""
    import zarr

    from gtok.store.zstdcodec import bounded_zstd

    if not location.has("zarr.json"):
        raise GtokError(f"{location} is not a gtok token store (no zarr.json there).")
    try:
        with bounded_zstd():
            return zarr.open_group(location.zarr_store(read_only=mode == "r"), mode=mode)
    except Exception as exc:  # garbage JSON, a node of another kind, a Zarr v2 group, ...
        raise GtokError(
            f"{location} is damaged: its Zarr metadata cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); restore it from a copy or "
            "re-encode it."
        ) from exc


def _store_name(root) -> str:
    local = getattr(root.store, "root", None)  # LocalStore: the folder
    return str(local) if local is not None else str(root.store)


def read_header(root) -> tuple[schema.StoreHeader, dict]:
    """(header, raw attribute dict) of an opened root group, checked against the format
    (`check_header`), or a `GtokError`."""
    attrs = root.attrs.asdict().get(schema.ATTR_ROOT)
    if not isinstance(attrs, dict) or attrs.get("format") != schema.FORMAT:
        raise GtokError(f"{_store_name(root)} is a Zarr group but not a gtok token store.")
    if attrs.get("format_version") != schema.FORMAT_VERSION:
        raise GtokError(_version_refusal(_store_name(root), attrs))
    check_header(_store_name(root), attrs)
    return schema.StoreHeader.from_attrs(attrs), attrs


def _version_refusal(store: str, attrs: dict) -> str:
    """The sentence refusing a store whose header has another format version than
    `schema.FORMAT_VERSION` (docs/stores.md, "Format versions"): a newer one asks for a
    newer gtok, any other names the gtok that wrote the store."""
    return version_refusal(
        store,
        attrs.get("format_version"),
        schema.FORMAT_VERSION,
        attrs.get("gtok_version"),
        newer=f"{UPGRADE} to read it",
        other="read it with the gtok that wrote it, or re-encode it with this one",
    )


def get_array(root, path: str, store: str):
    """The zarr array at `path`, its zstd bounded (`zstdguard`); a `GtokError` when absent."""
    import zarr

    from gtok.store.zstdcodec import bounded_zstd

    try:
        with bounded_zstd():
            node = root[path]
    except KeyError:
        raise damaged(store, f"it has no {path} array") from None
    except Exception as exc:  # unreadable array metadata
        raise damaged(store, f"the metadata of its {path} array cannot be read ({exc})") from exc
    if not isinstance(node, zarr.Array):
        raise damaged(store, f"its {path} is a group, not an array")
    return node
