"""Reading a store's data in bounded blocks, and telling damaged rows from tokens.

- `blocks(n)`: (start, stop) row ranges of at most one Zarr shard, so a loop over every row
  holds one shard's worth of data at a time, whatever the store's size.
- `read_errors(store, what)`: turns whatever a corrupt or truncated chunk raises (zstd,
  crc32c, reshape, UTF-8 errors) into one `GtokError` sentence naming the store and the rows.
- `row_damage(...)`: rows that cannot be tokens: code ids outside the codebook (65535 is
  the fill value of a row never written), non-finite geometry (NaN is its fill value),
  empty keys (likewise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from gtok.errors import GtokError
from gtok.store import schema

__all__ = ["blocks", "read_block", "read_errors", "row_damage"]

_DETAIL_CHARS = 160


def blocks(n: int, size: int = schema.SHARD_ROWS) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive row blocks of at most `size` rows covering 0..n-1."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _detail(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


@contextlib.contextmanager
def read_errors(store: str, what: str) -> Iterator[None]:
    """Re-raise any failure to read `what` (e.g. "indices rows 0-16383") as a `GtokError`."""
    try:
        yield
    except GtokError:
        raise
    except Exception as exc:  # a corrupt chunk fails in zstd, crc32c, numpy or UTF-8 code
        raise GtokError(
            f"{store} is damaged: {what} cannot be read ({_detail(exc)}); run `gtok verify` "
            "on it and re-encode it, or restore it from a copy."
        ) from exc


def read_block(store: str, name: str, array, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of the zarr `array` called `name` (see `read_errors`)."""
    with read_errors(store, f"{name} rows {start}-{stop - 1}"):
        return np.asarray(array[start:stop])


def _non_finite_rows(geometry: np.ndarray) -> np.ndarray:
    """bool [B]: rows of geometry [B, ...] holding a NaN or an infinity."""
    flat = geometry.reshape(len(geometry), -1)
    if flat.dtype == np.float16:  # numpy's float16 isfinite is ~10x slower than this bit test
        exponent = flat.view(np.uint16) & 0x7C00
        return (exponent == 0x7C00).any(axis=1)
    return ~np.isfinite(flat).all(axis=1)


def row_damage(
    rows: np.ndarray,
    codebook_size: int,
    indices: np.ndarray | None = None,
    geometry: np.ndarray | None = None,
    keys: np.ndarray | list | None = None,
) -> list[tuple[int, str]]:
    """(row, what is wrong) for every row that does not hold a token, in the order given.

    rows: int [B] row numbers; indices [B, G]; geometry [B, G, 5]; keys [B] (any present).
    """
    problems: dict[int, list[str]] = {}

    def flag(mask: np.ndarray, what) -> None:
        for i in np.flatnonzero(mask).tolist():
            problems.setdefault(i, []).append(what(i))

    if indices is not None and len(indices):
        ids = np.asarray(indices).reshape(len(indices), -1)
        top = ids.max(axis=1) if ids.shape[1] else np.zeros(len(ids), ids.dtype)
        flag(top == schema.INDEX_FILL, lambda i: "code id 65535 (the mark of a row never written)")
        flag(
            (top >= codebook_size) & (top != schema.INDEX_FILL),
            lambda i: f"code id {int(top[i])} outside the codebook of {codebook_size}",
        )
    if geometry is not None and len(geometry):
        flag(
            _non_finite_rows(np.asarray(geometry)),
            lambda i: "non-finite geometry (NaN marks a row never written)",
        )
    if keys is not None and len(keys):
        flag(np.array([str(k) == "" for k in keys]), lambda i: "an empty key")
    return [(int(rows[i]), ", ".join(problems[i])) for i in sorted(problems)]
