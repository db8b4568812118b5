"""What `gtok info` reports about a token store: rows, model, preprocessing, its arrays
(captions and `meta/<field>` among them), sizes on disk, code usage, skipped samples; or,
for a store still being encoded (or appended to), how far it got."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np

from gtok.store import schema
from gtok.store.append import pending_append
from gtok.store.damage import blocks, read_block
from gtok.store.location import Location
from gtok.store.opening import get_array
from gtok.store.validate import open_checked
from gtok.store.writer import part_counts

__all__ = ["code_usage", "store_info"]


def code_usage(
    indices, codebook_size: int, block_rows: int = schema.SHARD_ROWS, store: str = "the store"
) -> dict:
    """Histogram summary of code ids over all rows of `indices` ([N, G], read in blocks of
    `block_rows`; `store` names it in the error a damaged block raises).

    used: codes that occur at least once; perplexity: exp(entropy) of the code frequencies
    (codebook_size when all codes are equally frequent); top: the 5 most frequent codes and
    their share of all tokens.
    """
    counts = np.zeros(max(codebook_size, schema.INDEX_FILL + 1), np.int64)
    for start, stop in blocks(indices.shape[0], block_rows):
        block = read_block(store, schema.INDICES, indices, start, stop).ravel()
        counts += np.bincount(block, minlength=counts.size)[: counts.size]
    total = int(counts.sum())
    in_book = counts[:codebook_size]
    out_of_range = int(total - in_book.sum())
    if total == 0:
        return {"tokens": 0, "used": 0, "codebook_size": codebook_size, "usage": 0.0}
    p = in_book[in_book > 0] / total
    top = np.argsort(-in_book, kind="stable")[:5]
    return {
        "tokens": total,
        "used": int((in_book > 0).sum()),
        "codebook_size": codebook_size,
        "usage": float((in_book > 0).sum() / codebook_size),
        "perplexity": float(math.exp(-(p * np.log(p)).sum())),
        "top": [{"code": int(c), "share": float(in_book[c] / total)} for c in top if in_book[c]],
        "out_of_range": out_of_range,
    }


def _sizes(location: Location, names: list[str]) -> dict:
    out = {}
    if not location.is_local:
        total, files = location.disk_usage()
        return {"total_bytes": total, "files": files}
    for name in names:
        folder = location.path / name
        sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
        out[name] = {"bytes": sum(sizes), "files": len(sizes)}
    total, files = location.disk_usage()
    return {"arrays": out, "total_bytes": total, "files": files}


def store_info(path: str | os.PathLike, *, usage: bool = True) -> dict:
    """Everything `gtok info` shows, as one JSON-ready dict."""
    location = Location(os.fspath(path))
    checked = open_checked(location)
    root, header, attrs, store = checked.root, checked.header, checked.attrs, str(location)
    info: dict = {
        "store": str(location),
        "state": attrs["state"],
        "format_version": attrs["format_version"],
        "gtok_version": attrs["gtok_version"],
        "model": {
            "preset": header.model_config.get("preset"),
            "kind": header.model_config.get("kind"),
            "image_size": header.model_config.get("image_size"),
            "num_tokens": header.num_tokens,
            "codebook_size": header.codebook_size,
            "weights_sha256": header.weights_sha256,
        },
        "preprocessing": header.preprocessing,
        "numerics": header.numerics,
        "refinement": header.refinement,
        "geometry_dtype": attrs["geometry_dtype"],
        "geometry_bits": header.geometry_bits,
        "layout": header.layout,
        "geometry_codebook": header.geometry_codebook,
        "input_shards": len(header.shard_names),
        "metadata_fields": list(header.metadata_fields),
        "appends": len(header.appends),
    }
    if not checked.complete:
        record = pending_append(header)
        first = record["first_shard"] if record is not None else 0  # kept by an append
        done = [n for n in header.shard_names[first:] if part_counts(root, n) is not None]
        info["shards_done"] = first + len(done)
        info["next_step"] = (
            "rerun the encode command (it resumes), or when parallel workers are all done: "
            f"gtok encode --finalize -o {location}"
        )
        return info
    counts = attrs["counts"]
    rows = checked.rows
    row_names = (
        schema.INDICES,
        schema.GEOMETRY,
        schema.GEOMETRY_CODES,
        schema.GEOMETRY_IDS,
        schema.KEYS,
        schema.LABELS,
    )
    names = [n for n in row_names if n in root]
    names += [
        s.name
        for s in schema.text_arrays(
            captions=counts.get(schema.CAPTIONED, 0) > 0, metadata_fields=header.metadata_fields
        )
    ]
    arrays = {n: get_array(root, n, store) for n in names}
    sizes = _sizes(location, [*arrays, schema.SKIPPED, schema.INPUTS])
    raw = header.num_tokens * schema.INDEX_DTYPE.itemsize
    if header.has_geometry:
        raw += header.num_tokens * 5 * np.dtype(header.geometry_dtype).itemsize
    info.update(
        rows=rows,
        counts=counts,
        arrays={n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()},
        sizes=sizes,
        bytes_per_image=sizes["total_bytes"] / rows if rows else None,
        raw_token_bytes_per_image=raw,
    )
    path = f"{schema.SKIPPED}/reason"
    reason = get_array(root, path, store)
    reasons: Counter = Counter()
    for start, stop in blocks(int(reason.shape[0])):
        reasons.update(_reason_kind(r) for r in read_block(store, path, reason, start, stop))
    info["skipped_reasons"] = dict(reasons.most_common())
    if usage:
        info["code_usage"] = code_usage(arrays[schema.INDICES], header.codebook_size, store=store)
    return info


def _reason_kind(reason: str) -> str:
    """The reason up to its first parenthesis or colon: groups "truncated ... (detail)"."""
    reason = str(reason)
    for mark in (" (", ": "):
        reason = reason.split(mark, 1)[0]
    return reason
