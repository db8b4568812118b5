"""`gtok.store.write`: tokens made elsewhere (`tok.encode` in a `datasets.map`, Ray Data's
`map_batches`, ...) into a token store that `TokenStore`, `gtok info`, `verify` and `decode`
read like one `gtok encode` wrote.

Each call writes its rows as one part of the store (an input "shard" named `rows-<n>`,
n = the store's shard count before, its url `IN_MEMORY`) with the store writer, then
finalizes; with `append=True` the rows follow the store's rows (`gtok.store.append`), and a
store of another model, token count, geometry dtype or metadata fields is refused.
The header records the model's directory and weights as `gtok encode` does, and gtok's
preprocessing for the model (`gtok.data.Preprocess`) unless the caller gives its own;
`numerics` stays unrecorded (gtok did not compute the tokens).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gtok.data import Preprocess
from gtok.data.shards import ShardRef
from gtok.errors import GtokError
from gtok.store import schema
from gtok.store.append import begin_append
from gtok.store.finalize import finalize_store
from gtok.store.header import model_header
from gtok.store.location import Location
from gtok.store.opening import open_root, read_header
from gtok.store.writer import Part, StoreWriter

__all__ = ["IN_MEMORY", "write"]

IN_MEMORY = "(in memory: gtok.store.write)"  # the inputs table's url of a written part


def _array(values, name: str) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (on the host)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu() if values.is_floating_point() else values.cpu()
        values = values.numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise GtokError(f"{name} is not a numeric array; pass the Tokens that tok.encode returned.")
    return array


def _indices(tokens, config) -> np.ndarray:
    """tokens.indices [N, G] -> uint16, checked against the model's G and codebook."""
    indices = _array(tokens.indices, "tokens.indices")
    if indices.ndim != 2 or indices.shape[1] != config.num_tokens:
        raise GtokError(
            f"tokens.indices has shape {indices.shape} but the model makes "
            f"{config.num_tokens} tokens per image; pass [N, {config.num_tokens}] ids of it."
        )
    if not np.issubdtype(indices.dtype, np.integer):
        raise GtokError(f"tokens.indices holds {indices.dtype} values; pass integer code ids.")
    if indices.size and (indices.min() < 0 or indices.max() >= config.codebook_size):
        raise GtokError(
            f"tokens.indices holds ids outside 0..{config.codebook_size - 1}, the model's "
            "codebook; pass the ids this model made."
        )
    return indices.astype(schema.INDEX_DTYPE)


def _geometry(tokens, config, rows: int, dtype: str) -> np.ndarray | None:
    """tokens.geometry [N, G, 5] in the store's dtype (None for a VQ model), all finite."""
    geometry = getattr(tokens, "geometry", None)
    if config.kind != "gaussian":
        if geometry is not None:
            raise GtokError("tokens.geometry is given but the model is a VQ model without it.")
        return None
    if geometry is None:
        raise GtokError("tokens.geometry is None but the model's tokens have geometry.")
    geometry = _array(geometry, "tokens.geometry")
    if geometry.shape != (rows, config.num_tokens, 5):
        raise GtokError(
            f"tokens.geometry has shape {geometry.shape}; pass [N, G, 5] = "
            f"[{rows}, {config.num_tokens}, 5] like tokens.indices."
        )
    stored = geometry.astype(dtype)
    if not np.isfinite(stored).all():
        raise GtokError(
            f"tokens.geometry holds NaN or infinite values (in {dtype}); drop those rows."
        )
    return stored


def _texts(values: Sequence | None, rows: int, name: str) -> list:
    values = [] if values is None else list(values)
    if len(values) != rows:
        raise GtokError(f"{name} has {len(values)} entries for {rows} rows; give one per row.")
    return values


def _keys(keys: Sequence[str], rows: int) -> list[str]:
    keys = _texts(keys, rows, "keys")
    if not all(isinstance(k, str) and k for k in keys):
        raise GtokError("keys must be non-empty strings, one per row.")
    if len(set(keys)) != len(keys):
        raise GtokError("keys holds a key twice; give each row its own key.")
    return keys


def _metadata(metadata: Mapping[str, Sequence[str]] | None, rows: int) -> dict[str, list[str]]:
    meta = {}
    for field, values in (metadata or {}).items():
        if not schema.is_field_name(field):
            raise GtokError(
                f"metadata field {field!r} cannot name an array; use letters, digits, '.', "
                "'_' and '-', starting with a letter or digit."
            )
        meta[field] = [str(v) for v in _texts(values, rows, f"metadata[{field!r}]")]
    return meta


def _shard(out: str, append: bool) -> ShardRef:
    """The input shard these rows are recorded as: the next one of the store at `out`."""
    location = Location(out)
    if not location.has("zarr.json"):
        return ShardRef("rows-000000", IN_MEMORY)
    if not append:
        raise GtokError(
            f"{out} already holds a token store; pass append=True to add these rows, or "
            "write to a new path."
        )
    header, _ = read_header(open_root(location))
    return ShardRef(f"rows-{len(header.shard_names):06d}", IN_MEMORY)


def write(
    path: str | os.PathLike,
    tokens,
    *,
    keys: Sequence[str],
    model: str | os.PathLike,
    captions: Sequence[str | None] | None = None,
    metadata: Mapping[str, Sequence[str]] | None = None,
    append: bool = False,
    geometry_dtype: str = "float16",
    preprocess: Preprocess | None = None,
) -> dict:
    """Write `tokens` of `model` as the rows of the token store at `path`; returns its counts.

    tokens: what `tok.encode(images)` returns (`gtok.Tokens`) or anything with `indices`
        [N, G] integer code ids and `geometry` [N, G, 5] (None for a VQ model), torch or
        numpy. keys: N unique non-empty strings (`TokenStore.index` finds rows by them).
    model: the model directory (or training run directory) whose tokens these are, or
        "default" (the model shipped with gtok); its config and the sha256 of its weights
        are recorded, as `gtok encode` records them.
    captions: N strings (None: a row without one), or None; metadata: field name -> N
        strings (kept as `meta/<field>`; every write to one store gives the same fields).
    append: add the rows after those of the existing store at `path` (or create it); else a
        store already at `path` is refused. geometry_dtype: "float16" or "float32".
    preprocess: how the images were made model input, as recorded in the header (None:
        gtok's for the model, `Preprocess(image_size)`, which `gtok verify` re-encodes with).
    Raises `GtokError` (one sentence) for tokens that do not fit the model or the store.
    """
    from gtok.model.default import default_model_dir
    from gtok.model.io import DEFAULT_MODEL, read_config, resolve_model_dir, weights_sha256

    out = os.fspath(path)
    if geometry_dtype not in schema.GEOMETRY_DTYPES:
        raise GtokError(f"geometry_dtype must be one of {', '.join(schema.GEOMETRY_DTYPES)}.")
    shipped = os.fspath(model) == DEFAULT_MODEL  # as `gtok.load_tokenizer` names it
    model_dir = Path(default_model_dir() if shipped else resolve_model_dir(model))
    config = read_config(model_dir)
    indices = _indices(tokens, config)
    rows = len(indices)
    geometry = _geometry(tokens, config, rows, geometry_dtype)
    meta = _metadata(metadata, rows)
    text = None if captions is None else _texts(captions, rows, "captions")
    part = Part(
        shard=_shard(out, append).name,
        indices=indices,
        geometry=geometry,
        keys=_keys(keys, rows),
        labels=np.full(rows, -1, schema.LABEL_DTYPE),
        samples=rows,
        captions=text,
        meta=meta,
    )
    preprocess = preprocess or Preprocess(config.image_size)
    header = model_header(
        config,
        weights_sha256(model_dir),
        model_dir,
        preprocess.to_dict(),
        geometry_dtype=geometry_dtype,
        shards=[ShardRef(part.shard, IN_MEMORY)],
        metadata_fields=tuple(meta),
    )
    if append and (appended := begin_append(out, header, [ShardRef(part.shard, IN_MEMORY)])):
        header = appended[0]
    with StoreWriter.open(out, header) as writer:
        writer.write_part(part)
    return finalize_store(out)
