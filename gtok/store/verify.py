"""`gtok verify`: check a finished store against its source shards, sample by sample.

Every sample of every source tar must be in the store exactly as often as the tar holds it,
either as a row or as a skipped record with a reason; the store must hold nothing else; a
tar that cannot be read to its end must be recorded as damaged; per-shard sample counts and
the store's totals must agree. Only tar headers and member bytes are read: no image is
decoded, so a verify is much faster than an encode.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from gtok.data.shards import expand_shards
from gtok.data.tario import RawSample, TarProblem, read_tar
from gtok.store import schema
from gtok.store.location import Location
from gtok.store.writer import open_root, read_header

__all__ = ["VerifyReport", "verify_store"]

MAX_LISTED = 20


@dataclass
class VerifyReport:
    """ok: no problem found; problems: the first `MAX_LISTED` of `problem_count`."""

    store: str
    shards_checked: int = 0
    source_samples: int = 0
    rows: int = 0
    skipped: int = 0
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


def _source(url: str) -> tuple[Counter, str | None]:
    """(occurrences of each sample key, the tar's problem or None)."""
    keys: Counter = Counter()
    problem = None
    for item in read_tar(url):
        if isinstance(item, TarProblem):
            problem = item.reason
        elif isinstance(item, RawSample):
            keys[item.key] += 1
    return keys, problem


def verify_store(path: str | os.PathLike, shards: Iterable[str | os.PathLike]) -> VerifyReport:
    """Compare the store at `path` with the source `shards` (see the module docstring)."""
    location = Location(os.fspath(path))
    report = VerifyReport(store=str(location))
    root = open_root(location)
    header, attrs = read_header(root)
    if attrs["state"] != schema.STATE_COMPLETE:
        report.add(f"the store is not finished (state: {attrs['state']})")
        return report
    sources = expand_shards(shards)
    stored_names = set(header.shard_names)
    for ref in sources:
        if ref.name not in stored_names:
            report.add(f"{ref.name}: a source shard the store does not include")
    for name in sorted(stored_names - {r.name for r in sources}):
        report.add(f"{name}: in the store but not among the given shards")
    keys = [str(k) for k in root[schema.KEYS][...].tolist()]
    report.rows = len(keys)
    table = root[schema.SKIPPED]
    skipped_rows = list(
        zip(
            *(table[c][...].tolist() for c in ("shard", "key", "reason")),
            strict=True,
        )
    )
    report.skipped = sum(1 for _, key, _ in skipped_rows if key)
    rows_by_shard: dict[str, Counter] = {}
    for key in keys:
        shard, _, sample = key.partition("/")
        rows_by_shard.setdefault(shard, Counter())[sample] += 1
    skipped_by_shard: dict[str, Counter] = {}
    damage: dict[str, str] = {}
    for shard, key, reason in skipped_rows:
        shard, key, reason = str(shard), str(key), str(reason)
        if not reason:
            report.add(f"{shard}/{key}: skipped without a reason")
        if key:
            skipped_by_shard.setdefault(shard, Counter())[key] += 1
        else:
            damage[shard] = reason
    samples_by_name = dict(
        zip(
            [str(n) for n in root[schema.INPUTS]["name"][...].tolist()],
            root[schema.INPUTS]["samples"][...].tolist(),
            strict=True,
        )
    )
    for ref in sources:
        if ref.name not in stored_names:
            continue
        report.shards_checked += 1
        expected, problem = _source(ref.url)
        report.source_samples += sum(expected.values())
        found = rows_by_shard.pop(ref.name, Counter()) + skipped_by_shard.pop(ref.name, Counter())
        for key in sorted(set(expected) | set(found)):
            if expected[key] != found[key]:
                report.add(
                    f"{ref.name}/{key}: {expected[key]} in the source, {found[key]} in the store "
                    "(rows + skipped)"
                )
        if (problem is None) != (ref.name not in damage):
            report.add(
                f"{ref.name}: the source tar is "
                f"{'damaged (' + problem + ')' if problem else 'intact'} but the store records "
                f"{'damage' if ref.name in damage else 'none'}"
            )
        if samples_by_name.get(ref.name) != sum(expected.values()):
            report.add(
                f"{ref.name}: {sum(expected.values())} samples in the source, "
                f"{samples_by_name.get(ref.name)} counted in the store"
            )
    for shard in sorted((set(rows_by_shard) | set(skipped_by_shard)) - stored_names):
        report.add(f"{shard}: rows or skipped records of a shard that is not an input shard")
    counts = attrs["counts"]
    if counts["encoded"] != report.rows or counts["skipped"] != report.skipped:
        report.add(
            f"the store's counts (encoded {counts['encoded']}, skipped {counts['skipped']}) do "
            f"not match its arrays ({report.rows} rows, {report.skipped} skipped records)"
        )
    if counts["encoded"] + counts["skipped"] != counts["samples"]:
        report.add(
            f"encoded {counts['encoded']} + skipped {counts['skipped']} != samples read "
            f"{counts['samples']}"
        )
    return report
