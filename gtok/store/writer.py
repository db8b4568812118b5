"""Create or reopen a token store and write one part per input shard.

Rules this module keeps (see `schema` for the layout):
- The first writer creates the store with its header; every later writer (a resumed run, or
  another worker of a parallel run) must bring the same model weights, preprocessing,
  geometry dtype and shard list, or is refused with one sentence saying what differs.
- An input shard's rows go to its own part, written by the one worker that owns the shard,
  so no two processes ever write the same Zarr object. The part's `complete` attribute is
  written after its arrays are durable (fsync on local disks); a part without it is
  leftovers of an interrupted attempt and is deleted and redone.
- `--overwrite` deletes the store first, but only a gtok store (or an empty folder): any
  other existing path is refused rather than deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gtok._version import __version__
from gtok.errors import GtokError
from gtok.store import schema
from gtok.store.location import Location

__all__ = ["Part", "StoreWriter", "open_root", "read_header"]


@dataclass
class Part:
    """The encoded rows of one input shard, in tar order, and what else was read there.

    indices: uint16 [n, G]; geometry: [n, G, 5] in the store's geometry dtype, or None (VQ);
    keys: n strings "<shard>/<key>"; labels: int32 [n], -1 = no label; skipped: (key, reason)
    per unusable sample; samples: samples read (n + len(skipped)); problem: why the tar could
    not be read to its end, if so; upscaled: images smaller than the resize target.
    """

    shard: str
    indices: np.ndarray
    geometry: np.ndarray | None
    keys: list[str]
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    samples: int = 0
    problem: str | None = None
    upscaled: int = 0

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.indices.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(
                f"part {self.shard}: {n} keys but indices {self.indices.shape}, "
                f"labels {self.labels.shape}"
            )
        if self.geometry is not None and self.geometry.shape[:2] != self.indices.shape:
            raise ValueError(f"geometry {self.geometry.shape} != indices {self.indices.shape}")
        if self.samples != n + len(self.skipped):
            raise ValueError(f"{self.samples} samples != {n} encoded + {len(self.skipped)} skipped")

    def counts(self) -> dict:
        return {
            "rows": len(self.keys),
            "samples": self.samples,
            "skipped": len(self.skipped),
            "labeled": int((self.labels >= 0).sum()),
            "upscaled": self.upscaled,
            "problem": self.problem,
        }


def open_root(location: Location, mode: str = "r"):
    """The store's root group; a `GtokError` when there is none."""
    import zarr

    if not location.has("zarr.json"):
        raise GtokError(f"{location} is not a gtok token store (no zarr.json there).")
    return zarr.open_group(location.zarr_store(read_only=mode == "r"), mode=mode)


def read_header(root) -> tuple[schema.StoreHeader, dict]:
    """(header, raw attribute dict) of an opened root group, or a `GtokError`."""
    attrs = root.attrs.asdict().get(schema.ATTR_ROOT)
    if not isinstance(attrs, dict) or attrs.get("format") != schema.FORMAT:
        raise GtokError(f"{root.store} is a Zarr group but not a gtok token store.")
    if attrs.get("format_version") != schema.FORMAT_VERSION:
        raise GtokError(
            f"the store has format version {attrs.get('format_version')!r}; this gtok "
            f"({__version__}) reads version {schema.FORMAT_VERSION}."
        )
    return schema.StoreHeader.from_attrs(attrs), attrs


def _difference(old: schema.StoreHeader, new: schema.StoreHeader) -> str | None:
    """What makes `new` incompatible with the store's `old` header, as a phrase, or None."""
    if old.weights_sha256 != new.weights_sha256:
        return (
            f"holds tokens of another model (weights sha256 {old.weights_sha256[:12]}..., "
            f"this model's is {new.weights_sha256[:12]}...)"
        )
    if old.preprocessing != new.preprocessing:
        changed = sorted(
            k
            for k in {*old.preprocessing, *new.preprocessing}
            if old.preprocessing.get(k) != new.preprocessing.get(k)
        )
        return f"was encoded with different preprocessing ({', '.join(changed)} differ)"
    if old.has_geometry and old.geometry_dtype != new.geometry_dtype:
        return f"stores geometry as {old.geometry_dtype}, not {new.geometry_dtype}"
    if old.shard_names != new.shard_names:
        extra = sorted(set(new.shard_names) - set(old.shard_names))
        lacking = sorted(set(old.shard_names) - set(new.shard_names))
        detail = f"e.g. {extra[0]} is new" if extra else f"e.g. {lacking[0]} is missing"
        return (
            f"was started with another list of input shards ({len(old.shard_names)} shards, "
            f"now {len(new.shard_names)}; {detail})"
        )
    return None


def _check_target(location: Location, overwrite: bool) -> None:
    """A local output that is a file, or a symbolic link to delete, is refused up front."""
    if not location.is_local:
        return
    if location.path.exists() and not location.path.is_dir():
        raise GtokError(
            f"{location} is a file; give a folder for the token store (a new one, or a store "
            "to resume)."
        )
    if overwrite and location.path.is_symlink():
        raise GtokError(
            f"{location} is a symbolic link, and --overwrite deletes only a real folder; give "
            f"the store's own path ({location.path.resolve()})."
        )


class StoreWriter:
    """Writes parts into a store whose header matches this run's."""

    def __init__(self, location: Location, root, header: schema.StoreHeader, state: str):
        self.location = location
        self.root = root
        self.header = header
        self.state = state

    @classmethod
    def open(cls, out: str, header: schema.StoreHeader, *, overwrite: bool = False) -> StoreWriter:
        """Create the store at `out`, or reopen it to resume; see the module rules."""
        import zarr
        from zarr.errors import ContainsGroupError

        location = Location(str(out))
        _check_target(location, overwrite)
        if overwrite and location.has("zarr.json"):
            read_header(open_root(location))  # refuses to delete anything but a gtok store
            location.remove()
        if not location.has("zarr.json"):
            if location.exists() and not location.is_empty_dir():
                _wait_for_creator(location)
            else:
                fresh = header.to_attrs(state=schema.STATE_ENCODING, gtok_version=__version__)
                attrs = {schema.ATTR_ROOT: fresh}
                # another worker may create it a moment before us: then it is checked below
                with contextlib.suppress(ContainsGroupError, FileExistsError):
                    zarr.open_group(location.zarr_store(), mode="w-", attributes=attrs)
        root = open_root(location, mode="r+")
        existing, attrs = read_header(root)
        if (problem := _difference(existing, header)) is not None:
            raise GtokError(
                f"{location} {problem}; use the same settings, another output, or "
                "--overwrite to start over."
            )
        return cls(location, root, existing, attrs["state"])

    def completed(self, names: Sequence[str] | None = None) -> set[str]:
        """Which of `names` (default: all input shards) are already encoded."""
        names = self.header.shard_names if names is None else names
        if self.state == schema.STATE_COMPLETE:
            return set(names)
        return {n for n in names if part_counts(self.root, n) is not None}

    def write_part(self, part: Part) -> None:
        """Write `part` durably, then mark it complete (replacing any earlier attempt)."""
        if part.shard not in self.header.shard_names:
            raise ValueError(f"{part.shard} is not one of this store's input shards")
        if self.state == schema.STATE_COMPLETE:
            raise GtokError(f"{self.location} is already complete; nothing can be added to it.")
        name = schema.part_name(part.shard)
        path = f"{schema.PARTS}/{name}"
        self.location.remove(path)
        parts = self.root.require_group(schema.PARTS)
        group = parts.create_group(
            name, attributes={"shard": part.shard, "weights_sha256": self.header.weights_sha256}
        )
        specs = schema.row_arrays(
            self.header.num_tokens,
            has_geometry=self.header.has_geometry,
            geometry_dtype=self.header.geometry_dtype,
            has_labels=True,
        )
        columns = {
            schema.INDICES: part.indices,
            schema.GEOMETRY: part.geometry,
            schema.KEYS: np.array(part.keys, dtype=object),
            schema.LABELS: part.labels,
        }
        for spec in specs:
            _write_whole(group, spec.name, columns[spec.name], spec.dtype, spec.fill)
        skipped_keys = np.array([k for k, _ in part.skipped], dtype=object)
        reasons = np.array([r for _, r in part.skipped], dtype=object)
        _write_whole(group, schema.PART_SKIPPED_KEYS, skipped_keys, str, "")
        _write_whole(group, schema.PART_SKIPPED_REASONS, reasons, str, "")
        self.location.sync(path)
        group.attrs[schema.PART_COMPLETE] = part.counts()
        self.location.sync(path)


def _write_whole(group, name: str, data: np.ndarray, dtype, fill) -> None:
    """`data` as one array of one chunk, zstd-compressed."""
    rows = data.shape[0]
    chunks = (max(rows, 1), *data.shape[1:])
    array = group.create_array(
        name,
        shape=data.shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=schema.compressors(),
    )
    if rows:
        array[...] = data


def _wait_for_creator(location: Location, seconds: float = 10.0) -> None:
    """A folder without zarr.json: refuse it, unless all it holds is the temporary file of a
    zarr.json that another worker is writing right now (then wait for that)."""
    deadline = time.monotonic() + seconds
    while not location.has("zarr.json"):
        being_written = location.is_local and all(
            p.name.startswith("zarr.") and p.name.endswith(".partial")  # LocalStore temp name
            for p in location.path.iterdir()
        )
        if not being_written or time.monotonic() > deadline:
            raise GtokError(
                f"{location} exists and is not a gtok token store; choose another output."
            )
        time.sleep(0.05)


def part_counts(root, shard: str) -> dict | None:
    """The `complete` record of `shard`'s part, or None when it is absent or unfinished."""
    path = f"{schema.PARTS}/{schema.part_name(shard)}"
    try:
        group = root[path]
        counts = group.attrs.get(schema.PART_COMPLETE)
    except (KeyError, FileNotFoundError, ValueError):
        return None
    return counts if isinstance(counts, dict) else None
