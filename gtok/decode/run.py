"""`decode_store`: token store rows -> reconstructed images on disk (what `gtok decode` runs).

Rows are read in batches (`TokenStore.batch`, one read per array), decoded with
`tokenizer.decode(Tokens(indices, geometry))` on the chosen device, quantized to uint8 with
`gtok.metrics.to_uint8` and written by a `PngFolder` or `WdsShards` writer (which also gets
each row's caption and metadata, when the store has them, as `.txt` and `.json` members).
A row that cannot be written where its key says is recorded in `failed` with the reason and
the others are still written; a write the machine refuses (full disk, read-only output)
stops the run, removing the unfinished file and keeping the finished ones.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gtok.console import console, is_quiet, progress
from gtok.decode.model import model_for_store
from gtok.decode.pictures import gaussians_pictures, png_bytes, uint8_images
from gtok.decode.select import select_rows
from gtok.decode.writers import PngFolder, SampleNotWritten, SampleWriter, WdsShards
from gtok.devices import check_inference_precision, exact_fp32, mixed_precision
from gtok.encode.model import EncodingModel
from gtok.errors import ArgumentError, GtokError
from gtok.store import TokenStore, schema

__all__ = ["FORMATS", "DecodeSummary", "decode_batch", "decode_store"]

FORMATS = ("png", "wds")


@dataclass
class DecodeSummary:
    """What one `decode_store` call wrote. written + len(failed) == rows."""

    store: str
    out: str
    format: str
    model: str
    weights_sha256: str
    weights_match_store: bool  # False only with force
    rows: int  # rows selected
    written: int = 0
    files: int = 0
    gaussians: bool = False
    seconds: float = 0.0
    images_per_second: float = 0.0
    failed: list[dict] = field(default_factory=list)  # {"key", "reason"}

    def to_dict(self) -> dict:
        return asdict(self)


def decode_batch(model: EncodingModel, batch: dict, precision: str = "fp32") -> torch.Tensor:
    """Reconstruct a `TokenStore(format="torch")` batch: indices [B, G] (+ geometry
    [B, G, 5]) -> images float32 [B, 3, H, W] on the model's device (unclamped, ~[-1, 1]).
    precision: "fp32", or "bf16" to run the decoder CNN under autocast."""
    from gtok.model import Tokens

    geometry = batch.get("geometry")
    tokens = Tokens(
        batch["indices"].to(model.device),
        None if geometry is None else geometry.to(model.device),
    )
    with torch.inference_mode(), mixed_precision(model.device, precision):
        return model.tokenizer.decode(tokens).float()


@exact_fp32()
def decode_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    force: bool = False,
    format: str = "png",
    keys: Sequence[str] | None = None,
    start: int | None = None,
    stop: int | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    gaussians: bool = False,
    shard_size: int = 10000,
    precision: str = "fp32",
) -> DecodeSummary:
    """Reconstruct rows of the token store `store` into `out`.

    model: None = the model recorded in the store; a path must hold the store's weights
        (sha256) unless `force`. format: "png" (a folder tree, `OUT/<key path>.png`) or "wds"
        (tar shards of `shard_size` samples). keys / start / stop / limit: the rows
        (`select_rows`). gaussians: also write each image's Gaussians picture.
        precision: "fp32" or "bf16" (autocast of the decoder CNN).
    """
    if format not in FORMATS:
        raise ArgumentError(
            f"format must be one of {', '.join(FORMATS)}, got {format!r}.", "format"
        )
    if batch_size < 1 or shard_size < 1:
        raise ArgumentError(
            f"batch_size and shard_size must be at least 1, got {batch_size}, {shard_size}.",
            "batch_size",
            "shard_size",
        )
    if Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise GtokError(f"{out} is a file; give a folder to write the reconstructions into.")
    check_inference_precision(precision)
    started = time.perf_counter()
    tokens = TokenStore(store, format="torch")
    rows = select_rows(tokens, keys=keys, start=start, stop=stop, limit=limit)
    loaded = model_for_store(tokens, model, force=force, device=device)
    if gaussians and loaded.config.kind != "gaussian":
        raise ArgumentError(
            f"gaussians needs a GaussianToken model; {loaded.path} is a "
            f"{loaded.config.kind} model without Gaussians.",
            "gaussians",
        )
    text = tokens.text_fields if format == "wds" else ()
    reader = TokenStore(store, format="torch", fields=[*tokens.fields, "keys", *text])
    writer: SampleWriter = PngFolder(out) if format == "png" else WdsShards(out, shard_size)
    summary = DecodeSummary(
        store=str(store),
        out=str(out),
        format=format,
        model=str(loaded.path),
        weights_sha256=loaded.weights_sha256,
        weights_match_store=loaded.weights_sha256 == tokens.weights_sha256,
        rows=len(rows),
        gaussians=gaussians,
    )
    if not summary.weights_match_store and not is_quiet():
        console.print(f"[yellow]--force: decoding with other weights than {store} was made with")
    try:
        with progress("img") as bar:
            task = bar.add_task("decode", total=len(rows))
            for begin in range(0, len(rows), batch_size):
                batch = reader.batch(rows[begin : begin + batch_size])
                _write_batch(writer, loaded, batch, gaussians, precision, summary)
                bar.advance(task, len(batch["keys"]))
        summary.files = len(writer.close())
    except BaseException:
        writer.abort()
        raise
    summary.seconds = time.perf_counter() - started
    summary.images_per_second = summary.written / summary.seconds if summary.seconds else 0.0
    if summary.failed and not is_quiet():
        console.print(f"[yellow]{len(summary.failed)} rows not written[/] (reasons in the summary)")
    return summary


def _text(batch: dict, i: int) -> dict[str, bytes]:
    """Row `i`'s text members: "txt" (its caption) and "json" (its metadata fields), for
    what the batch holds."""
    text = {}
    if schema.CAPTIONS in batch:
        text["txt"] = batch[schema.CAPTIONS][i].encode()
    prefix = f"{schema.META}/"
    meta = {k[len(prefix) :]: v[i] for k, v in batch.items() if k.startswith(prefix)}
    if meta:
        text["json"] = json.dumps(meta, ensure_ascii=False).encode()
    return text


def _write_batch(
    writer: SampleWriter,
    model: EncodingModel,
    batch: dict,
    gaussians: bool,
    precision: str,
    summary: DecodeSummary,
) -> None:
    images = decode_batch(model, batch, precision)
    pixels = uint8_images(images)
    pictures = None
    if gaussians:
        pictures = gaussians_pictures(
            images, batch["indices"], batch["geometry"], model.config.map_size
        )
    labels = batch.get("labels", torch.full((len(pixels),), -1))
    for i, key in enumerate(batch["keys"]):
        picture = png_bytes(pictures[i]) if pictures is not None else None
        try:
            writer.write(key, png_bytes(pixels[i]), picture, int(labels[i]), _text(batch, i))
        except SampleNotWritten as exc:
            summary.failed.append({"key": key, "reason": str(exc)})
            continue
        summary.written += 1
