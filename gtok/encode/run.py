"""`encode_shards`: input shards (tars, Parquet files) -> a Zarr token store, resumable and
splittable across processes.

The pipeline: `EncodeStream` decodes and crops images in DataLoader worker processes (spawn)
while the main process runs the model; every input shard's rows are collected in memory and
written as one part when its last chunk arrives, then the shard counts as done. Batches
never span two shards, so a shard's tokens do not depend on how the work was split or
resumed. They do depend slightly on the batch size, through the kernels a batch shape
selects: with the default model on one CPU thread, 256 crops of the demo photos encoded in
batches of 1 (or 4) instead of 64 came out with 1 (2) of 16,384 code ids and geometry up to
7e-6 apart (batches of 16 and 32 gave the same tokens as 64), while at one batch size the
other images of a batch make no difference. So the store records the batch size, and a
resume, another worker or an `--append` must use the same (without `--batch-size` they
take the recorded one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from rich.markup import escape

from gtok.console import console, is_quiet, progress
from gtok.data import EncodeStream, Preprocess, ShardChunk, expand_shards, loader, to_model_input
from gtok.data.images import DEFAULT_MAX_PIXELS
from gtok.data.parquetio import DEFAULT_COLUMNS, Columns
from gtok.data.shards import ShardRef, shard_fingerprint, split_for_worker
from gtok.data.stream import worker_death_as_error
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES
from gtok.data.transforms import check_resize
from gtok.devices import check_inference_precision, exact_fp32, mixed_precision, tf32_settings
from gtok.encode.layout import token_layout_for
from gtok.encode.model import EncodingModel, load_encoding_model
from gtok.encode.split import WorkerSlice, worker_slice
from gtok.errors import ArgumentError, GtokError
from gtok.model.refine import RefineSettings
from gtok.store import Location, Part, StoreHeader, StoreWriter, finalize_store, schema
from gtok.store.append import begin_append
from gtok.store.geometry_bins import MAX_BITS, MIN_BITS, GeometryBinning
from gtok.store.header import model_header
from gtok.store.identity import check_same_files
from gtok.store.layouts import FIELDS_LAYOUT, TokenLayout
from gtok.store.opening import open_root, read_header

__all__ = ["EncodeSummary", "default_workers", "encode_shards"]


def default_workers() -> int:
    """Decoding processes: all cores but one for the model's process, at most 8, at least 1."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class EncodeSummary:
    """What one `encode_shards` call did (this process) and, once final, the store's totals.

    encoded + skipped == samples_read for the shards this call encoded.
    """

    store: str
    model: str
    weights_sha256: str
    worker: dict
    shards_total: int
    shards_mine: int
    shards_already_done: int
    shards_encoded: int
    samples_read: int = 0
    encoded: int = 0
    skipped: int = 0
    damaged_shards: int = 0
    upscaled: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    finalized: bool = False
    store_counts: dict | None = None
    next_step: str | None = None
    skipped_examples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


NON_FINITE = "the model produced non-finite geometry (NaN or inf) for this image"
WORKER_DIED_NEXT_STEP = (
    "the shards finished before it are saved: rerun the same command to resume, with fewer "
    "--workers or a smaller --batch-size if memory is short"
)


class _PartBuffer:
    """Rows of one input shard collected batch by batch until its last chunk."""

    def __init__(
        self,
        shard: ShardRef,
        geometry_dtype: str,
        fields: tuple[str, ...],
        layout: TokenLayout,
    ) -> None:
        self.shard = shard
        self.geometry_dtype = geometry_dtype
        self.fields = fields
        self.layout = layout
        self.indices: list[np.ndarray] = []
        self.geometry: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.keys: list[str] = []
        self.labels: list[np.ndarray] = []
        self.captions: list[str | None] = []
        self.meta: list[tuple[str, ...]] = []
        self.skipped: list[tuple[str, str]] = []
        self.upscaled = 0

    def add(self, chunk: ShardChunk, indices: np.ndarray, geometry: np.ndarray | None) -> None:
        """The chunk's rows (geometry float32 [B, G, 5] as the model made it); a row whose
        geometry is not finite (in the stored dtype) is skipped with its reason instead.
        The layout decides what is stored (`gtok.store.layouts`): with bins or a codebook,
        the stored geometry is what they decode to."""
        ok = np.ones(len(chunk.keys), bool)
        if geometry is not None:
            ok = np.isfinite(geometry.astype(self.geometry_dtype)).all(axis=(1, 2))
            tokens = self.layout.store(indices[ok], geometry[ok])
            self.geometry.append(tokens.geometry.astype(self.geometry_dtype))
            self.codes += [] if tokens.codes is None else [tokens.codes]
            self.ids += [] if tokens.ids is None else [tokens.ids]
            indices = tokens.indices
        else:
            indices = indices[ok]
        self.indices.append(indices)
        self.labels.append(chunk.labels[ok])
        marked = list(zip(chunk.keys, ok, strict=True))
        self.keys += [f"{self.shard.name}/{k}" for k, good in marked if good]
        self.captions += [c for c, good in zip(chunk.captions, ok, strict=True) if good]
        self.meta += [m for m, good in zip(chunk.meta, ok, strict=True) if good]
        self.skipped += [(s.key, s.reason) for s in chunk.skipped]
        self.skipped += [(k, NON_FINITE) for k, good in marked if not good]
        self.upscaled += chunk.upscaled

    def finish(self, chunk: ShardChunk, num_tokens: int, has_geometry: bool) -> Part:
        empty_indices = np.zeros((0, num_tokens), schema.INDEX_DTYPE)
        geometry = codes = ids = None
        if has_geometry:
            empty = np.zeros((0, num_tokens, 5), self.geometry_dtype)
            geometry = np.concatenate([empty, *self.geometry])
        binning = self.layout.binning
        if has_geometry and binning is not None:
            codes = np.concatenate([np.zeros((0, num_tokens, 5), binning.dtype), *self.codes])
        if has_geometry and self.layout.codebook is not None:
            ids = np.concatenate([np.zeros((0, num_tokens), schema.INDEX_DTYPE), *self.ids])
        return Part(
            shard=self.shard.name,
            indices=np.concatenate([empty_indices, *self.indices]),
            geometry=geometry,
            keys=self.keys,
            labels=np.concatenate([np.zeros(0, schema.LABEL_DTYPE), *self.labels]),
            skipped=self.skipped,
            samples=chunk.end.samples,
            problem=chunk.end.problem,
            upscaled=self.upscaled,
            captions=self.captions,
            meta={f: [m[i] for m in self.meta] for i, f in enumerate(self.fields)},
            geometry_codes=codes,
            geometry_ids=ids,
            fingerprint=shard_fingerprint(self.shard.url),
        )


def _header(
    model: EncodingModel,
    preprocess: Preprocess,
    geometry_dtype: str,
    shards: list[ShardRef],
    metadata_fields: tuple[str, ...],
    precision: str,
    batch_size: int,
    layout: TokenLayout,
    codebook_record: dict | None = None,
) -> StoreHeader:
    return model_header(
        model.config,
        model.weights_sha256,
        model.path,
        preprocess.to_dict(),
        geometry_dtype=geometry_dtype,
        shards=shards,
        metadata_fields=metadata_fields,
        numerics={"tf32": tf32_settings(), "precision": precision, "batch_size": batch_size},
        geometry_bins=None if layout.binning is None else layout.binning.to_attrs(),
        layout=layout.name,
        geometry_codebook=codebook_record,
        refinement=model.refine.to_dict() if model.refine.enabled else None,
    )


@torch.inference_mode()
def _tokens(
    model: EncodingModel, images: torch.Tensor, precision: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 [B, S, S, 3] -> (uint16 indices [B, G], float32 geometry [B, G, 5] or None) on
    the host; the encoder CNN runs under `precision`'s autocast (the rest stays fp32)."""
    x = to_model_input(images.to(model.device, non_blocking=True))
    with mixed_precision(model.device, precision):
        tokens = model.encode(x)
    indices = tokens.indices.to(torch.int32).cpu().numpy().astype(schema.INDEX_DTYPE)
    if tokens.geometry is None:
        return indices, None
    return indices, tokens.geometry.float().cpu().numpy()


DEFAULT_BATCH_SIZE = 64


def _recorded(out: str | os.PathLike, overwrite: bool) -> StoreHeader | None:
    """The header of the store at `out` that this run resumes (or appends to); None for a
    new store, `--overwrite`, or a path that is not a store (opening it for writing says
    so)."""
    location = Location(str(out))
    if overwrite or not location.has("zarr.json"):
        return None
    try:
        return read_header(open_root(location))[0]
    except GtokError:
        return None


def _jpeg_draft(requested: bool | None, recorded: StoreHeader | None) -> bool:
    """`requested`, else what the store being resumed records (stores written before gtok
    had JPEG draft decoding record nothing: exact), else on (a new store)."""
    if requested is not None:
        return requested
    if recorded is None:
        return True
    return bool(recorded.preprocessing.get("jpeg_draft", False))


def _batch_size(requested: int | None, recorded: StoreHeader | None) -> int:
    """`requested`, else what the store being resumed records, else `DEFAULT_BATCH_SIZE`
    (a new store, or one written before gtok recorded it)."""
    if requested is not None:
        if requested < 1:
            raise ArgumentError(f"batch_size must be at least 1, got {requested}.", "batch_size")
        return requested
    recorded_size = (recorded.numerics or {}).get("batch_size") if recorded else None
    return DEFAULT_BATCH_SIZE if recorded_size is None else recorded_size


@exact_fp32()
def encode_shards(
    shards: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike | None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    resize: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    geometry_dtype: str = "float16",
    geometry_bits: int | None = None,
    layout: str = FIELDS_LAYOUT,
    geometry_codebook: str | os.PathLike | None = None,
    overwrite: bool = False,
    shard_id: int | None = None,
    num_shards: int | None = None,
    metadata_fields: Iterable[str] = (),
    append: bool = False,
    jpeg_draft: bool | None = None,
    precision: str = "fp32",
    refine: RefineSettings | None = None,
    shard_name: str | None = None,
    columns: Columns = DEFAULT_COLUMNS,
) -> EncodeSummary:
    """Encode every sample of `shards` into the token store `out` with `model`.

    shards: folders, .tar or .parquet files, globs, brace patterns or fsspec URLs
        (`expand_shards`).
    model: a model directory or training run directory (None: the default model, if any).
    batch_size: images per model forward; recorded in the store (tokens depend slightly on
        it), and a resume, another worker or an append must use the same; None: as the
        store being resumed records it, else `DEFAULT_BATCH_SIZE`.
    resize: shorter side before the centre crop (default: the model's image size).
    max_member_bytes: a sample with a larger tar member is skipped without reading it.
    jpeg_draft: decode large JPEGs at reduced scale first (`gtok.data.transforms`); None: as
        the store being resumed records it, on for a new store.
    precision: "fp32" or "bf16" (autocast of the encoder CNN; recorded in the store's
        numerics, and a resume must use the same).
    geometry_bits: store the geometry also as integer bins of this many bits (4..16,
        `gtok.store.geometry_bins`), `geometry` then holding their dequantized values.
    layout: the token layout (`gtok.store.layouts`): "fields" (default), "raster" (needs
        geometry_bits) or "codebook" (needs geometry_codebook: a codebook file fitted with
        `gtok fit-codebook` for this model); recorded in the store's header.
    shard_id/num_shards: encode only that slice of the input shards (default: from torchrun
        or Slurm variables, else everything); a single process finalizes the store itself,
        parallel workers leave that to `finalize_store` / `gtok encode --finalize`.
    metadata_fields: fields of each sample's `.json` (columns of a Parquet file) to keep as
        `meta/<field>` arrays (`.txt` captions are always kept, as `captions`, when the
        shards have them).
    columns: how to read Parquet files (`gtok.data.parquetio.Columns`; its `metadata` is
        `metadata_fields`).
    append: add the shards the existing store `out` lacks after its rows
        (`gtok.store.append`); the store must have been encoded with the same settings.
    refine: encode-time geometry refinement (`gtok.model.refine`), recorded in the store's
        header; a resume or another worker must use the same settings.
    shard_name: encode only the input shard of this name (`ShardRef.name`, e.g. one task of
        `gtok.encode.distributed`); like a parallel worker, it leaves finalizing to
        `finalize_store`.
    Resumes by default: shards already in the store are not encoded again (another file
    under an encoded shard's name is refused, `gtok.store.identity`). TF32 is off
    while encoding (`gtok.devices.exact_fp32`), as the store records.
    """
    started = time.perf_counter()
    fields = _metadata_fields(metadata_fields)
    refs = expand_shards(shards, replace(columns, metadata=fields))
    part_of: WorkerSlice = worker_slice(shard_id, num_shards)
    if overwrite and append:
        raise ArgumentError(
            "append adds to a store and overwrite deletes it; choose one.", "append", "overwrite"
        )
    parallel = part_of.parallel or shard_name is not None
    if overwrite and parallel:
        raise ArgumentError(
            "overwrite would delete the store under the other workers; delete it once "
            "before starting them, without overwrite.",
            "overwrite",
        )
    if shard_name is not None and shard_name not in {r.name for r in refs}:
        raise GtokError(
            f"shard_name={shard_name!r} is not one of the {len(refs)} input shards; give the "
            "name of one of them (ShardRef.name from gtok.data.expand_shards)."
        )
    if geometry_dtype not in schema.GEOMETRY_DTYPES:
        raise ArgumentError(
            f"geometry_dtype must be one of {', '.join(schema.GEOMETRY_DTYPES)}.", "geometry_dtype"
        )
    recorded = _recorded(out, overwrite)
    batch_size = _batch_size(batch_size, recorded)
    if max_member_bytes < 1:
        raise ArgumentError(
            f"max_member_bytes must be at least 1, got {max_member_bytes}.", "max_member_bytes"
        )
    check_inference_precision(precision)
    loaded = load_encoding_model(model, device, refine)
    size = loaded.config.image_size
    check_resize(resize, size, max_pixels)
    preprocess = Preprocess(
        size,
        resize,
        background=background,
        max_pixels=max_pixels,
        jpeg_draft=_jpeg_draft(jpeg_draft, recorded),
    )
    token_layout, codebook_record = token_layout_for(
        loaded, _binning(loaded, geometry_bits), layout, geometry_codebook
    )
    header = _header(
        loaded,
        preprocess,
        geometry_dtype,
        refs,
        fields,
        precision,
        batch_size,
        token_layout,
        codebook_record,
    )
    appended = begin_append(str(out), header, refs) if append else None
    if appended is not None:
        header, refs = appended
    writer = StoreWriter.open(str(out), header, overwrite=overwrite)
    mine = split_for_worker(refs, part_of.shard_id, part_of.num_shards)
    if shard_name is not None:
        mine = [r for r in mine if r.name == shard_name]
    with writer:  # releases the parts' locks however this ends
        if writer.state != schema.STATE_COMPLETE:
            writer.claim([r.name for r in mine])
        done = writer.completed([r.name for r in mine])
        check_same_files(writer.location, mine, writer.recorded_fingerprints(sorted(done)))
        todo = [r for r in mine if r.name not in done]
        summary = EncodeSummary(
            store=str(writer.location),
            model=str(loaded.path.resolve()),
            weights_sha256=loaded.weights_sha256,
            worker=asdict(part_of),
            shards_total=len(refs),
            shards_mine=len(mine),
            shards_already_done=len(done),
            shards_encoded=0,
        )
        stream = EncodeStream(todo, preprocess, batch_size, max_member_bytes, fields)
        _run(writer, loaded, stream, geometry_dtype, precision, workers, summary, token_layout)
        summary.seconds = time.perf_counter() - started
        summary.images_per_second = summary.encoded / summary.seconds if summary.seconds else 0.0
        finished_mine = summary.shards_already_done + summary.shards_encoded == len(mine)
        if not parallel and finished_mine:
            summary.store_counts = finalize_store(str(out))
            summary.finalized = True
        elif parallel:
            summary.next_step = (
                f"when every worker has finished, run: gtok encode --finalize -o {writer.location}"
            )
    return summary


def _metadata_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """The requested `.json` fields, checked: usable array names, each once."""
    fields = tuple(fields)
    for name in fields:
        if not schema.is_field_name(name):
            raise ArgumentError(
                f"metadata_fields: {name!r} cannot name an array; use fields made of "
                "letters, digits, '.', '_' and '-' that start with a letter or digit.",
                "metadata_fields",
            )
    if len(set(fields)) != len(fields):
        raise ArgumentError(
            "metadata_fields names a field twice; give each once.", "metadata_fields"
        )
    return fields


def _binning(model: EncodingModel, bits: int | None) -> GeometryBinning | None:
    """The geometry binning of `bits` (`geometry_bits`) for `model`, or None without it."""
    if bits is None:
        return None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ArgumentError(
            f"geometry_bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}.", "geometry_bits"
        )
    if model.config.kind != "gaussian":
        raise ArgumentError(
            f"geometry_bits needs a GaussianToken model, but {model.path} is a "
            f"{model.config.kind} model whose tokens have no geometry; leave geometry_bits out.",
            "geometry_bits",
        )
    return GeometryBinning.for_model(bits, model.tokenizer)


def _run(
    writer: StoreWriter,
    model: EncodingModel,
    stream: EncodeStream,
    geometry_dtype: str,
    precision: str,
    workers: int | None,
    summary: EncodeSummary,
    layout: TokenLayout,
) -> None:
    todo = stream.shards
    if not todo:
        return
    workers = default_workers() if workers is None else workers
    workers = min(workers, len(todo))
    pin = model.device.type == "cuda"
    header = writer.header
    buffers: dict[int, _PartBuffer] = {}
    batches = loader(stream, workers=workers, pin_memory=pin)
    with worker_death_as_error(batches, WORKER_DIED_NEXT_STEP), progress("img") as bar:
        task = bar.add_task(f"encode 0/{len(todo)} shards", total=None)
        for chunk in batches:
            fresh = _PartBuffer(todo[chunk.shard], geometry_dtype, header.metadata_fields, layout)
            buffer = buffers.setdefault(chunk.shard, fresh)
            if chunk.keys:
                indices, geometry = _tokens(model, chunk.images, precision)
                buffer.add(chunk, indices, geometry)
            else:
                buffer.add(chunk, np.zeros((0, header.num_tokens), schema.INDEX_DTYPE), None)
            bar.advance(task, len(chunk.keys) + len(chunk.skipped))
            if chunk.end is None:
                continue
            part = buffers.pop(chunk.shard).finish(chunk, header.num_tokens, header.has_geometry)
            writer.write_part(part)
            _count(summary, part)
            _report_damage(part)
            done = summary.shards_encoded
            samples_per_shard = summary.samples_read / done
            bar.update(
                task,
                description=f"encode {done}/{len(todo)} shards",
                total=round(samples_per_shard * len(todo)),
            )
    if summary.skipped and not is_quiet():
        console.print(
            f"[yellow]{summary.skipped} samples skipped[/] (reasons in the store: "
            f"gtok info {writer.location})"
        )


def _report_damage(part: Part) -> None:
    """One line on stderr for an input tar that could not be read to its end."""
    if part.problem is not None and not is_quiet():
        line = f"[yellow]damaged tar[/] {escape(part.shard)}: {escape(part.problem)}"
        console.print(line, soft_wrap=True)


def _count(summary: EncodeSummary, part: Part) -> None:
    summary.shards_encoded += 1
    summary.samples_read += part.samples
    summary.encoded += len(part.keys)
    summary.skipped += len(part.skipped)
    summary.damaged_shards += part.problem is not None
    summary.upscaled += part.upscaled
    for key, reason in part.skipped:
        if len(summary.skipped_examples) < 10:
            summary.skipped_examples.append({"shard": part.shard, "key": key, "reason": reason})
    if part.problem is not None and len(summary.skipped_examples) < 10:
        summary.skipped_examples.append({"shard": part.shard, "key": "", "reason": part.problem})
