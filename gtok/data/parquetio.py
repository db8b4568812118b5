"""Samples of one Parquet file, one row group at a time, as `RawSample`s like a tar's.

Two shapes of image dataset are read:
- Hugging Face datasets (`datasets` `Image` feature, as on the Hub): a struct column
  `{bytes: binary, path: string}`; the features are recorded as JSON under the schema
  metadata key `huggingface`.
- img2dataset `--output_format parquet`: a binary column `jpg` (or `png`, `webp`, ...) beside
  `caption`, `url`, `key`, `width`, `height`, ...

Which column holds the images: `Columns.image` when given, else the one column that the
`huggingface` metadata calls an `Image`, else the one `{bytes, path}` struct column, else the
one binary column named like an image extension. None or several is an `ArgumentError`
asking for `Columns.image` (`--image-column`). The caption is `Columns.caption`, else a
`caption` column, else a `text` column, when present. Row number `i` (0-based, over the
whole file) gets the sample key `str(i)`, or with `Columns.key` that column's value (a null
or repeated value skips the row with the reason).

A row becomes a `RawSample` whose members are named as a tar's would be: the image under
`png`, `webp` or `jpg` by its first bytes (`gtok.data.images.member_ext`), the caption as
`txt`, and the `Columns.metadata` columns that the file has as one `json` object. An image
cell over `max_member_bytes` is not passed on: the row gets the reason. Memory holds one
row group (of the columns read).
A row group that cannot be read ends the file with a `TarProblem`, as a cut tar does.

pyarrow is an optional dependency (`pip install 'gtok[parquet]'`), imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gtok.data.images import IMAGE_EXTENSIONS, member_ext
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES, RawSample, TarProblem
from gtok.errors import ArgumentError, GtokError

__all__ = [
    "CAPTION_COLUMNS",
    "DEFAULT_COLUMNS",
    "Columns",
    "FileColumns",
    "check_parquet",
    "count_rows",
    "file_columns",
    "read_parquet",
]

CAPTION_COLUMNS = ("caption", "text")  # the caption column when none is named, first found
_HF_METADATA = b"huggingface"
_IMAGE_SUFFIXES = (*IMAGE_EXTENSIONS, "gif", "bmp", "tif", "tiff")  # img2dataset's columns


@dataclass(frozen=True)
class Columns:
    """How to read a Parquet file's rows (None: found as the module doc says).

    image: the image column; caption: the caption column; key: the column whose values are
    the sample keys (None: row numbers); metadata: columns kept as metadata fields.
    """

    image: str | None = None
    caption: str | None = None
    key: str | None = None
    metadata: tuple[str, ...] = ()


DEFAULT_COLUMNS = Columns()  # every column found as the module doc says


@dataclass(frozen=True)
class FileColumns:
    """The columns one file is read with: `image` and whether it is a `{bytes, path}`
    struct (`struct`), `caption` and `key` (None: none), and the `metadata` it has."""

    image: str
    struct: bool
    caption: str | None
    key: str | None
    metadata: tuple[str, ...]

    def names(self) -> list[str]:
        """The columns to read, each once."""
        wanted = [self.image, self.caption, self.key, *self.metadata]
        return list(dict.fromkeys(c for c in wanted if c is not None))


def _pyarrow_parquet(name: str):
    """`pyarrow.parquet`, or the `GtokError` saying how to install it (`name`: the file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GtokError(
            f"{name} is a Parquet file; reading it needs pyarrow: pip install 'gtok[parquet]'."
        ) from None
    return pq


def _is_binary(dtype) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


def _is_image_struct(dtype) -> bool:
    """Whether `dtype` is the `{bytes: binary, path: string}` struct of a `datasets` Image."""
    import pyarrow as pa

    if not pa.types.is_struct(dtype):
        return False
    fields = {dtype.field(i).name: dtype.field(i).type for i in range(dtype.num_fields)}
    return "bytes" in fields and _is_binary(fields["bytes"])


def _hf_images(schema) -> list[str]:
    """The columns the `huggingface` schema metadata declares as `Image` features."""
    raw = (schema.metadata or {}).get(_HF_METADATA)
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(features, dict):
        return []
    return [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]


def _image_column(name: str, schema, wanted: str | None) -> str:
    """The image column of the file `name` with `schema` (see the module doc)."""
    columns = schema.names
    if wanted is not None:
        if wanted not in columns:
            raise ArgumentError(
                f"{name} has no column {wanted!r} (columns.image); its columns are "
                f"{', '.join(columns)}.",
                "columns.image",
            )
        return wanted
    found = [c for c in _hf_images(schema) if c in columns]
    if not found:
        found = [c for c in columns if _is_image_struct(schema.field(c).type)]
    if not found:
        found = [
            c for c in columns if c.lower() in _IMAGE_SUFFIXES and _is_binary(schema.field(c).type)
        ]
    if len(found) != 1:
        what = f"several image columns ({', '.join(found)})" if found else "no image column"
        raise ArgumentError(
            f"{name} has {what}; name the one to read with columns.image (its columns are "
            f"{', '.join(columns)}).",
            "columns.image",
        )
    return found[0]


def _named_column(name: str, schema, wanted: str | None, argument: str) -> str | None:
    """`wanted` (the value of `argument`, e.g. "columns.key"), checked to be a column of the
    file `name`; None when not given."""
    if wanted is not None and wanted not in schema.names:
        raise ArgumentError(
            f"{name} has no column {wanted!r} ({argument}); its columns are "
            f"{', '.join(schema.names)}.",
            argument,
        )
    return wanted


def file_columns(name: str, schema, columns: Columns) -> FileColumns:
    """The columns to read the file `name` (with the pyarrow `schema`) with; a `GtokError`
    when a named column is missing or the image column is not clear."""
    image = _image_column(name, schema, columns.image)
    dtype = schema.field(image).type
    if not (_is_image_struct(dtype) or _is_binary(dtype)):
        raise ArgumentError(
            f"{name}: the column {image!r} holds {dtype}, not images (binary, or a struct "
            "with binary 'bytes'); name the image column with columns.image.",
            "columns.image",
        )
    caption = _named_column(name, schema, columns.caption, "columns.caption")
    if columns.caption is None:
        caption = next((c for c in CAPTION_COLUMNS if c in schema.names), None)
    return FileColumns(
        image=image,
        struct=_is_image_struct(dtype),
        caption=caption,
        key=_named_column(name, schema, columns.key, "columns.key"),
        metadata=tuple(f for f in columns.metadata if f in schema.names),
    )


def _open(url: str, name: str):
    """(the open binary file, the `pyarrow.parquet.ParquetFile`) of the file at `url`."""
    import fsspec

    pq = _pyarrow_parquet(name)
    handle = fsspec.open(url, "rb").open()
    try:
        return handle, pq.ParquetFile(handle)
    except Exception:
        handle.close()
        raise


def check_parquet(url: str, name: str, columns: Columns) -> FileColumns:
    """Read the footer of the Parquet file at `url` and resolve its `columns`; a `GtokError`
    (one sentence naming the file) when it cannot be read or a column is missing."""
    try:
        handle, parquet = _open(url, name)
    except GtokError:
        raise
    except Exception as exc:  # pyarrow raises its own errors for a damaged footer
        raise GtokError(f"Cannot read the Parquet file {name} ({exc}).") from exc
    with handle:
        return file_columns(name, parquet.schema_arrow, columns)


def count_rows(url: str, name: str) -> int:
    """The number of rows the footer of the Parquet file `name` at `url` records."""
    handle, parquet = _open(url, name)
    with handle:
        return int(parquet.metadata.num_rows)


def _image_bytes(cell: Any, struct: bool) -> tuple[bytes | None, str | None]:
    """(the image bytes of a cell, None) or (None, why there are none)."""
    if struct:
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path"):
            return None, f"the image cell has no bytes, only the path {cell['path']!r}"
    else:
        data = cell
    if data is None:
        return None, "the image cell is null"
    return data, None


class _Keys:
    """The sample key of each row: its row number, or the key column's value once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def key(self, row: int, value: Any, column: str | None) -> tuple[str, str | None]:
        """(key, problem or None) of row number `row` with the key column's `value`."""
        if column is None:
            return str(row), None
        if value is None:
            return str(row), f"the key column {column!r} is null in row {row}"
        key = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
        if key in self.seen:
            return key, "duplicate key: it already appeared in this file"
        self.seen.add(key)
        return key, None


def _sample(
    row: int, values: dict[str, Any], cols: FileColumns, keys: _Keys, limit: int
) -> RawSample:
    """The `RawSample` of row number `row` with its column `values`."""
    key_value = values.get(cols.key) if cols.key is not None else None
    key, problem = keys.key(row, key_value, cols.key)
    sample = RawSample(key, problem=problem)
    data, missing = _image_bytes(values[cols.image], cols.struct)
    if data is not None and len(data) > limit:
        missing = (
            f"the image cell is {len(data)} bytes, over the limit of {limit} bytes per member "
            "(--max-member-bytes)"
        )
    if missing is not None:
        sample.problem = sample.problem or missing
        return sample
    assert data is not None  # `_image_bytes` gives the bytes or why there are none
    sample.files[member_ext(data)] = data
    caption = values.get(cols.caption) if cols.caption is not None else None
    if caption is not None:
        sample.files["txt"] = (caption if isinstance(caption, str) else str(caption)).encode()
    if cols.metadata:
        record = {f: values[f] for f in cols.metadata}
        sample.files["json"] = json.dumps(record, ensure_ascii=False, default=str).encode()
    return sample


def read_parquet(
    url: str,
    name: str,
    columns: Columns,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[RawSample | TarProblem]:
    """Yield the rows of the Parquet file `name` at `url` as `RawSample`s in file order, one
    row group in memory at a time, then a `TarProblem` if the file could not be read to its
    end (module doc). Raises `GtokError` only when pyarrow is missing."""
    row = 0
    keys = _Keys()
    try:
        handle, parquet = _open(url, name)
    except GtokError:
        raise
    except Exception as exc:
        yield TarProblem(f"not a readable Parquet file ({exc})")
        return
    with handle:
        try:
            cols = file_columns(name, parquet.schema_arrow, columns)
        except GtokError as exc:
            yield TarProblem(str(exc).rstrip("."))
            return
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=cols.names())
            except Exception as exc:  # a damaged page: pyarrow's own error types
                yield TarProblem(f"row group {group} cannot be read ({exc})")
                return
            data = {c: table.column(c).to_pylist() for c in cols.names()}
            del table
            for i in range(len(data[cols.image])):
                values = {c: v[i] for c, v in data.items()}
                yield _sample(row, values, cols, keys, max_member_bytes)
                row += 1
