"""`gtok verify`: check a finished store's tokens and its accounting of every source sample.

First the store is opened and checked against the format (`validate`: header fields, the
arrays' names, dtypes, shapes and chunking, G as the model says); a store that fails that is
a `GtokError`. Then every row is read, one Zarr shard at a time, and must hold a token: code
ids below the codebook size (65535 marks a row never written), finite geometry, a non-empty
key; with --geometry-bits, bins below 2^B and `geometry` their centres. Every sample of
every source tar must be in the store exactly as often as the tar holds it, either as a
row of its shard's row range or as a skipped record with a reason; the store must hold
nothing else; a tar that cannot be read to its end must be recorded as damaged; the
per-shard table and the header's counts must agree with the arrays. Only tar headers and
member bytes are read: no image is decoded, so a verify is much faster than an encode.
Each source file must be the file the store encoded under its name: its size and
fingerprint (`gtok.store.identity`) must equal the recorded ones; shards of stores written
before gtok recorded fingerprints are counted in `fingerprints_missing` and compared by
sample keys only. Where img2dataset's accounting sits beside a shard (`00000_stats.json` next to
`00000.tar`), the samples the tar holds must equal the `successes` it recorded: a tar cut
short after it was written is reported with the number of samples it lacks.
Memory holds one Zarr shard of rows, and the keys of one input shard, at a time.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from gtok.data.parquetio import DEFAULT_COLUMNS, Columns
from gtok.data.shards import ShardFingerprint, ShardRef, expand_shards, shard_fingerprint
from gtok.data.sources import read_source
from gtok.data.tario import RawSample, TarProblem
from gtok.safeload import Unreadable, parse_json, read_limited
from gtok.store import schema
from gtok.store.damage import blocks, read_block, row_damage
from gtok.store.geometry_bins import GeometryBinning
from gtok.store.identity import table_fingerprints
from gtok.store.location import Location
from gtok.store.opening import get_array
from gtok.store.validate import CheckedStore, open_checked

__all__ = ["VerifyReport", "verify_store"]

MAX_LISTED = 20
_STATS_BYTES = 1 << 20  # an img2dataset stats file is a few hundred bytes


@dataclass
class VerifyReport:
    """ok: no problem found; problems: the first `MAX_LISTED` of `problem_count`."""

    store: str
    shards_checked: int = 0
    source_samples: int = 0
    rows: int = 0
    skipped: int = 0
    stats_checked: int = 0  # shards compared with img2dataset's `_stats.json`
    fingerprints_checked: int = 0  # source files compared with the recorded fingerprint
    fingerprints_missing: int = 0  # source shards the store records no fingerprint for
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


@dataclass
class _Skipped:
    """The skipped table grouped by input shard: sample keys, and the damage record."""

    keys: dict[str, Counter] = field(default_factory=dict)
    damage: dict[str, str] = field(default_factory=dict)


def _source(ref: ShardRef) -> tuple[Counter, str | None]:
    """(occurrences of each sample key, the input shard's problem or None)."""
    keys: Counter = Counter()
    problem = None
    for item in read_source(ref):
        if isinstance(item, TarProblem):
            problem = item.reason
        elif isinstance(item, RawSample):
            keys[item.key] += 1
    return keys, problem


def _column(store: CheckedStore, path: str) -> list:
    """A whole table column (tables hold one value per input shard or skipped sample)."""
    array = get_array(store.root, path, str(store.location))
    return [
        value
        for start, stop in blocks(int(array.shape[0]))
        for value in read_block(str(store.location), path, array, start, stop).tolist()
    ]


def _check_tokens(store: CheckedStore, report: VerifyReport) -> int:
    """Every row holds a token (`damage.row_damage`); returns how many rows have a label."""
    where, root, rows = str(store.location), store.root, store.rows or 0
    bins = store.header.geometry_bins
    binning = None if bins is None else GeometryBinning.from_attrs(bins)
    names = [n for n in (schema.INDICES, schema.GEOMETRY, schema.KEYS) if n in root]
    names += [schema.GEOMETRY_CODES] if binning is not None else []
    codebook = store.header.geometry_codebook
    names += [schema.GEOMETRY_IDS] if codebook is not None else []
    arrays = {n: get_array(root, n, where) for n in names}
    labels = get_array(root, schema.LABELS, where) if schema.LABELS in root else None
    labeled = 0
    for start, stop in blocks(rows):
        block = {n: read_block(where, n, a, start, stop) for n, a in arrays.items()}
        keys = block.get(schema.KEYS)
        for row, what in row_damage(
            np.arange(start, stop),
            store.header.codebook_size,
            block.get(schema.INDICES),
            block.get(schema.GEOMETRY),
            keys,
        ):
            key = f" ({keys[row - start]})" if keys is not None and keys[row - start] else ""
            report.add(f"row {row}{key}: {what}")
        if binning is not None:
            codes, geometry = block[schema.GEOMETRY_CODES], block.get(schema.GEOMETRY)
            for i, what in binning.row_problems(codes, geometry):
                report.add(f"row {start + i}: {what}")
        if codebook is not None:
            ids = block[schema.GEOMETRY_IDS]
            for i in np.flatnonzero((ids >= codebook["size"]).any(axis=1)).tolist():
                report.add(
                    f"row {start + i}: a geometry id beyond the {codebook['size']} of its codebook"
                )
        if labels is not None:
            labeled += int((read_block(where, schema.LABELS, labels, start, stop) >= 0).sum())
    return labeled


def _read_skipped(store: CheckedStore, report: VerifyReport) -> _Skipped:
    columns = [_column(store, f"{schema.SKIPPED}/{c}") for c in schema.SKIPPED_COLUMNS]
    out = _Skipped()
    for shard, key, reason in zip(*columns, strict=True):
        shard, key, reason = str(shard), str(key), str(reason)
        if not reason:
            report.add(f"{shard}/{key}: skipped without a reason")
        if key:
            report.skipped += 1
            out.keys.setdefault(shard, Counter())[key] += 1
        else:
            out.damage[shard] = reason
    return out


def _shard_rows(store: CheckedStore, ref_name: str, span: tuple[int, int], report) -> Counter:
    """Sample keys of the rows `span` (start, stop) of input shard `ref_name`."""
    where = str(store.location)
    keys = get_array(store.root, schema.KEYS, where)
    found: Counter = Counter()
    start, stop = span
    for begin, end in blocks(stop - start):
        for offset, key in enumerate(
            read_block(where, schema.KEYS, keys, start + begin, start + end)
        ):
            shard, _, sample = str(key).partition("/")
            if shard == ref_name:
                found[sample] += 1
            elif key:  # an empty key is reported with the tokens
                report.add(f"row {start + begin + offset} ({key}) lies in the rows of {ref_name}")
    return found


def _check_inputs(store: CheckedStore, table: dict[str, list], skipped: _Skipped, report) -> None:
    """The per-shard table: contiguous row ranges covering every row, consistent counts."""
    expected_first = 0
    for i, name in enumerate(table["name"]):
        name = str(name)
        first, rows, samples = table["first_row"][i], table["rows"][i], table["samples"][i]
        recorded = sum(skipped.keys.get(name, Counter()).values())
        if first != expected_first:
            report.add(f"{name}: its rows start at {first}, not after the previous shard's")
        expected_first = first + rows
        if table["skipped"][i] != recorded or rows + recorded != samples:
            report.add(
                f"{name}: the table says {rows} rows + {table['skipped'][i]} skipped = {samples} "
                f"samples, the store holds {recorded} skipped records"
            )
        if bool(str(table["problem"][i])) != (name in skipped.damage):
            report.add(f"{name}: the table and the skipped records disagree on its damage")
    if table["name"] and [str(n) for n in table["name"]] != list(store.header.shard_names):
        report.add("the input table does not list the header's input shards")
    if expected_first != store.rows:
        report.add(
            f"the input table accounts for {expected_first} rows, the store has {store.rows}"
        )


def _check_counts(store: CheckedStore, report: VerifyReport, skipped: _Skipped, labeled: int):
    counts = store.attrs["counts"]
    found = {
        "shards": len(store.header.shard_names),
        "encoded": report.rows,
        "skipped": report.skipped,
        "samples": report.rows + report.skipped,
        "damaged_shards": len(skipped.damage),
        "labeled": labeled,
    }
    for key, value in found.items():
        if counts[key] != value:
            report.add(f"the header counts {key} {counts[key]}, the arrays hold {value}")


def _check_source(
    store: CheckedStore, ref: ShardRef, span: tuple[int, int], skipped: _Skipped, report
) -> int:
    """Compare one source tar with its rows and skipped records; returns its sample count."""
    expected, problem = _source(ref)
    found = _shard_rows(store, ref.name, span, report) + skipped.keys.get(ref.name, Counter())
    for key in sorted(set(expected) | set(found)):
        if expected[key] != found[key]:
            report.add(
                f"{ref.name}/{key}: {expected[key]} in the source, {found[key]} in the store "
                "(rows + skipped)"
            )
    if (problem is None) != (ref.name not in skipped.damage):
        report.add(
            f"{ref.name}: the source tar is "
            f"{'damaged (' + problem + ')' if problem else 'intact'} but the store records "
            f"{'damage' if ref.name in skipped.damage else 'none'}"
        )
    return sum(expected.values())


def _check_file(ref: ShardRef, stored: ShardFingerprint | None, report: VerifyReport) -> None:
    """Compare the file of `ref` with the fingerprint the store recorded under its name."""
    if stored is None:
        report.fingerprints_missing += 1
        return
    report.fingerprints_checked += 1
    found = shard_fingerprint(ref.url)
    if found != stored:
        report.add(
            f"{ref.name}: {ref.url} is not the file the store encoded under this name "
            f"({found.difference(stored)})"
        )


def _stats_url(url: str) -> str | None:
    """Where img2dataset writes a shard's accounting: `<name>_stats.json` beside `<name>.tar`
    (or `<name>.parquet`)."""
    stem, dot, suffix = url.rpartition(".")
    return f"{stem}_stats.json" if dot and suffix in ("tar", "parquet") else None


def _check_stats(ref: ShardRef, samples: int, report: VerifyReport) -> None:
    """Compare the samples of `ref` with the `successes` of its img2dataset stats file."""
    import fsspec

    url = _stats_url(ref.url)
    if url is None:
        return
    try:
        with fsspec.open(url, "rb") as f:
            stats = parse_json(read_limited(f, _STATS_BYTES, url), url)
    except FileNotFoundError:  # not written by img2dataset
        return
    except OSError as exc:
        report.add(f"{ref.name}: its img2dataset stats {url} cannot be read ({exc})")
        return
    except Unreadable as exc:
        report.add(f"{ref.name}: its img2dataset stats {url} {exc.reason}")
        return
    successes = stats.get("successes") if isinstance(stats, dict) else None
    if not isinstance(successes, int) or isinstance(successes, bool):
        return  # not img2dataset's accounting (e.g. `gtok pack`'s stats count otherwise)
    report.stats_checked += 1
    if successes != samples:
        gap = (
            f"{successes - samples} missing"
            if successes > samples
            else f"{samples - successes} more"
        )
        report.add(
            f"{ref.name}: img2dataset recorded {successes} successes in {url}, the tar holds "
            f"{samples} samples ({gap})"
        )


def verify_store(
    path: str | os.PathLike, shards: Iterable[str | os.PathLike], columns: Columns = DEFAULT_COLUMNS
) -> VerifyReport:
    """Check the store at `path` and compare it with the source `shards` (see the module doc),
    Parquet files read with `columns` (their keys depend on `Columns.key`).

    A store that does not open or does not match the format raises `GtokError`; every other
    problem is listed in the report.
    """
    sources = expand_shards(shards, columns)  # an input gtok cannot read: before anything
    location = Location(os.fspath(path))
    report = VerifyReport(store=str(location))
    store = open_checked(location)
    if not store.complete:
        report.add(f"the store is not finished (state: {store.attrs['state']})")
        return report
    report.rows = store.rows or 0
    stored_names = set(store.header.shard_names)
    for ref in sources:
        if ref.name not in stored_names:
            report.add(f"{ref.name}: a source shard the store does not include")
    for name in sorted(stored_names - {r.name for r in sources}):
        report.add(f"{name}: in the store but not among the given shards")
    labeled = _check_tokens(store, report)
    skipped = _read_skipped(store, report)
    for shard in sorted((set(skipped.keys) | set(skipped.damage)) - stored_names):
        report.add(f"{shard}: skipped records of a shard that is not an input shard")
    table = {c: _column(store, f"{schema.INPUTS}/{c}") for c in schema.INPUT_COLUMNS}
    _check_inputs(store, table, skipped, report)
    _check_counts(store, report, skipped, labeled)
    spans = {
        str(n): (max(0, min(f, report.rows)), max(0, min(f + r, report.rows)))
        for n, f, r in zip(table["name"], table["first_row"], table["rows"], strict=True)
    }
    recorded = table_fingerprints(location, store.root, store.header.shard_names)
    for ref in sources:
        if ref.name in stored_names:
            report.shards_checked += 1
            _check_file(ref, recorded.get(ref.name), report)
            samples = _check_source(store, ref, spans.get(ref.name, (0, 0)), skipped, report)
            report.source_samples += samples
            _check_stats(ref, samples, report)
            index = store.header.shard_names.index(ref.name)
            if table["samples"][index] != samples:
                report.add(
                    f"{ref.name}: {samples} samples in the source, {table['samples'][index]} "
                    "counted in the store"
                )
    return report
