"""`TokenStore`: read a finished token store in training loops.

    store = TokenStore("tokens.zarr", format="torch")
    len(store)                      # N rows
    store[7]                        # one row: {"row", "indices" [G], "geometry" [G, 5], "labels"}
    TokenStore(path, fields=("indices", "geometry", "captions", "meta/url"))  # text on request
    store[100:356]                  # a batch: {"row" [B], "indices" [B, G], ...}
    store[np.array([5, 1, 9])]      # a batch in the order asked (one Zarr read for all rows)
    store.get("shard-0001.tar/000042"), store.index("shard-0001.tar/000042")
    for batch in store.batches(256, shuffle=True, seed=0, epoch=e): ...
    store.sequences(rows), store.vocabulary, store.from_sequences(ids)   # token streams

Batches come as numpy (`format="numpy"`, stored dtypes: uint16, float16/32, int32) or torch
(`format="torch"`: indices and labels int64, geometry float32). Reading a batch is one read
per array: the rows are sorted and de-duplicated, each touched inner chunk is decompressed
once, and the rows are put back in the order asked. On a local disk the numeric arrays are
read by `RowReader` (the sharding format read directly: ~20x faster random batches than
zarr-python's per-chunk path); keys and remote stores go through one zarr orthogonal
selection.

It is a `torch.utils.data.Dataset` and pickles without open handles (spawn workers reopen
it). With a DataLoader, either let it fetch whole batches (`__getitems__`, used by
`DataLoader(store, batch_size=B)`; `collate_fn=collate` gives the torch format's int64 ids
and float32 geometry from a numpy-format store too) or pass index lists yourself:
`DataLoader(store, batch_size=None, sampler=BatchSampler(RandomSampler(store), B, False))`.
`in_memory=True` reads every array once at open (indices of 1.28M images x 256 tokens are
655 MB) for the fastest random access.

A store that `gtok encode --append` extends while it is open keeps reading: its rows stay
as they were, and on a local disk each read first looks (one `stat` of the root
`zarr.json`, which every header change replaces) whether the header changed; once the
append is finished, the store reloads and the new rows are there (`len` grows). A store
replaced in any other way (`--overwrite`, another store at the path) is refused with one
sentence instead of read. A remote store reads its old rows and sees new ones when opened
again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gtok.errors import GtokError
from gtok.store import schema
from gtok.store.damage import blocks, read_block, read_errors, row_damage
from gtok.store.location import Location
from gtok.store.opening import get_array, open_root, read_header
from gtok.store.rowread import RowReader
from gtok.store.sequences import Vocabulary
from gtok.store.validate import CheckedStore, open_checked

if TYPE_CHECKING:
    from gtok.store.geometry_codebook import GeometryCodebook

__all__ = ["TokenStore", "collate"]

_FORMATS = ("numpy", "torch")


class TokenStore(Dataset):
    """A finished gtok token store (see `gtok.store.schema` for the layout)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        format: str = "numpy",
        fields: Sequence[str] | None = None,
        in_memory: bool = False,
    ) -> None:
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
        self.path = os.fspath(path)
        self.format = format
        self.in_memory = in_memory
        self._location = Location(self.path)
        self._stamp = _header_stamp(self._location)  # first: a change after it is seen
        self._load(open_checked(self._location))
        self.fields = tuple(self._available if fields is None else fields)
        known = [*self._available, *self._optional, schema.KEYS, *self.text_fields]
        for name in self.fields:
            if name not in known:
                raise ValueError(f"{name!r} is not an array of this store ({known})")

    def _load(self, checked: CheckedStore) -> None:
        """Take the header, arrays and rows of the checked store (at open, and when an
        append has finished since); a `GtokError` when it is unfinished."""
        if checked.rows is None:
            raise GtokError(
                f"{self._location} is not finished (state: {checked.attrs['state']}); rerun "
                "the encode command to resume it, or run `gtok encode --finalize -o "
                f"{self.path}` once all parallel workers are done."
            )
        root, self.header, self.attrs = checked.root, checked.header, checked.attrs
        self._available = tuple(
            n for n in (schema.INDICES, schema.GEOMETRY, schema.LABELS) if n in root
        )
        self.text_fields = tuple(
            s.name
            for s in schema.text_arrays(
                captions=self.attrs["counts"].get(schema.CAPTIONED, 0) > 0,
                metadata_fields=self.header.metadata_fields,
            )
        )
        # read on request (`fields`, `sequences`), not by default: readers that predate an
        # optional array see the batches they always saw
        optional = (schema.GEOMETRY_CODES, schema.GEOMETRY_IDS)
        self._optional = tuple(n for n in optional if n in root)
        self._codebook: GeometryCodebook | None = None  # `geometry_codebook`, read on first use
        self._length = checked.rows
        self._arrays: dict[str, Any] | None = None
        self._key_index: dict[str, int] | None = None

    def _follow_changes(self) -> None:
        """Reload the store when an append to it has finished since it was loaded; keep
        reading its rows while one is under way; refuse a store replaced otherwise (see the
        module doc). Local stores only: one `stat` when nothing changed."""
        stamp = _header_stamp(self._location)
        if stamp == self._stamp:
            return
        header, attrs = read_header(open_root(self._location))
        complete = attrs["state"] == schema.STATE_COMPLETE
        same = header == self.header
        if (same and not complete) or not (same or _grown(self.header, self._length, header)):
            raise GtokError(
                f"{self.path} changed while it was open: it is no longer the store of "
                f"{self._length} rows this reader opened (overwritten or replaced); open it "
                "again."
            )
        if complete:
            self._load(open_checked(self._location))
        self._stamp = stamp

    # -- what the store holds ----------------------------------------------------------------

    @property
    def counts(self) -> dict:
        """samples, encoded, skipped, damaged_shards, labeled, upscaled, shards."""
        return dict(self.attrs["counts"])

    @property
    def num_tokens(self) -> int:
        return self.header.num_tokens

    @property
    def codebook_size(self) -> int:
        return self.header.codebook_size

    @property
    def model_config(self) -> dict:
        return dict(self.header.model_config)

    @property
    def weights_sha256(self) -> str:
        return self.header.weights_sha256

    @property
    def model_path(self) -> str | None:
        """The model directory the store was encoded with (absolute, as it was then)."""
        return self.header.model_path

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """The `.json` fields the store keeps as `meta/<field>` arrays."""
        return self.header.metadata_fields

    @property
    def has_captions(self) -> bool:
        """Whether the store has a `captions` array (some sample had a `.txt`)."""
        return schema.CAPTIONS in self.text_fields

    @property
    def preprocessing(self) -> dict:
        return dict(self.header.preprocessing)

    @property
    def geometry_binning(self):
        """The `GeometryBinning` of `geometry_codes` (--geometry-bits), or None."""
        from gtok.store.geometry_bins import GeometryBinning

        bins = self.header.geometry_bins
        return None if bins is None else GeometryBinning.from_attrs(bins)

    @property
    def layout(self) -> str:
        """The token layout (`gtok.store.layouts`): "fields", "raster" or "codebook"."""
        return self.header.layout

    @property
    def geometry_codebook(self) -> GeometryCodebook | None:
        """The `GeometryCodebook` of `geometry_ids` (--layout codebook), or None; a
        `GtokError` when the file the header names is gone or not the one encoded with."""
        from gtok.store.geometry_codebook import file_sha256, load_codebook

        record = self.header.geometry_codebook
        if record is None or self._codebook is not None:
            return self._codebook
        path = record["path"]
        if not os.path.isfile(path) or file_sha256(path) != record["sha256"]:
            state = "is missing" if not os.path.isfile(path) else "is not that file any more"
            raise GtokError(
                f"{self.path} was encoded with the geometry codebook {path} (sha256 "
                f"{record['sha256'][:12]}...), which {state}; restore that file, or encode "
                "the store again."
            )
        self._codebook = load_codebook(path)
        return self._codebook

    @property
    def vocabulary(self) -> Vocabulary:
        """The id layout of `sequences` (`gtok.store.sequences`): code ids at offset 0, then
        each geometry field's bins, or the geometry ids of the codebook layout; code ids
        only for a VQ store."""
        record = self.header.geometry_codebook
        if record is not None:
            return Vocabulary(self.codebook_size, None, int(record["size"]))
        binning = self.geometry_binning
        if self.header.has_geometry and binning is None:
            raise GtokError(
                f"{self.path} stores its geometry as floats only, so it has no token stream; "
                "encode it again with --geometry-bits (e.g. 8)."
            )
        return Vocabulary(self.codebook_size, None if binning is None else binning.bins)

    @property
    def refinement(self) -> dict | None:
        """The encode-time geometry refinement of the tokens (`RefineSettings.to_dict()`), or
        None: the model's own tokens."""
        return None if self.header.refinement is None else dict(self.header.refinement)

    def __len__(self) -> int:
        self._follow_changes()
        return self._length

    def __repr__(self) -> str:
        return f"TokenStore({self.path!r}, rows={self._length}, fields={self.fields})"

    # -- pickling: no open handles -----------------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None if not self.in_memory else state["_arrays"]
        state["_key_index"] = None
        return state

    def _open(self) -> dict[str, Any]:
        """name -> what reads it: a `RowReader` (local numeric arrays), a zarr array (keys,
        remote stores), or a numpy array (`in_memory`)."""
        if self._arrays is None:
            root = open_root(self._location)
            arrays: dict[str, Any] = {}
            for name in {*self.fields, *self._optional, schema.KEYS}:
                array = get_array(root, name, self.path)
                fast = None
                if self._location.is_local and name not in self._strings:
                    fast = RowReader.open(self._location.path / name, array)
                arrays[name] = fast or array
            if self.in_memory:
                everything = np.arange(self._length)
                with read_errors(self.path, f"the {self._length} rows of {sorted(arrays)}"):
                    arrays = {
                        n: a.take(everything) if isinstance(a, RowReader) else a[...]
                        for n, a in arrays.items()
                    }
            self._arrays = arrays
        return self._arrays

    # -- reading -----------------------------------------------------------------------------

    def _rows(self, selection) -> tuple[np.ndarray | slice, bool]:
        """(what to read, is_single_row) for an int, slice, or index array/list/tensor."""
        if isinstance(selection, (int, np.integer)):
            row = int(selection) + (self._length if selection < 0 else 0)
            if not 0 <= row < self._length:
                raise IndexError(f"row {selection} is out of range for {self._length} rows")
            return slice(row, row + 1), True
        if isinstance(selection, slice):
            start, stop, step = selection.indices(self._length)
            if step == 1:
                return slice(start, max(start, stop)), False
            return np.arange(start, stop, step), False
        if isinstance(selection, torch.Tensor):
            selection = selection.cpu().numpy()
        rows = np.asarray(selection)
        if rows.dtype == bool:
            if rows.shape != (self._length,):
                raise IndexError(f"boolean mask of shape {rows.shape} for {self._length} rows")
            return np.flatnonzero(rows), False
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise IndexError(f"index with an int, a slice or a 1-D integer array, not {rows!r}")
        rows = rows.astype(np.int64)
        rows = np.where(rows < 0, rows + self._length, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self._length):
            raise IndexError(f"row index out of range for {self._length} rows")
        return rows, False

    def _read(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows `rows` of array `name`; a `GtokError` naming them when they cannot be read."""
        if isinstance(rows, slice):
            what = f"{name} rows {rows.start}-{rows.stop - 1}"
        else:
            what = f"{name} rows {_row_list(rows)}"
        with read_errors(self.path, what):
            return self._read_unchecked(name, rows)

    def _read_unchecked(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        array = self._open()[name]
        if isinstance(array, np.ndarray):  # in memory
            return array[rows]
        if isinstance(array, RowReader):
            if isinstance(rows, slice):
                return array.take(np.arange(rows.start, rows.stop))
            unique, inverse = np.unique(rows, return_inverse=True)
            return array.take(unique)[inverse]
        if isinstance(rows, slice):
            return array[rows]
        if rows.size == 0:
            return np.empty((0, *array.shape[1:]), dtype=array.dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        if unique[-1] - unique[0] + 1 == unique.size:  # contiguous: a plain slice is cheaper
            block = array[int(unique[0]) : int(unique[-1]) + 1]
        else:
            block = array.get_orthogonal_selection((unique,))
        return block[inverse]

    def batch(self, selection) -> dict[str, Any]:
        """Rows `selection` (int, slice or index array) as one dict of batched arrays."""
        self._follow_changes()
        rows, _ = self._rows(selection)
        return self._batch(rows)

    def _batch(self, rows: np.ndarray | slice) -> dict[str, Any]:
        out: dict[str, Any] = {
            "row": np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
        }
        for name in self.fields:
            out[name] = self._read(name, rows)
        self._refuse_damage(out)
        return self._convert(out)

    def _refuse_damage(self, batch: dict[str, Any]) -> None:
        """A `GtokError` when a row of `batch` holds no token (`damage.row_damage`)."""
        damage = row_damage(
            batch["row"],
            self.codebook_size,
            batch.get(schema.INDICES),
            batch.get(schema.GEOMETRY),
            batch.get(schema.KEYS),
        )
        if damage:
            row, what = damage[0]
            more = f" (and {len(damage) - 1} more rows of this batch)" if len(damage) > 1 else ""
            raise GtokError(
                f"{self.path} is damaged: row {row} holds {what}{more}; run `gtok verify` on "
                "it and re-encode it, or restore it from a copy."
            )

    @property
    def _strings(self) -> tuple[str, ...]:
        """The string arrays: keys, captions, meta/<field>."""
        return (schema.KEYS, *self.text_fields)

    def _convert(self, batch: dict[str, Any]) -> dict[str, Any]:
        for name in self._strings:
            if name in batch:
                batch[name] = [str(k) for k in batch[name]]
        if self.format == "numpy":
            return batch
        return {
            name: value if name in self._strings else _to_torch(name, value)
            for name, value in batch.items()
        }

    def __getitem__(self, selection) -> dict[str, Any]:
        """One row for an int (values without the batch axis), else a batch (see `batch`).

        Keys are the same either way: "row", the fields ("indices", "geometry", "labels"),
        and, when asked for in `fields`, "keys", "captions" and "meta/<field>" (lists of
        str).
        """
        self._follow_changes()
        rows, single = self._rows(selection)
        batch = self._batch(rows)
        return _row_of(batch, 0) if single else batch

    def __getitems__(self, selection: Sequence[int]) -> list[dict[str, Any]]:
        """Rows for a DataLoader fetch: one read for the whole list, then split into rows."""
        self._follow_changes()
        batch = self._batch(self._rows(np.asarray(selection, dtype=np.int64))[0])
        return [_row_of(batch, i) for i in range(len(selection))]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Batches over every row: in order, or shuffled by (seed, epoch)."""
        rows = len(self)  # as the store is now: rows appended later are not in this pass
        order = np.arange(rows)
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(rows)
        stop = rows - (rows % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            chunk = order[start : start + batch_size]
            yield self.batch(slice(start, start + len(chunk)) if not shuffle else chunk)

    # -- token streams for sequence models (`gtok.store.sequences`) ---------------------------

    def sequences(self, selection=None) -> np.ndarray | torch.Tensor:
        """Rows `selection` (int, slice, index array; None: every row) as int64 token ids
        [n, G * vocabulary.ids_per_token] (numpy or torch, as `format`)."""
        self._follow_changes()
        vocabulary = self.vocabulary
        rows, _ = self._rows(slice(None) if selection is None else selection)
        batch = {"row": np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows}
        batch[schema.INDICES] = self._read(schema.INDICES, rows)
        self._refuse_damage(batch)
        codes = None
        if vocabulary.geometry_ids is not None:
            codes = self._geometry_ids(rows, batch["row"], vocabulary.geometry_ids)
        if vocabulary.geometry_bins is not None:
            codes = self._read(schema.GEOMETRY_CODES, rows)
            if problems := self.geometry_binning.row_problems(codes):
                i, what = problems[0]
                raise GtokError(
                    f"{self.path} is damaged: row {int(batch['row'][i])} holds {what}; "
                    "re-encode it, or restore it from a copy."
                )
        ids = vocabulary.encode(batch[schema.INDICES], codes)
        return ids if self.format == "numpy" else torch.from_numpy(ids)

    def _geometry_ids(self, rows, row_numbers: np.ndarray, size: int) -> np.ndarray:
        """The geometry ids [n, G, 1] of `rows`; a `GtokError` for an id beyond the codebook,
        or when the codebook file the header names is not there (the ids mean nothing
        without it)."""
        self.geometry_codebook  # noqa: B018 (checks the file)
        ids = self._read(schema.GEOMETRY_IDS, rows)
        bad = np.flatnonzero((ids >= size).any(axis=1))
        if len(bad):
            raise GtokError(
                f"{self.path} is damaged: row {int(row_numbers[bad[0]])} holds a geometry id "
                f"beyond the {size} of its codebook; re-encode it, or restore it from a copy."
            )
        return ids[..., None]

    def from_sequences(self, ids):
        """Token ids [n, L] or [L] (numpy, torch or lists; `sequences`' layout) -> `Tokens`
        (torch int64 indices [n, G], float32 geometry [n, G, 5]: the bin centres, or None
        for a VQ store), ready for the store's model's `decode`. A ValueError names the first
        id outside its position's field, or a length other than G * ids_per_token."""
        from gtok.model.tokenizer import Tokens

        vocabulary = self.vocabulary
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids)
        ids = ids[None] if ids.ndim == 1 else ids
        length = self.num_tokens * vocabulary.ids_per_token
        if ids.ndim != 2 or ids.shape[1] != length:
            raise ValueError(f"sequences must be [n, {length}] for this store, got {ids.shape}")
        indices, codes = vocabulary.decode(ids)
        geometry = None
        if codes is not None and (codebook := self.geometry_codebook) is not None:
            geometry = torch.from_numpy(codebook.dequantize(codes[..., 0]))
        elif codes is not None:
            geometry = torch.from_numpy(self.geometry_binning.dequantize(codes))
        return Tokens(torch.from_numpy(indices), geometry)

    # -- keys and the other tables -------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every row's key "<shard file name>/<sample key>", in row order."""
        self._follow_changes()
        array = self._open()[schema.KEYS]
        if isinstance(array, np.ndarray):  # in memory
            return [str(k) for k in array]
        return [
            str(k)
            for start, stop in blocks(self._length)
            for k in read_block(self.path, schema.KEYS, array, start, stop)
        ]

    def index(self, key: str) -> int:
        """The row of `key`; a KeyError when it is not in the store."""
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.keys())}
        try:
            return self._key_index[key]
        except KeyError:
            raise KeyError(f"{key!r} is not a key of {self.path}") from None

    def get(self, key: str) -> dict[str, Any]:
        """The row of sample `key`."""
        return self[self.index(key)]

    def skipped(self) -> list[tuple[str, str, str]]:
        """(shard, key, reason) of every sample that was read but not encoded; key "" marks
        a tar that could not be read to its end."""
        columns = [self._column(schema.SKIPPED, c) for c in schema.SKIPPED_COLUMNS]
        return [(str(s), str(k), str(r)) for s, k, r in zip(*columns, strict=True)]

    def inputs(self) -> list[dict[str, Any]]:
        """Per input shard: name, url, first_row, rows, samples, skipped, problem."""
        names = tuple(schema.INPUT_COLUMNS)
        columns = {c: self._column(schema.INPUTS, c) for c in names}
        return [{c: _plain(columns[c][i]) for c in names} for i in range(len(columns["name"]))]

    def _column(self, table: str, column: str) -> list:
        """Every value of column `column` of table `table`, read a block at a time."""
        self._follow_changes()
        path = f"{table}/{column}"
        array = get_array(open_root(self._location), path, self.path)
        return [
            value
            for start, stop in blocks(int(array.shape[0]))
            for value in read_block(self.path, path, array, start, stop).tolist()
        ]


def _header_stamp(location: Location) -> tuple[int, ...] | None:
    """The identity of a local store's root `zarr.json` (inode, size, modification and
    change times in ns), which every header change replaces; None when it is gone, and for
    a remote store, whose changes are not followed."""
    if not location.is_local:
        return None
    try:
        status = (location.path / "zarr.json").stat()
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _grown(old: schema.StoreHeader, rows: int, new: schema.StoreHeader) -> bool:
    """Whether `new` is the header of the store `old` (of `rows` rows) with appends begun
    since: the same store up to the shards and append records it adds, its first new
    append starting at row `rows` after the old shards."""
    known = len(old.appends)
    added = new.appends[known:]
    return (
        bool(added)
        and new.appends[:known] == old.appends
        and added[0].get("first_row") == rows
        and added[0].get("first_shard") == len(old.shard_names)
        and new.shard_names[: len(old.shard_names)] == old.shard_names
        and replace(new, shard_names=old.shard_names, shard_urls=old.shard_urls, appends=())
        == replace(old, appends=())
    )


def _to_torch(name: str, value: Any) -> torch.Tensor:
    """A numeric field as the torch format has it: geometry float32, everything else int64."""
    dtype = np.float32 if name == schema.GEOMETRY else np.int64
    return torch.from_numpy(np.asarray(value, dtype=dtype))


def collate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A `DataLoader` `collate_fn` for `TokenStore` rows of either format: one batch dict
    as the torch format gives it ("indices" [B, G] int64, ready for `nn.Embedding`;
    "geometry" [B, G, 5] float32; "row", "labels" int64; text fields as lists of str).
    torch's default collate would keep a numpy store's uint16 ids, which `nn.Embedding`
    refuses."""
    if not rows:
        raise ValueError("collate needs at least one row")
    return {
        name: (
            [row[name] for row in rows]
            if isinstance(rows[0][name], str)
            else _to_torch(name, np.stack([np.asarray(row[name]) for row in rows]))
        )
        for name in rows[0]
    }


def _row_of(batch: dict[str, Any], i: int) -> dict[str, Any]:
    return {name: value[i] for name, value in batch.items()}


def _row_list(rows: np.ndarray) -> str:
    """Row numbers for a message: "3-42" (consecutive), "3, 7, 9" or "3, 7, 9, ... (40 rows)"."""
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return f"{rows[0]}-{rows[-1]}"
    shown = ", ".join(str(int(r)) for r in rows[:3])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > 3 else "")


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, str) else int(value)
