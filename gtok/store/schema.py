"""The token store format: every array name, dtype, fill value, chunking and attribute key.

One source of truth, imported by the writer, finalize, the reader, `gtok info` and `verify`.

A finished store (Zarr v3 group, consolidated metadata; N rows, G tokens, S input shards,
M skipped samples):

    indices   [N, G]     uint16   code ids; fill 65535 (never a valid id, see below)
    geometry  [N, G, 5]  float16  (mean_x, mean_y, scale_x, scale_y, rotation); fill NaN;
                                  float32 with --geometry-dtype float32; absent for VQ models
    geometry_codes [N, G, 5] uint8/16 the geometry's integer bins, only with --geometry-bits B
                                  (`geometry` then holds their dequantized values; the
                                  binning is the header's `geometry_bins`, see
                                  `gtok.store.geometry_bins`); fill: the dtype's maximum
    geometry_ids [N, G]  uint16   one learned geometry id per Gaussian, only with --layout
                                  codebook (`geometry` then holds the codebook's geometry;
                                  the codebook is the header's `geometry_codebook`, see
                                  `gtok.store.geometry_codebook`); fill 65535
    keys      [N]        string   "<shard file name>/<sample key>"; fill ""
    labels    [N]        int32    the `.cls` label, -1 when a sample has none; fill -1;
                                  only when at least one encoded sample had a label
    skipped/shard, skipped/key, skipped/reason   [M] string  one row per skipped sample, in
                                  input order; key "" = the tar itself was damaged
    inputs/name, inputs/url       [S] string   the input shards, sorted by name
    inputs/first_row, inputs/rows, inputs/samples, inputs/skipped   [S] int64
    inputs/problem                [S] string   "" or why the tar could not be read to its end
    inputs/bytes                  [S] int64    the shard file's size when encoded; -1: not
                                  recorded (a shard of a store from before gtok recorded it)
    inputs/fingerprint            [S] string   its `gtok.data.shards.shard_fingerprint`
                                  digest, "" when not recorded; both columns are absent in
                                  stores written before gtok recorded them
    captions  [N]        string   the `.txt` member (UTF-8), "" when a sample has none; fill "";
                                  only when at least one encoded sample had one
    meta/<field>  [N]    string   field <field> of the sample's `.json` (strings as they are,
                                  other values as JSON text, "" when absent); one array per
                                  field of the header's `metadata_fields` (--metadata-fields)

Every array names its dimensions (Zarr v3 `dimension_names`, which xarray needs): `row` (N),
`token` (G) and `param` (the 5 geometry values) for the row arrays, `skipped` (M) and `input`
(S) for the two tables. Older stores name none; readers do not require them.

Row arrays are stored as Zarr shards of `SHARD_ROWS` rows (one file each) holding inner
chunks of `CHUNK_ROWS` rows, compressed with zstd. Root attribute `gtok` holds the header
(`ATTR_*` keys below); `state` is "encoding" until finalize has written every array, and
readers refuse a store that is not "complete". Rows are the encoded samples in input order
(shards by name, samples in tar order): no padding, no duplicates. `gtok encode --append`
adds shards later: their rows follow the existing ones (shards by name, samples in tar order),
the header's shard list keeps row order, and `appends` records each append (see
`gtok.store.append`).

While encoding, each input shard's rows live in `parts/<part name>/` (same arrays, one
chunk each, written by exactly one process), completed by the part's `complete` attribute,
which is written only after its arrays are on disk. That one process holds the part's lock
file `locks/<part name>.lock` (JSON: pid, host, since when; see `gtok.store.lock`) while it
works; `locks/_store.lock` is held while a process creates, overwrites or finalizes the
store. Finalize takes every lock, concatenates the parts into the root arrays and deletes
`parts/`; a finished store has neither `parts/` nor `locks/`.
A part's `source` attribute records the size and fingerprint of the shard file it was read
from (absent in parts written before gtok recorded them), which `inputs/` keeps.

Unwritten rows never read as tokens: the fill values (65535, NaN, "", -1) are not values a
model produces, and `state` stays "encoding" until every row is written.

Readers trust nothing of this on disk: `gtok.store.opening` checks the header and
`gtok.store.validate` every array's dtype, shape, chunking and codecs against the specs
here before any data is read, `zstdguard` bounds what a chunk may decompress to, and
`damage.row_damage` refuses rows holding fill values or ids outside the codebook.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from gtok.data.tario import MAX_TEXT_BYTES
from gtok.store.geometry_bins import code_dtype

__all__ = [
    "ATTR_ROOT",
    "CHUNK_ROWS",
    "COUNT_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "GEOMETRY_DTYPES",
    "INDEX_FILL",
    "INPUT_COLUMNS",
    "INPUT_IDENTITY_COLUMNS",
    "MAX_NUM_TOKENS",
    "MAX_STRING_BYTES",
    "SHARD_ROWS",
    "SKIPPED_COLUMNS",
    "TABLE_DIMS",
    "ArraySpec",
    "StoreHeader",
    "compressors",
    "data_type_name",
    "is_field_name",
    "meta_path",
    "part_name",
    "row_arrays",
    "text_arrays",
]

FORMAT = "gtok-token-store"
FORMAT_VERSION = 1
ATTR_ROOT = "gtok"  # root attribute holding the header dict

# root arrays
INDICES, GEOMETRY, KEYS, LABELS = "indices", "geometry", "keys", "labels"
CAPTIONS, META = "captions", "meta"  # optional text arrays: captions, meta/<field>
GEOMETRY_CODES = "geometry_codes"  # optional: integer geometry bins (--geometry-bits)
GEOMETRY_IDS = "geometry_ids"  # optional: learned geometry ids (--layout codebook)
SKIPPED = "skipped"  # group: shard, key, reason
INPUTS = "inputs"  # group: name, url, first_row, rows, samples, skipped, problem
PARTS = "parts"  # group of per-input-shard parts while encoding
# extra arrays of a part
PART_SKIPPED_KEYS, PART_SKIPPED_REASONS = "skipped_keys", "skipped_reasons"
PART_COMPLETE = "complete"  # part attribute, written last

STATE_ENCODING, STATE_COMPLETE = "encoding", "complete"

INDEX_DTYPE = np.dtype("uint16")
INDEX_FILL = int(np.iinfo(INDEX_DTYPE).max)  # 65535: codebooks may use ids 0..65534
GEOMETRY_DTYPES = ("float16", "float32")
LABEL_DTYPE = np.dtype("int32")
LABEL_FILL = -1
COUNT_DTYPE = np.dtype("int64")

SHARD_ROWS = 16384  # rows per Zarr shard (one file): 1.28M rows -> 79 files per array
CHUNK_ROWS = 32  # rows per inner chunk: the unit a random read decompresses
ZSTD_LEVEL = 3

# what readers accept before they read any data (`gtok.store.opening`)
MAX_NUM_TOKENS = 1 << 16  # G: tokens per image
MIN_CODEBOOK_SIZE = 2  # codebook sizes 2..INDEX_FILL
# mean UTF-8 bytes per string a compressed string chunk may inflate to: the longest text a row holds
MAX_STRING_BYTES = MAX_TEXT_BYTES

# dimension names (Zarr v3 `dimension_names`): rows N, tokens G, the 5 geometry parameters
ROW_DIM, TOKEN_DIM, PARAM_DIM = "row", "token", "param"
TABLE_DIMS = {SKIPPED: "skipped", INPUTS: "input"}  # each table's one dimension: M, S

# the tables (1-D, one unsharded Zarr chunk per at most SHARD_ROWS rows, zstd), header counts
SKIPPED_COLUMNS: dict[str, Any] = {"shard": str, "key": str, "reason": str}
INPUT_COLUMNS: dict[str, Any] = {
    "name": str,
    "url": str,
    "first_row": COUNT_DTYPE,
    "rows": COUNT_DTYPE,
    "samples": COUNT_DTYPE,
    "skipped": COUNT_DTYPE,
    "problem": str,
}
# optional inputs columns (`gtok.store.identity`): both or neither; -1 and "": not recorded
INPUT_IDENTITY_COLUMNS: dict[str, Any] = {"bytes": COUNT_DTYPE, "fingerprint": str}
PART_SOURCE = "source"  # part attribute: {"bytes", "fingerprint"} of the shard file read
COUNT_KEYS = ("shards", "samples", "encoded", "skipped", "damaged_shards", "labeled", "upscaled")
CAPTIONED = "captioned"  # optional count (stores before captions lack it): rows with a `.txt`


@dataclass(frozen=True)
class ArraySpec:
    """One row array: name, dtype, per-row shape, fill value, and a name for each per-row
    dimension (one per entry of `row_shape`: a 1-D array [N] needs none)."""

    name: str
    dtype: Any  # numpy dtype, or str for variable-length UTF-8 strings
    row_shape: tuple[int, ...]
    fill: Any
    row_dims: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.row_dims) != len(self.row_shape):
            raise ValueError(
                f"{self.name}: row_dims {self.row_dims} must name each dimension of "
                f"row_shape {self.row_shape}"
            )

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The array's Zarr `dimension_names`: `row`, then the per-row dimensions."""
        return (ROW_DIM, *self.row_dims)


def row_arrays(
    num_tokens: int,
    *,
    has_geometry: bool,
    geometry_dtype: str,
    has_labels: bool,
    geometry_bits: int | None = None,
    geometry_ids: bool = False,
) -> list[ArraySpec]:
    """The per-row arrays of a store (and of each part), in a fixed order."""
    specs = [ArraySpec(INDICES, INDEX_DTYPE, (num_tokens,), INDEX_FILL, (TOKEN_DIM,))]
    if has_geometry:
        dtype, dims = np.dtype(geometry_dtype), (TOKEN_DIM, PARAM_DIM)
        specs.append(ArraySpec(GEOMETRY, dtype, (num_tokens, 5), np.nan, dims))
    if has_geometry and geometry_bits is not None:
        dtype, dims = code_dtype(geometry_bits), (TOKEN_DIM, PARAM_DIM)
        fill = int(np.iinfo(dtype).max)
        specs.append(ArraySpec(GEOMETRY_CODES, dtype, (num_tokens, 5), fill, dims))
    if has_geometry and geometry_ids:
        specs.append(ArraySpec(GEOMETRY_IDS, INDEX_DTYPE, (num_tokens,), INDEX_FILL, (TOKEN_DIM,)))
    specs.append(ArraySpec(KEYS, str, (), ""))
    if has_labels:
        specs.append(ArraySpec(LABELS, LABEL_DTYPE, (), LABEL_FILL))
    return specs


def meta_path(field: str) -> str:
    """The array of metadata field `field`: `meta/<field>`."""
    return f"{META}/{field}"


def text_arrays(*, captions: bool, metadata_fields: tuple[str, ...]) -> list[ArraySpec]:
    """The optional per-row text arrays: `captions` (when asked) and `meta/<field>` for each
    metadata field, all [N] strings with fill ""."""
    specs = [ArraySpec(CAPTIONS, str, (), "")] if captions else []
    return specs + [ArraySpec(meta_path(f), str, (), "") for f in metadata_fields]


def is_field_name(name: str) -> bool:
    """Whether `name` can be a metadata field (it names a Zarr array `meta/<name>`)."""
    return bool(_SAFE.match(name)) and len(name) <= 200


def data_type_name(dtype: Any) -> str:
    """The Zarr v3 `data_type` of a spec's dtype: "string" for `str`, else the numpy name."""
    return "string" if dtype is str else np.dtype(dtype).name


def compressors():
    """The compressor chain of every array: zstd."""
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=ZSTD_LEVEL),)


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def part_name(shard_name: str) -> str:
    """The node name of an input shard's part: the file name when it is a safe Zarr node
    name, else a readable prefix plus a hash (unique either way)."""
    if _SAFE.match(shard_name) and len(shard_name) <= 200:
        return shard_name
    digest = hashlib.sha256(shard_name.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", shard_name)[:64].lstrip("._-")
    return f"{stem or 'shard'}-{digest}"


@dataclass(frozen=True)
class StoreHeader:
    """What a store is: model, preprocessing, output dtype and its input shards.

    Written when the store is created, checked by every later writer (a different model,
    preprocessing, geometry refinement, geometry dtype or shard list is refused), completed
    by finalize with the counts.
    """

    model_config: dict  # the model's TokenizerConfig.to_dict()
    weights_sha256: str  # of its model.safetensors
    num_tokens: int  # G
    codebook_size: int
    has_geometry: bool
    preprocessing: dict  # Preprocess.to_dict()
    geometry_dtype: str
    shard_names: tuple[str, ...]  # the plan: every input shard, in row order (sorted by name;
    # shards added by `--append` follow, each append's sorted by name)
    shard_urls: tuple[str, ...]  # where they were read from when the store was created
    model_path: str | None = None  # absolute model directory at creation (decode finds it)
    # How the tokens were computed, e.g. {"tf32": {"cudnn": False, "matmul": False},
    # "precision": "fp32", "batch_size": 64}; optional (None in stores written before gtok
    # recorded it); "precision" (missing: fp32) and "batch_size" (images per model forward;
    # missing in stores written before gtok recorded it: not compared) are compared on
    # resume and --append.
    numerics: dict | None = None
    # Encode-time geometry refinement (`gtok.model.refine.RefineSettings.to_dict()`), None
    # when the tokens are the model's own (and in stores written before gtok could refine);
    # compared on resume like the preprocessing.
    refinement: dict | None = None
    # `.json` fields copied into `meta/<field>` (--metadata-fields); compared on resume
    metadata_fields: tuple[str, ...] = ()
    # one record per `gtok encode --append` (`gtok.store.append`); not compared on resume
    appends: tuple[dict, ...] = ()
    # `GeometryBinning.to_attrs()` with --geometry-bits, else None (float geometry only)
    geometry_bins: dict | None = None
    # the token layout (`gtok.store.layouts`: "fields", "raster" or "codebook"; stores
    # written before layouts have none: "fields"), and with "codebook" the codebook's
    # `GeometryCodebook.to_attrs` record (path, sha256, size)
    layout: str = "fields"
    geometry_codebook: dict | None = None

    @property
    def geometry_bits(self) -> int | None:
        """B of --geometry-bits, or None when the store has no `geometry_codes`."""
        return None if self.geometry_bins is None else int(self.geometry_bins["bits"])

    def row_arrays(self, *, has_labels: bool) -> list[ArraySpec]:
        """This store's row arrays (`row_arrays` with the header's settings)."""
        return row_arrays(
            self.num_tokens,
            has_geometry=self.has_geometry,
            geometry_dtype=self.geometry_dtype,
            has_labels=has_labels,
            geometry_bits=self.geometry_bits,
            geometry_ids=self.geometry_codebook is not None,
        )

    def __post_init__(self) -> None:
        if self.geometry_dtype not in GEOMETRY_DTYPES:
            raise ValueError(f"geometry_dtype must be one of {GEOMETRY_DTYPES}")
        if len(self.shard_names) != len(self.shard_urls):
            raise ValueError("shard_names and shard_urls differ in length")

    def to_attrs(self, *, state: str, gtok_version: str, counts: dict | None = None) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "state": state,
            "gtok_version": gtok_version,
            "model": {
                "config": self.model_config,
                "weights_sha256": self.weights_sha256,
                "path": self.model_path,
                "num_tokens": self.num_tokens,
                "codebook_size": self.codebook_size,
                "has_geometry": self.has_geometry,
            },
            "preprocessing": self.preprocessing,
            "geometry_dtype": self.geometry_dtype if self.has_geometry else None,
            "inputs": {"names": list(self.shard_names), "urls": list(self.shard_urls)},
            "counts": counts,
            "numerics": self.numerics,
            "refinement": self.refinement,
            "metadata_fields": list(self.metadata_fields),
            "appends": [dict(a) for a in self.appends],
            **({"geometry_bins": self.geometry_bins} if self.geometry_bins is not None else {}),
            **({"layout": {"name": self.layout}} if self.layout != "fields" else {}),
            **(
                {"geometry_codebook": self.geometry_codebook}
                if self.geometry_codebook is not None
                else {}
            ),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> StoreHeader:
        model, inputs = attrs["model"], attrs["inputs"]
        return cls(
            model_config=model["config"],
            weights_sha256=model["weights_sha256"],
            num_tokens=int(model["num_tokens"]),
            codebook_size=int(model["codebook_size"]),
            has_geometry=bool(model["has_geometry"]),
            preprocessing=attrs["preprocessing"],
            geometry_dtype=attrs["geometry_dtype"] or "float16",
            shard_names=tuple(inputs["names"]),
            shard_urls=tuple(inputs["urls"]),
            model_path=model.get("path"),
            numerics=attrs.get("numerics"),
            refinement=attrs.get("refinement"),
            metadata_fields=tuple(attrs.get("metadata_fields") or ()),
            appends=tuple(attrs.get("appends") or ()),
            geometry_bins=attrs.get("geometry_bins"),
            layout=(attrs.get("layout") or {}).get("name", "fields"),
            geometry_codebook=attrs.get("geometry_codebook"),
        )
