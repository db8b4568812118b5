"""Is a shard file given now the one a store encoded under that file name?

A store knows its input shards by file name (a row's key is `"<shard name>/<sample key>"`),
and img2dataset names the shards of every download `00000.tar`, `00001.tar`, ...: a name
alone cannot tell a second download from the first. So every part records the size and
fingerprint (`gtok.data.shards.shard_fingerprint`: a hash of the size and the first and
last MiB) of the file it was read from, in its `schema.PART_SOURCE` attribute; finalize
keeps them in the inputs table (`inputs/bytes`, `inputs/fingerprint`); and a resume, an
`--append` and `gtok verify` compare the files they are given with them. A shard whose
name matches a stored one but whose file differs is refused by `check_same_files`, naming
both and what differs.

Stores and parts written before gtok recorded fingerprints have none (no columns, no
attribute; a store appended to since then holds -1 and "" for its older shards): their
shards are matched by name alone, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gtok.data.shards import ShardFingerprint, ShardRef, shard_fingerprints
from gtok.errors import GtokError
from gtok.store import schema
from gtok.store.damage import blocks, read_block
from gtok.store.location import Location
from gtok.store.opening import damaged, get_array

__all__ = [
    "UNRECORDED",
    "check_same_files",
    "has_identity_table",
    "part_fingerprint",
    "read_identity_columns",
    "source_record",
    "table_fingerprints",
]

UNRECORDED = {"bytes": -1, "fingerprint": ""}  # an inputs table row without a fingerprint


def source_record(fingerprint: ShardFingerprint) -> dict:
    """A fingerprint as a part's `source` attribute (and an inputs table row) holds it."""
    return {"bytes": fingerprint.size, "fingerprint": fingerprint.digest}


def _parse(store: str, where: str, size: Any, digest: Any) -> ShardFingerprint | None:
    """The fingerprint of a record's unchecked `size` and `digest` (None for `UNRECORDED`); a
    malformed one is damage."""
    if size == UNRECORDED["bytes"] and digest == UNRECORDED["fingerprint"]:
        return None
    try:
        return ShardFingerprint(size, digest)  # which checks both
    except ValueError as exc:
        raise damaged(store, f"{where} records a malformed shard fingerprint ({exc})") from exc


def part_fingerprint(location: Location, root, shard: str) -> ShardFingerprint | None:
    """The fingerprint the part of input shard `shard` records (None: none recorded, or no
    part)."""
    path = f"{schema.PARTS}/{schema.part_name(shard)}"
    try:
        record = root[path].attrs.get(schema.PART_SOURCE)
    except (KeyError, FileNotFoundError):
        return None
    if record is None:
        return None
    record = record if isinstance(record, dict) else {}
    where = f"the part of {shard} ({path})"
    return _parse(str(location), where, record.get("bytes"), record.get("fingerprint"))


def has_identity_table(group) -> bool:
    """Whether the inputs table of `group` (a store's root or an append's snapshot) has a
    fingerprint column (stores written before gtok recorded fingerprints have none)."""
    return any(f"{schema.INPUTS}/{c}" in group for c in schema.INPUT_IDENTITY_COLUMNS)


def read_identity_columns(location: Location, group, rows: int) -> dict[str, list]:
    """The `bytes` and `fingerprint` columns of `group`'s inputs table, `rows` values each
    (`UNRECORDED` values when the table has no such columns)."""
    store = str(location)
    if not has_identity_table(group):
        return {c: [v] * rows for c, v in UNRECORDED.items()}
    columns = {}
    for column in schema.INPUT_IDENTITY_COLUMNS:
        path = f"{schema.INPUTS}/{column}"
        array = get_array(group, path, store)
        if array.shape != (rows,):
            raise damaged(store, f"its {path} has shape {array.shape}, not ({rows},)")
        columns[column] = [
            value
            for start, stop in blocks(rows)
            for value in read_block(store, path, array, start, stop).tolist()
        ]
    return columns


def table_fingerprints(
    location: Location, group, names: Sequence[str]
) -> dict[str, ShardFingerprint]:
    """Shard name -> the fingerprint the inputs table of `group` records for it, given the
    table's `names` in order; shards without one are left out."""
    columns = read_identity_columns(location, group, len(names))
    found = {}
    for name, size, digest in zip(names, columns["bytes"], columns["fingerprint"], strict=True):
        where = f"its inputs table's row of {name}"
        fingerprint = _parse(str(location), where, size, digest)
        if fingerprint is not None:
            found[name] = fingerprint
    return found


def check_same_files(
    location: Location, refs: Sequence[ShardRef], recorded: dict[str, ShardFingerprint]
) -> None:
    """Refuse, with one sentence, the first of `refs` whose file is not the one the store
    recorded under its name; shards without a record pass (matched by name, as before)."""
    known = sorted(r for r in refs if r.name in recorded)
    for ref, found in zip(known, shard_fingerprints(known), strict=True):
        stored = recorded[ref.name]
        if found != stored:
            raise GtokError(
                f"{ref.url} is not the file {location} encoded as its shard {ref.name} "
                f"({found.difference(stored)}); if it is another shard, rename it (shard "
                "file names must be unique in a store) or encode it into another store."
            )
