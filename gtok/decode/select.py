"""Which rows of a token store `gtok decode` reconstructs: `--keys`, `--start/--stop`, `--limit`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gtok.errors import ArgumentError, GtokError
from gtok.store import TokenStore

__all__ = ["select_rows"]


def select_rows(
    store: TokenStore,
    *,
    keys: Sequence[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    limit: int | None = None,
) -> np.ndarray:
    """Row numbers (int64 [n]) to decode, in the order they will be written.

    keys: these samples, in the order given (every key must be in the store);
    start/stop: rows start..stop-1, as a Python slice (negative counts from the end);
    limit: at most this many of the rows selected so far, from the first.
    Keys and start/stop exclude each other; an empty selection is an error.
    """
    if keys and (start is not None or stop is not None):
        raise ArgumentError(
            "give either `keys` or `start`/`stop`, not both.", "keys", "start", "stop"
        )
    if limit is not None and limit < 1:
        raise ArgumentError(f"limit must be at least 1, got {limit}.", "limit")
    if keys:
        rows = np.array(_rows_of(store, keys), dtype=np.int64)
    else:
        rows = np.arange(len(store), dtype=np.int64)[start:stop]
    if limit is not None:
        rows = rows[:limit]
    if rows.size == 0:
        raise GtokError(_nothing_selected(store, start, stop))
    return rows


def _nothing_selected(store: TokenStore, start: int | None, stop: int | None) -> str:
    """The sentence for an empty selection: an empty store, or a --start/--stop past its rows
    (keys and --limit cannot select nothing: both are checked before)."""
    if len(store) == 0:
        return (
            f"{store.path} holds no rows to decode: no sample was encoded into it "
            f"(`gtok info {store.path}` lists what was skipped and why)."
        )
    bounds = " ".join(
        f"--{name} {value}"
        for name, value in (("start", start), ("stop", stop))
        if value is not None
    )
    return (
        f"the selection {bounds} holds no rows; {store.path} has {len(store)} rows, "
        f"numbered 0 to {len(store) - 1}."
    )


def _rows_of(store: TokenStore, keys: Sequence[str]) -> list[int]:
    rows, missing = [], []
    for key in keys:
        try:
            rows.append(store.index(key))
        except KeyError:
            missing.append(key)
    if missing:
        shown = ", ".join(repr(k) for k in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GtokError(
            f"{len(missing)} of the keys are not in {store.path}: {shown}{more}; keys look like "
            "'<shard file name>/<sample key>' (see `gtok info` or TokenStore.keys())."
        )
    return rows
