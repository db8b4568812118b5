"""Create or reopen a token store and write one part per input shard.

Rules this module keeps (see `schema` for the layout):
- The first writer creates the store with its header; every later writer (a resumed run, or
  another worker of a parallel run) must bring the same model weights, preprocessing,
  geometry dtype and set of shards, or is refused with one sentence saying what differs.
  The store keeps its own shard order, which is row order (shards added by `--append`
  follow the others), so the same shards given in name order are the same plan.
- An input shard's rows go to its own part, written by the one process that holds the part's
  lock file (`gtok.store.lock`: `locks/<part name>.lock`), so no two processes ever write the
  same Zarr object; a second writer of a locked part is refused with one sentence naming the
  holder, and a lock whose holder died on this host is taken over. `claim` locks a worker's
  parts before it starts; `close` (or `with`) releases them, also on errors and Ctrl-C.
- The part's `complete` attribute is written after its arrays are durable (fsync on local
  disks); a part without it is leftovers of an interrupted attempt and is deleted and redone.
- Creating the store (its root `zarr.json` with the header) happens under the store-wide lock
  (`locks/_store.lock`), so processes that start together create it once and then compare
  headers; finalize and `--overwrite` hold that lock and every part's lock too.
- `--overwrite` deletes the store first, but only a gtok store (or an empty folder), and not
  while another process holds one of its locks: any other existing path is refused rather
  than deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gtok._version import __version__
from gtok.data.shards import ShardFingerprint
from gtok.errors import ArgumentError, GtokError
from gtok.store import lock, schema
from gtok.store.identity import part_fingerprint, source_record, table_fingerprints
from gtok.store.location import Location
from gtok.store.opening import open_root, read_header

__all__ = [
    "DIFFERENCE_ARGUMENTS",
    "Part",
    "StoreWriter",
    "header_difference",
    "part_locks",
    "write_whole",
]

# the arguments of `encode_shards` that `header_difference`'s sentences name
DIFFERENCE_ARGUMENTS = ("precision", "batch_size", "metadata_fields", "geometry_bits", "append")


@dataclass
class Part:
    """The encoded rows of one input shard, in tar order, and what else was read there.

    indices: uint16 [n, G]; geometry: [n, G, 5] in the store's geometry dtype, or None (VQ);
    geometry_codes: its integer bins [n, G, 5] (uint8/16) with --geometry-bits, else None;
    geometry_ids: its learned geometry ids [n, G] (uint16) with --layout codebook, else None;
    keys: n strings "<shard>/<key>"; labels: int32 [n], -1 = no label; skipped: (key, reason)
    per unusable sample; samples: samples read (n + len(skipped)); problem: why the tar could
    not be read to its end, if so; upscaled: images smaller than the resize target;
    captions: n `.txt` captions, None for a sample without one (None: no sample had one);
    meta: metadata field -> n strings (the store's `metadata_fields`, each one);
    fingerprint: of the shard file read (`gtok.data.shards.shard_fingerprint`), if known.
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
    captions: list[str | None] | None = None
    meta: dict[str, list[str]] = field(default_factory=dict)
    geometry_codes: np.ndarray | None = None
    geometry_ids: np.ndarray | None = None
    fingerprint: ShardFingerprint | None = None

    def __post_init__(self) -> None:
        n = len(self.keys)
        lengths = [len(self.captions or [None] * n), *(len(v) for v in self.meta.values())]
        if any(length != n for length in lengths):
            raise ValueError(f"part {self.shard}: {n} keys but captions/meta of {lengths}")
        if self.indices.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(
                f"part {self.shard}: {n} keys but indices {self.indices.shape}, "
                f"labels {self.labels.shape}"
            )
        if self.geometry is not None and self.geometry.shape[:2] != self.indices.shape:
            raise ValueError(f"geometry {self.geometry.shape} != indices {self.indices.shape}")
        if self.geometry_codes is not None and (
            self.geometry is None or self.geometry_codes.shape != self.geometry.shape
        ):
            raise ValueError(f"geometry_codes {self.geometry_codes.shape} != geometry's shape")
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
            schema.CAPTIONED: sum(c is not None for c in self.captions or ()),
        }

    def text_columns(self) -> dict[str, np.ndarray]:
        """Array name -> its n strings: `captions` and `meta/<field>`."""
        captions = [c or "" for c in self.captions or [None] * len(self.keys)]
        columns = {schema.CAPTIONS: captions}
        columns |= {schema.meta_path(f): v for f, v in self.meta.items()}
        return {name: np.array(v, dtype=object) for name, v in columns.items()}


def _precision(header: schema.StoreHeader) -> str:
    """The autocast precision the tokens were computed in (fp32 in stores that predate it)."""
    return (header.numerics or {}).get("precision", "fp32")


def _batch_size(header: schema.StoreHeader) -> int | None:
    """The images per model forward that made the tokens (None in stores that predate it)."""
    return (header.numerics or {}).get("batch_size")


def header_difference(old: schema.StoreHeader, new: schema.StoreHeader) -> str | None:
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
    if _precision(old) != _precision(new):
        return f"was encoded with precision {_precision(old)}, not {_precision(new)}"
    if _batch_size(old) is not None and _batch_size(old) != _batch_size(new):
        return (
            f"was encoded with batch_size {_batch_size(old)}, not {_batch_size(new)} (tokens "
            "depend slightly on the batch size)"
        )
    if old.refinement != new.refinement:
        return (
            f"was encoded with geometry refinement {_refinement(old.refinement)}, not "
            f"{_refinement(new.refinement)}"
        )
    if old.has_geometry and old.geometry_dtype != new.geometry_dtype:
        return f"stores geometry as {old.geometry_dtype}, not {new.geometry_dtype}"
    if old.metadata_fields != new.metadata_fields:
        return (
            f"keeps the metadata fields {list(old.metadata_fields)}, not "
            f"{list(new.metadata_fields)} (metadata_fields)"
        )
    if old.has_geometry and old.geometry_bins != new.geometry_bins:
        return f"stores geometry {_binning_phrase(old)}, not {_binning_phrase(new)}"
    if (old.layout, old.geometry_codebook) != (new.layout, new.geometry_codebook):
        return f"has the token layout {_layout_phrase(old)}, not {_layout_phrase(new)}"
    if set(old.shard_names) != set(new.shard_names):  # the store's order is row order
        extra = sorted(set(new.shard_names) - set(old.shard_names))
        lacking = sorted(set(old.shard_names) - set(new.shard_names))
        detail = (
            f"e.g. {extra[0]} is new; append adds shards to a finished store"
            if extra
            else f"e.g. {lacking[0]} is missing"
        )
        return (
            f"was started with another list of input shards ({len(old.shard_names)} shards, "
            f"now {len(new.shard_names)}; {detail})"
        )
    return None


def _binning_phrase(header: schema.StoreHeader) -> str:
    bins = header.geometry_bins
    if bins is None:
        return "as floats without geometry_bits"
    scale = bins["scale"]
    return f"in {bins['bits']}-bit bins (scales {scale['low']:g}..{scale['high']:g})"


def _layout_phrase(header: schema.StoreHeader) -> str:
    codebook = header.geometry_codebook
    if codebook is None:
        return header.layout
    return (
        f"{header.layout} (geometry codebook {codebook['path']}, sha256 {codebook['sha256'][:12]})"
    )


def _refinement(record: dict | None) -> str:
    """A refinement record as a phrase: "off" or "steps=50, lr=0.2, loss=psnr,
    optimizer=adam-warmup-linear"."""
    if not record:
        return "off"
    return ", ".join(f"{k}={record.get(k)}" for k in ("steps", "lr", "loss", "optimizer"))


def part_locks(location: Location, shards: Sequence[str]) -> Mapping[str, str]:
    """Lock name -> what it guards, for the parts of `shards` (input shard names)."""
    return {schema.part_name(s): f"input shard {s} of {location}" for s in shards}


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
        raise ArgumentError(
            f"{location} is a symbolic link, and overwrite deletes only a real folder; give "
            f"the store's own path ({location.path.resolve()}).",
            "overwrite",
        )


class StoreWriter:
    """Writes parts into a store whose header matches this run's; holds their locks until
    `close` (use it as a context manager)."""

    def __init__(self, location: Location, root, header: schema.StoreHeader, state: str):
        self.location = location
        self.root = root
        self.header = header
        self.state = state
        self.locks = lock.Locks(location, "encoding")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the locks of the parts this writer claimed."""
        self.locks.release()

    @classmethod
    def open(cls, out: str, header: schema.StoreHeader, *, overwrite: bool = False) -> StoreWriter:
        """Create the store at `out`, or reopen it to resume; see the module rules."""
        location = Location(str(out))
        _check_target(location, overwrite)
        if overwrite and location.has("zarr.json"):
            _start_over(location, header)
        elif not location.has("zarr.json"):
            _create(location, header)
        root = open_root(location, mode="r+")
        existing, attrs = read_header(root)
        if (problem := header_difference(existing, header)) is not None:
            raise ArgumentError(
                f"{location} {problem}; use the same settings, another output, or "
                "overwrite to start over.",
                "overwrite",
                *DIFFERENCE_ARGUMENTS,
            )
        return cls(location, root, existing, attrs["state"])

    def claim(self, shards: Sequence[str]) -> None:
        """Lock the parts of `shards` for this process, all or none (`lock.LockBusy` names a
        live holder), then reread the store's state, which a finalize may have changed."""
        self.locks.acquire(
            part_locks(self.location, shards),
            advice="wait for it to finish, or give each parallel worker its own --shard-id",
        )
        self.root = open_root(self.location, mode="r+")
        self.state = read_header(self.root)[1]["state"]

    def completed(self, names: Sequence[str] | None = None) -> set[str]:
        """Which of `names` (default: all input shards) are already encoded."""
        names = self.header.shard_names if names is None else names
        if self.state == schema.STATE_COMPLETE:
            return set(names)
        return {n for n in names if part_counts(self.root, n) is not None}

    def recorded_fingerprints(self, names: Sequence[str]) -> dict[str, ShardFingerprint]:
        """Shard name -> the fingerprint of its file that the store records, for those of
        `names` (encoded shards) that have one: from the inputs table of a complete store,
        else from the parts (`gtok.store.identity`)."""
        if self.state == schema.STATE_COMPLETE:
            recorded = table_fingerprints(self.location, self.root, self.header.shard_names)
            return {n: recorded[n] for n in names if n in recorded}
        found = {n: part_fingerprint(self.location, self.root, n) for n in names}
        return {n: f for n, f in found.items() if f is not None}

    def write_part(self, part: Part) -> None:
        """Write `part` durably, then mark it complete (replacing any earlier attempt)."""
        if part.shard not in self.header.shard_names:
            raise ValueError(f"{part.shard} is not one of this store's input shards")
        name = schema.part_name(part.shard)
        if name not in self.locks.held:
            self.claim([part.shard])
        if self.state == schema.STATE_COMPLETE:
            raise GtokError(f"{self.location} is already complete; nothing can be added to it.")
        path = f"{schema.PARTS}/{name}"
        self.location.remove(path)
        parts = self.root.require_group(schema.PARTS)
        attributes: dict[str, object] = {
            "shard": part.shard,
            "weights_sha256": self.header.weights_sha256,
        }
        if part.fingerprint is not None:
            attributes[schema.PART_SOURCE] = source_record(part.fingerprint)
        group = parts.create_group(name, attributes=attributes)
        specs = self.header.row_arrays(has_labels=True)
        columns = {
            schema.INDICES: part.indices,
            schema.GEOMETRY: part.geometry,
            schema.GEOMETRY_CODES: part.geometry_codes,
            schema.GEOMETRY_IDS: part.geometry_ids,
            schema.KEYS: np.array(part.keys, dtype=object),
            schema.LABELS: part.labels,
        }
        if set(part.meta) != set(self.header.metadata_fields):
            raise ValueError(f"part {part.shard} has metadata fields {sorted(part.meta)}")
        columns |= part.text_columns()
        specs += schema.text_arrays(captions=True, metadata_fields=self.header.metadata_fields)
        for spec in specs:
            data = columns[spec.name]
            if data is None:
                raise ValueError(f"part {part.shard} has no {spec.name}; the header calls for it")
            write_whole(group, spec.name, data, spec.dtype, spec.fill, spec.dimension_names)
        skipped_keys = np.array([k for k, _ in part.skipped], dtype=object)
        reasons = np.array([r for _, r in part.skipped], dtype=object)
        skipped = (schema.TABLE_DIMS[schema.SKIPPED],)
        write_whole(group, schema.PART_SKIPPED_KEYS, skipped_keys, str, "", skipped)
        write_whole(group, schema.PART_SKIPPED_REASONS, reasons, str, "", skipped)
        self.location.sync(path)
        group.attrs[schema.PART_COMPLETE] = part.counts()
        self.location.sync(path)


def write_whole(group, name: str, data: np.ndarray, dtype, fill, dims: tuple[str, ...]) -> None:
    """`data` as one array of one chunk, zstd-compressed, its dimensions named `dims`."""
    rows = data.shape[0]
    chunks = (max(rows, 1), *data.shape[1:])
    array = group.create_array(
        name,
        shape=data.shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=schema.compressors(),
        dimension_names=dims,
    )
    if rows:
        array[...] = data


def _is_free(location: Location) -> bool:
    """Nothing there, an empty folder, or only what a store being created holds: lock files
    and the temporary file of Zarr's `zarr.json`."""
    if not location.exists() or location.is_empty_dir():
        return True
    names = location.names()
    return bool(names) and all(
        n == lock.FOLDER or (n.startswith("zarr.") and n.endswith(".partial"))  # LocalStore temp
        for n in names
    )


def _create(location: Location, header: schema.StoreHeader) -> None:
    """Write the store's root group with `header`, once, however many processes try at once."""
    import zarr

    refusal = f"{location} exists and is not a gtok token store; choose another output."
    # a first look, to leave foreign folders untouched; the look under the lock decides
    being_made = location.has(lock.key(lock.STORE))  # by a creator or an --overwrite
    if not (being_made or _is_free(location) or location.has("zarr.json")):
        raise GtokError(refusal)
    fresh = header.to_attrs(state=schema.STATE_ENCODING, gtok_version=__version__)
    with lock.Locks(location, "creating the store") as locks:
        locks.acquire({lock.STORE: str(location)}, advice="wait for it to finish", wait=30.0)
        if location.has("zarr.json"):  # another process created it a moment ago
            return
        if not _is_free(location):
            raise GtokError(refusal)
        zarr.create_group(location.zarr_store(), attributes={schema.ATTR_ROOT: fresh})


def _start_over(location: Location, header: schema.StoreHeader) -> None:
    """`--overwrite`: delete the gtok store at `location` (refused while another process
    holds one of its locks, and for anything but a gtok store), then create it afresh."""
    old, _ = read_header(open_root(location))
    advice = "wait for it to finish before overwriting the store"
    with lock.Locks(location, "overwriting the store") as locks:
        locks.acquire({lock.STORE: str(location)}, advice=advice)
        locks.acquire(part_locks(location, old.shard_names), advice=advice)
        for name in location.names():  # zarr.json last: an interrupted delete is still a store
            if name not in (lock.FOLDER, "zarr.json"):
                location.remove(name)
        location.remove("zarr.json")
        _create(location, header)


def part_counts(root, shard: str) -> dict | None:
    """The `complete` record of `shard`'s part, or None when it is absent or unfinished."""
    path = f"{schema.PARTS}/{schema.part_name(shard)}"
    try:
        group = root[path]
        counts = group.attrs.get(schema.PART_COMPLETE)
    except (KeyError, FileNotFoundError, ValueError):
        return None
    return counts if isinstance(counts, dict) else None
