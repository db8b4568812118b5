"""`gtok encode --append`: add input shards to a finished store, keeping the rows it has.

Row order: the existing rows first, unchanged, then the appended shards' rows (shards sorted
by name, samples in tar order); the header's `inputs` lists the shards in that order.

An append goes through three crash-safe steps:
1. `begin_append` (under the store-wide lock) on a complete store: the given shards that
   are not in it yet are the append. A copy of its tables (`skipped/*`, `inputs/*`) is
   written to `parts/_before` first; then one write of the root `zarr.json` turns the store
   back to state "encoding" with the new shards after the old ones and an unfinished record
   at the end of `appends`: {first_shard, first_row, skipped_before, counts_before, shards,
   gtok_version, finished: false} (`gtok.store.opening.check_appends` checks every record
   a header holds). Readers refuse the store from then until step 3 ends, so
   it never reads as complete while rows are missing. A crash before that write leaves the
   store complete as it was (plus leftovers in `parts/`).
2. The new shards are encoded into parts like any encode: resumable, splittable across
   `--shard-id` workers.
3. `finalize_store` sees the unfinished record: rows 0..first_row-1 of the root arrays stay
   as they are (the last, partly filled Zarr shard is rewritten whole with the same old rows
   followed by new ones), the arrays grow to hold the new parts' rows, and the tables are
   rebuilt from `parts/_before` plus the new parts; then the record is marked finished and
   the state "complete". Rerunning an interrupted finalize redoes step 3 from the same inputs.

Rerunning the same `gtok encode NEW... -o STORE --append` resumes an interrupted append;
rerunning it on a finished store finds nothing new and encodes nothing. A given shard named
like one the store holds is skipped only when it is the same file (`gtok.store.identity`):
another file of that name is refused before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gtok._version import __version__
from gtok.data.shards import ShardFingerprint, ShardRef
from gtok.data.tario import utf8_text
from gtok.errors import ArgumentError, GtokError
from gtok.store import lock, schema
from gtok.store.identity import (
    check_same_files,
    has_identity_table,
    read_identity_columns,
    table_fingerprints,
)
from gtok.store.location import Location
from gtok.store.opening import open_root, read_header
from gtok.store.writer import DIFFERENCE_ARGUMENTS, header_difference, write_whole

__all__ = ["Before", "begin_append", "load_before", "pending_append"]

SNAPSHOT = f"{schema.PARTS}/_before"  # part names never start with "_"
_TABLES = {schema.SKIPPED: schema.SKIPPED_COLUMNS, schema.INPUTS: schema.INPUT_COLUMNS}


def pending_append(header: schema.StoreHeader) -> dict | None:
    """The unfinished append record of a store being appended to, else None."""
    last = header.appends[-1] if header.appends else None
    return last if last is not None and not last.get("finished") else None


def _plan(existing: schema.StoreHeader, refs: list[ShardRef]) -> list[ShardRef]:
    """The given shards that a store with header `existing` does not hold yet."""
    return sorted(r for r in refs if r.name not in set(existing.shard_names))


def begin_append(
    out: str, header: schema.StoreHeader, refs: list[ShardRef]
) -> tuple[schema.StoreHeader, list[ShardRef]] | None:
    """Start (or resume) appending the shards of `refs` that the store at `out` lacks.

    `header` is what this run would write (model, preprocessing, ...; its shard list is
    ignored). Returns (the store's header, as writers must now bring it; the shards to
    encode), or None when there is no store at `out` yet (a plain encode creates it).
    """
    location = Location(str(out))
    if not location.has("zarr.json"):
        return None
    existing, _ = read_header(open_root(location))
    _refuse_other_settings(location, existing, header)
    with lock.Locks(location, "starting an append") as locks:
        locks.acquire({lock.STORE: str(location)}, advice="wait for it to finish", wait=30.0)
        root = open_root(location)
        existing, attrs = read_header(root)
        new = _plan(existing, refs)
        check_same_files(location, refs, _kept_fingerprints(location, root, existing, attrs))
        if attrs["state"] == schema.STATE_COMPLETE:
            if not new:
                return existing, []  # every given shard is in the store already
            existing = _start(location, existing, attrs, new)
        elif new:
            pending = pending_append(existing) is not None
            raise GtokError(
                f"{location} is still being {'appended to' if pending else 'encoded'} and "
                f"{new[0].name} is not among its shards; finish that first (rerun its encode "
                "command, or gtok encode --finalize), then append."
            )
    return existing, _to_encode(existing, refs)


def _kept_fingerprints(
    location: Location, root, header: schema.StoreHeader, attrs: dict
) -> dict[str, ShardFingerprint]:
    """Shard name -> recorded fingerprint, for the shards a complete store holds, or that a
    store being appended to held before the append (a first encode: none)."""
    if attrs["state"] == schema.STATE_COMPLETE:
        return table_fingerprints(location, root, header.shard_names)
    record = pending_append(header)
    if record is None or SNAPSHOT not in root:  # a missing snapshot: finalize refuses it
        return {}
    kept = header.shard_names[: record["first_shard"]]
    return table_fingerprints(location, root[SNAPSHOT], kept)


def _to_encode(header: schema.StoreHeader, refs: list[ShardRef]) -> list[ShardRef]:
    """The given shards an unfinished append (or first encode) still plans to encode."""
    record = pending_append(header)
    first = record["first_shard"] if record is not None else 0
    planned = set(header.shard_names[first:])
    return sorted(r for r in refs if r.name in planned)


def _refuse_other_settings(
    location: Location, existing: schema.StoreHeader, header: schema.StoreHeader
) -> None:
    same_shards = replace(header, shard_names=existing.shard_names, shard_urls=existing.shard_urls)
    if (problem := header_difference(existing, same_shards)) is not None:
        raise ArgumentError(
            f"{location} {problem}; append with the settings it was encoded with, or "
            "encode into another store.",
            *DIFFERENCE_ARGUMENTS,
        )


def _start(
    location: Location, existing: schema.StoreHeader, attrs: dict, new: list[ShardRef]
) -> schema.StoreHeader:
    """Snapshot the tables, then turn the complete store into one being appended to."""
    import zarr

    root = open_root(location, mode="r+")
    _snapshot(location, root)
    counts = dict(attrs["counts"])
    record = {
        "first_shard": len(existing.shard_names),
        "first_row": counts["encoded"],
        "skipped_before": int(root[f"{schema.SKIPPED}/key"].shape[0]),
        "counts_before": counts,
        "shards": len(new),
        "gtok_version": __version__,
        "finished": False,
    }
    header = replace(
        existing,
        shard_names=(*existing.shard_names, *(r.name for r in new)),
        shard_urls=(*existing.shard_urls, *(utf8_text(r.url) for r in new)),
        appends=(*existing.appends, record),
    )
    # without consolidated metadata: it would keep describing the arrays as they were
    plain = zarr.open_group(location.zarr_store(), mode="r+", use_consolidated=False)
    plain.attrs[schema.ATTR_ROOT] = header.to_attrs(
        state=schema.STATE_ENCODING, gtok_version=__version__
    )
    return header


def _snapshot(location: Location, root) -> None:
    """Copy the skipped and inputs tables to `parts/_before`, durably, marked complete."""
    location.remove(SNAPSHOT)
    group = root.require_group(SNAPSHOT)
    for table, column, dtype in _table_columns(root):
        data = np.asarray(root[f"{table}/{column}"][...])
        data = data.astype(object) if dtype is str else data.astype(dtype)
        fill = "" if dtype is str else -1
        dims = (schema.TABLE_DIMS[table],)
        write_whole(group, f"{table}/{column}", data, dtype, fill, dims)
    location.sync(SNAPSHOT)
    group.attrs[schema.PART_COMPLETE] = True
    location.sync(SNAPSHOT)


def _table_columns(group) -> list[tuple[str, str, Any]]:
    """(table, column, dtype) of each column of `group`'s tables: the inputs table's
    fingerprint columns only where it has them (stores from before gtok recorded them lack
    them)."""
    columns = [(t, c, dtype) for t, cols in _TABLES.items() for c, dtype in cols.items()]
    if has_identity_table(group):
        identity = schema.INPUT_IDENTITY_COLUMNS.items()
        columns += [(schema.INPUTS, c, dtype) for c, dtype in identity]
    return columns


def _empty_tables() -> dict[str, dict[str, list]]:
    """Every table column (the inputs table's fingerprint columns included), empty."""
    tables: dict[str, dict[str, list]] = {t: {c: [] for c in cols} for t, cols in _TABLES.items()}
    tables[schema.INPUTS] |= {c: [] for c in schema.INPUT_IDENTITY_COLUMNS}
    return tables


@dataclass
class Before:
    """What a store holds before finalize adds its parts: nothing on a first finalize; the
    rows, counts and tables of the finished store during an append."""

    shards: int = 0
    rows: int = 0
    counts: dict = field(default_factory=lambda: dict.fromkeys(schema.COUNT_KEYS, 0))
    tables: dict[str, dict[str, list]] = field(default_factory=_empty_tables)


def load_before(location: Location, root, header: schema.StoreHeader) -> Before:
    """`Before` of the store (its append snapshot when an append is unfinished)."""
    record = pending_append(header)
    if record is None:
        return Before()
    try:
        group = root[SNAPSHOT]
        complete = group.attrs.get(schema.PART_COMPLETE) is True
    except (KeyError, FileNotFoundError):
        complete = False
    if not complete:
        raise GtokError(
            f"{location} is damaged: the copy of its tables from before the append "
            f"({SNAPSHOT}) is missing; restore the store from a copy."
        )
    tables: dict[str, dict[str, list[Any]]] = {}
    for table, columns in _TABLES.items():
        tables[table] = {
            c: [_plain(v) for v in group[f"{table}/{c}"][...].tolist()] for c in columns
        }
    tables[schema.INPUTS] |= read_identity_columns(location, group, record["first_shard"])
    return Before(record["first_shard"], record["first_row"], record["counts_before"], tables)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, str) else int(value)
