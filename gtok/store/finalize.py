"""Finalize: concatenate every part, in input order, into the flat root arrays.

Runs in one process after all writers finished (automatically at the end of a single-process
encode; `gtok encode --finalize -o STORE` after parallel workers). It holds the store-wide
lock and every part's lock (`gtok.store.lock`) throughout, so it refuses, with one sentence
naming the holder, while a worker still writes a part or another finalize runs, and no writer
can start meanwhile. It refuses a part that is not complete, or whose arrays hold unwritten
rows (fill values), rather than copy them. It writes each root array in whole Zarr shards,
one after another, so no shard is ever written twice or concurrently.
Crash-safe: the header's `state` turns "complete" only once every array is written; parts
are deleted after that, then metadata is consolidated. After `gtok encode --append` it keeps
the rows the store had and adds the new parts' rows after them (`gtok.store.append`).
Rerunning an interrupted finalize starts it over (or just finishes the clean-up when
`state` is already "complete").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from gtok._version import __version__
from gtok.data.shards import ShardFingerprint
from gtok.errors import GtokError
from gtok.store import lock, schema
from gtok.store.append import Before, load_before
from gtok.store.identity import UNRECORDED, part_fingerprint, source_record
from gtok.store.location import Location
from gtok.store.opening import open_root, read_header
from gtok.store.writer import part_counts, part_locks

if TYPE_CHECKING:
    import zarr

__all__ = ["finalize_store"]


@dataclass
class _Rows:
    """Accumulates rows of one root array and writes them a whole Zarr shard at a time."""

    array: zarr.Array
    shard_rows: int
    pending: list
    written: int = 0
    buffered: int = 0

    def add(self, block: np.ndarray) -> None:
        self.pending.append(block)
        self.buffered += len(block)
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, tail = data[:rows], data[rows:]
        self.array[self.written : self.written + rows] = head
        self.written += rows
        self.pending = [tail] if len(tail) else []
        self.buffered = len(tail)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)


def _missing_message(location: Location, missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return (
        f"{len(missing)} of {total} input shards of {location} are not encoded yet ({shown}); "
        "run the encode workers until each one finishes (rerunning resumes), then finalize."
    )


def _table_column(group, name: str, data: np.ndarray, dtype, fill) -> None:
    """One column of the table `group` (skipped or inputs), named by the table's dimension."""
    group.create_array(
        name,
        shape=data.shape,
        chunks=(max(min(len(data), schema.SHARD_ROWS), 1),),
        dtype=dtype,
        fill_value=fill,
        compressors=schema.compressors(),
        dimension_names=(schema.TABLE_DIMS[group.basename],),
        overwrite=True,
    )[...] = data


def _string_table(group, name: str, values: list[str]) -> None:
    _table_column(group, name, np.array(values, dtype=object), str, "")


def _count_table(group, name: str, values: list[int]) -> None:
    _table_column(group, name, np.asarray(values, schema.COUNT_DTYPE), schema.COUNT_DTYPE, -1)


def finalize_store(out: str) -> dict:
    """Build the root arrays of the store at `out` from its parts; returns its counts.

    Raises `GtokError` when input shards are still missing, a part belongs to another model or
    holds unwritten rows, or (`lock.LockBusy`) another live process holds one of its locks.
    """
    location = Location(str(out))
    read_header(open_root(location))  # refuses what is not a gtok store before locking it
    with lock.Locks(location, "finalizing") as locks:
        locks.acquire({lock.STORE: str(location)}, advice="wait for it to finish")
        root = open_root(location, mode="r+")
        header, attrs = read_header(root)
        if attrs["state"] == schema.STATE_COMPLETE:
            _clean_up(location)
            return attrs["counts"]
        locks.acquire(
            part_locks(location, header.shard_names),
            advice="wait for that worker to finish, then finalize",
        )
        return _finalize(location, root, header)


def _finalize(location: Location, root, header: schema.StoreHeader) -> dict:
    """Build the root arrays from the parts (after the rows an unfinished append keeps, see
    `gtok.store.append`); the caller holds every lock of the store."""
    before = load_before(location, root, header)
    names = header.shard_names[before.shards :]
    found = {name: part_counts(root, name) for name in names}
    if missing := [n for n, c in found.items() if c is None]:
        raise GtokError(_missing_message(location, missing, len(names)))
    counts = {n: c for n, c in found.items() if c is not None}
    for name in names:
        owner = root[f"{schema.PARTS}/{schema.part_name(name)}"].attrs.get("weights_sha256")
        if owner != header.weights_sha256:
            raise GtokError(
                f"the part of {name} in {location} was encoded by another model; delete "
                f"{schema.PARTS}/{schema.part_name(name)} there and rerun its worker."
            )
    rows = [counts[n]["rows"] for n in names]
    total = before.rows + sum(rows)
    totals = _totals(header, before, [counts[n] for n in names])
    specs = header.row_arrays(has_labels=totals["labeled"] > 0) + schema.text_arrays(
        captions=totals[schema.CAPTIONED] > 0, metadata_fields=header.metadata_fields
    )
    # arrays of an earlier attempt that this one's header rules out
    stale_arrays = (schema.GEOMETRY, schema.GEOMETRY_CODES, schema.GEOMETRY_IDS)
    for stale in (*stale_arrays, schema.LABELS, schema.CAPTIONS):
        if stale not in {s.name for s in specs} and stale in root:
            location.remove(stale)
    writers = {spec.name: _grow(root, spec, before.rows, total) for spec in specs}
    skipped = {c: list(v) for c, v in before.tables[schema.SKIPPED].items()}
    for name in names:
        part = root[f"{schema.PARTS}/{schema.part_name(name)}"]
        for spec in specs:
            block = _part_column(part, spec, counts[name]["rows"])
            _check_written(location, name, spec.name, block)
            writers[spec.name].add(block)
        keys = part[schema.PART_SKIPPED_KEYS][...].tolist()
        reasons = part[schema.PART_SKIPPED_REASONS][...].tolist()
        if counts[name]["problem"]:
            keys, reasons = [*keys, ""], [*reasons, counts[name]["problem"]]
        skipped["shard"] += [name] * len(keys)
        skipped["key"] += [str(k) for k in keys]
        skipped["reason"] += [str(r) for r in reasons]
    for writer in writers.values():
        writer.close()
    table = root.require_group(schema.SKIPPED)
    for column, values in skipped.items():
        _string_table(table, column, values)
    sources = [part_fingerprint(location, root, n) for n in names]
    _write_inputs(root, header, before, [counts[n] for n in names], sources)
    appends = header.appends
    if appends and not appends[-1].get("finished"):
        appends = (*appends[:-1], {**appends[-1], "finished": True})
    root.attrs[schema.ATTR_ROOT] = replace(header, appends=appends).to_attrs(
        state=schema.STATE_COMPLETE, gtok_version=__version__, counts=totals
    )
    _clean_up(location)
    return totals


def _totals(header: schema.StoreHeader, before: Before, counts: list[dict]) -> dict:
    """The store's counts: what it held before plus the new parts' counts."""
    totals = {
        "shards": len(header.shard_names),
        "samples": sum(c["samples"] for c in counts),
        "encoded": sum(c["rows"] for c in counts),
        "skipped": sum(c["skipped"] for c in counts),
        "damaged_shards": sum(1 for c in counts if c["problem"]),
        "labeled": sum(c["labeled"] for c in counts),
        "upscaled": sum(c["upscaled"] for c in counts),
        schema.CAPTIONED: sum(c.get(schema.CAPTIONED, 0) for c in counts),
    }
    for key in totals:
        if key != "shards":
            totals[key] += int(before.counts.get(key, 0))
    return totals


def _grow(root, spec: schema.ArraySpec, first_row: int, total: int) -> _Rows:
    """A writer of rows `first_row`.. of root array `spec` (created, or grown to `total`
    rows keeping rows 0..first_row-1); it starts at the Zarr shard holding `first_row`,
    with that shard's old rows (fill values for an array new to the store) buffered."""
    row_shape = spec.row_shape
    start = first_row - first_row % schema.SHARD_ROWS
    if first_row == 0 or spec.name not in root:
        array = root.create_array(
            spec.name,
            shape=(total, *row_shape),
            chunks=(schema.CHUNK_ROWS, *row_shape),
            shards=(schema.SHARD_ROWS, *row_shape),
            dtype=spec.dtype,
            fill_value=spec.fill,
            compressors=schema.compressors(),
            dimension_names=spec.dimension_names,
            overwrite=True,
        )
        dtype = object if spec.dtype is str else spec.dtype
        tail = np.full((first_row - start, *row_shape), spec.fill, dtype=dtype)
    else:
        array = root[spec.name]
        tail = np.asarray(array[start:first_row])
        tail = tail.astype(object) if spec.dtype is str else tail
        array.resize((total, *row_shape))
    rows = _Rows(array, schema.SHARD_ROWS, [], written=start)
    if len(tail):
        rows.pending, rows.buffered = [tail], len(tail)
    return rows


def _part_column(part, spec: schema.ArraySpec, rows: int) -> np.ndarray:
    """The part's rows of array `spec` (a part written before gtok kept text: fill values)."""
    if spec.dtype is str and spec.name != schema.KEYS and spec.name not in part:
        return np.full(rows, spec.fill, dtype=object)
    block = part[spec.name][...]
    return block.astype(object) if spec.dtype is str else block


def _write_inputs(
    root,
    header: schema.StoreHeader,
    before: Before,
    counts: list[dict],
    sources: list[ShardFingerprint | None],
) -> None:
    """The per-shard table: the shards before (as they were), then the new parts, with the
    size and fingerprint of each part's file (`sources`, None: not recorded)."""
    old = before.tables[schema.INPUTS]
    rows = [c["rows"] for c in counts]
    first = (before.rows + np.concatenate([[0], np.cumsum(rows)[:-1]])).astype(np.int64)
    inputs = root.require_group(schema.INPUTS)
    _string_table(inputs, "name", list(header.shard_names))
    _string_table(inputs, "url", list(header.shard_urls))
    _count_table(inputs, "first_row", old["first_row"] + (first.tolist() if rows else []))
    _count_table(inputs, "rows", old["rows"] + rows)
    _count_table(inputs, "samples", old["samples"] + [c["samples"] for c in counts])
    _count_table(inputs, "skipped", old["skipped"] + [c["skipped"] for c in counts])
    _string_table(inputs, "problem", old["problem"] + [c["problem"] or "" for c in counts])
    records = [UNRECORDED if s is None else source_record(s) for s in sources]
    _count_table(inputs, "bytes", old["bytes"] + [r["bytes"] for r in records])
    _string_table(inputs, "fingerprint", old["fingerprint"] + [r["fingerprint"] for r in records])


def _check_written(location: Location, shard: str, name: str, block: np.ndarray) -> None:
    """Refuse a part whose indices or keys hold fill values: rows that were never written
    (a part marked complete whose arrays were deleted or replaced) must not become tokens."""
    if name == schema.INDICES:
        unwritten = block.size and (block == schema.INDEX_FILL).any()
    elif name == schema.KEYS:
        unwritten = any(str(k) == "" for k in block)
    else:
        return
    if unwritten:
        where = f"{schema.PARTS}/{schema.part_name(shard)}"
        raise GtokError(
            f"the part of {shard} in {location} has unwritten rows in {name}; delete {where} "
            "there and rerun its worker."
        )


def _clean_up(location: Location) -> None:
    """Delete the parts of a complete store and consolidate its metadata."""
    import zarr

    location.remove(schema.PARTS)
    lock.remove_part_locks(location)
    with warnings.catch_warnings():
        # "consolidated metadata is not in the v3 spec yet": known; "Object at locks is not
        # recognized": our lock files, held while this runs
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message="Object at ", category=UserWarning)
        zarr.consolidate_metadata(location.zarr_store())
