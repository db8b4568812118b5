"""`gtok encode`: tar shards, Parquet files or image folders -> a Zarr token store
(resumable, splittable across processes)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Annotated

import typer

from gtok.cli._arguments import RefineLossOption, RefineLrOption, RefineStepsOption, ShardsArgument
from gtok.cli._columns import CaptionColumnOption, ImageColumnOption, KeyColumnOption
from gtok.cli._common import ConfigOption, JsonFlag, Precision, PrecisionOption, print_json
from gtok.cli._signals import resumable
from gtok.console import console, is_quiet
from gtok.data.images import DEFAULT_MAX_PIXELS
from gtok.data.tario import DEFAULT_MAX_MEMBER_BYTES
from gtok.outputs import naming


class GeometryDtype(StrEnum):
    float16 = "float16"
    float32 = "float32"


class Distributor(StrEnum):
    multiprocessing = "multiprocessing"
    ray = "ray"


def _background(value: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise typer.BadParameter(
            f"{value!r} is not R,G,B with values in 0..255 (e.g. 255,255,255)."
        )
    return parts


def encode(
    config: ConfigOption = None,
    *,  # the rest by name (as Typer passes them), so required ones need no default
    shards: ShardsArgument = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="The token store to write (e.g. tokens.zarr).")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A gtok model directory or training run directory (default: the default "
            "model shipped with gtok).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Images per model forward; recorded in the store, and a resume or --append "
            "must use the same (tokens depend slightly on it). [default: 64 for a new store, "
            "as recorded when resuming]",
            min=1,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding processes (0: decode in this process); with --distributor ray and no "
            "--ray-address: the local Ray's CPUs. [default: cores - 1; Ray: all cores]",
            min=0,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (Apple; untested on a Mac).")
    ] = "auto",
    resize: Annotated[
        int | None,
        typer.Option(
            help="Resize the shorter side to this before the centre crop. "
            "[default: the model's image size]"
        ),
    ] = None,
    background: Annotated[
        str, typer.Option(help="R,G,B that transparent pixels are composited on.")
    ] = "255,255,255",
    max_pixels: Annotated[
        int,
        typer.Option(help="Skip images with more pixels than this (decompression bombs).", min=1),
    ] = DEFAULT_MAX_PIXELS,
    max_member_bytes: Annotated[
        int,
        typer.Option(
            help="Skip samples with a tar member larger than this, without reading it "
            "(e.g. a sparse member that unpacks to gigabytes)."
        ),
    ] = DEFAULT_MAX_MEMBER_BYTES,
    geometry_dtype: Annotated[
        GeometryDtype, typer.Option(help="Dtype of the stored Gaussian geometry.")
    ] = GeometryDtype.float16,
    geometry_bits: Annotated[
        int | None,
        typer.Option(
            help="Also store the geometry as integer bins of this many bits (4..16) in "
            "`geometry_codes`; `geometry` then holds the binned values. [default: floats only]"
        ),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            help="Token layout: fields (code id + 5 geometry bins per Gaussian), raster "
            "(the same, Gaussians sorted by binned position; needs --geometry-bits) or "
            "codebook (code id + one geometry id; needs --geometry-codebook)."
        ),
    ] = "fields",
    geometry_codebook: Annotated[
        str | None,
        typer.Option(
            help="Geometry codebook file for --layout codebook (gtok fit-codebook); "
            "the store records its path and sha256."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the store and start over instead of resuming.")
    ] = False,
    shard_id: Annotated[
        int | None, typer.Option(help="This worker's id among --num-shards parallel workers.")
    ] = None,
    num_shards: Annotated[
        int | None,
        typer.Option(help="Parallel workers in all. [default: RANK/WORLD_SIZE, SLURM_*, or 1]"),
    ] = None,
    metadata_fields: Annotated[
        str,
        typer.Option(
            help="Comma-separated fields of each sample's .json (columns of Parquet inputs) "
            "to keep as meta/<field> string arrays (e.g. url,width,height); .txt captions "
            "are always kept."
        ),
    ] = "",
    append: Annotated[
        bool,
        typer.Option(
            "--append",
            help="Add the given shards the store does not hold yet, after its rows "
            "(same model and settings); rerun to resume.",
        ),
    ] = False,
    jpeg_draft: Annotated[
        bool | None,
        typer.Option(
            "--jpeg-draft/--no-jpeg-draft",
            help="Decode large JPEGs at 1/2-1/8 scale before the resize (less CPU, nearly the "
            "pixels of exact decoding: docs/results.md). [default: on for a new store, as "
            "recorded when resuming]",
        ),
    ] = None,
    precision: PrecisionOption = Precision.fp32,
    refine_steps: RefineStepsOption = 0,
    refine_lr: RefineLrOption = None,
    refine_loss: RefineLossOption = None,
    image_column: ImageColumnOption = None,
    caption_column: CaptionColumnOption = None,
    key_column: KeyColumnOption = None,
    finalize: Annotated[
        bool,
        typer.Option("--finalize", help="Only build the final arrays after parallel workers."),
    ] = False,
    distributor: Annotated[
        Distributor,
        typer.Option(
            help="multiprocessing: this process with --workers decoding processes (and "
            "--shard-id/--num-shards workers by hand); ray: one Ray task per shard, retried, "
            "then finalized here (pip install 'gtok[ray]'; docs/scaling.md)."
        ),
    ] = Distributor.multiprocessing,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --distributor ray: the Ray cluster to use (e.g. auto or "
            "ray://head:10001). [default: start a local Ray with --workers CPUs]"
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            help="With --distributor ray: times a failed shard task is run again. [default: 2]",
            min=0,
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Tokenize every image of some tar shards, Parquet files or image folders into a Zarr
    token store.

    Rerunning the same command resumes where it stopped. Parallel workers each take every
    N-th shard; then one `gtok encode --finalize -o STORE` builds the final arrays.

    Example: gtok encode ./shards -o tokens.zarr --model runs/cifar

    Example (the default model shipped with gtok): gtok encode ./shards -o tokens.zarr

    Example: gtok encode 'data/train-{000000..000099}.tar' -o train.zarr -m model/

    Example (img2dataset output, captions and some metadata): gtok encode ./laion -o
    laion.zarr --metadata-fields url,width,height

    Example (a Hugging Face dataset's Parquet files): gtok encode 'data/*.parquet' -o
    tokens.zarr

    Example (a folder of photos, read as gtok pack reads it): gtok encode ./photos -o
    tokens.zarr

    Example (add the shards downloaded since): gtok encode ./laion -o laion.zarr
    --metadata-fields url,width,height --append

    Example (Gaussians fitted to each image, sharper): gtok encode ./shards -o
    tokens.zarr --refine-steps 50

    Example (4 workers, then finalize): gtok encode ./shards -o tokens.zarr -m model/
    --shard-id 0 --num-shards 4 ... ; gtok encode --finalize -o tokens.zarr

    Example (one task per shard on a Ray cluster): gtok encode 's3://bucket/{00..99}.tar' -o
    s3://bucket/tokens.zarr -m /shared/model --distributor ray --ray-address auto
    """
    from gtok.data.parquetio import Columns
    from gtok.encode import EncodeSummary, encode_shards, refine_settings
    from gtok.encode.distributed import DEFAULT_RETRIES, encode_on_ray
    from gtok.store import finalize_store

    if finalize:
        if shards:
            raise typer.BadParameter("--finalize takes no SHARDS (the store knows them).")
        with naming(output):  # a refused write (full disk) is named by the store
            counts = finalize_store(output)
        if json_output:
            print_json({"store": output, "finalized": True, "store_counts": counts})
        else:
            _print_counts(output, counts)
        return
    if not shards:
        raise typer.BadParameter("give the SHARDS to encode (or --finalize).")
    if distributor == Distributor.ray:
        if overwrite or shard_id is not None or num_shards is not None:
            raise typer.BadParameter(
                "--distributor ray runs one task per shard: leave out --shard-id/--num-shards, "
                "and delete the store instead of --overwrite."
            )
        run: Callable[..., EncodeSummary] = partial(
            encode_on_ray,
            address=ray_address,
            num_cpus=workers,
            retries=DEFAULT_RETRIES if retries is None else retries,
        )
    elif ray_address is not None or retries is not None:
        raise typer.BadParameter("--ray-address and --retries go with --distributor ray.")
    else:
        run = partial(
            encode_shards,
            workers=workers,
            overwrite=overwrite,
            shard_id=shard_id,
            num_shards=num_shards,
        )
    with naming(output), resumable():
        summary = run(
            shards,
            output,
            model,
            batch_size=batch_size,
            device=device,
            resize=resize,
            background=_background(background),
            max_pixels=max_pixels,
            max_member_bytes=max_member_bytes,
            geometry_dtype=geometry_dtype.value,
            geometry_bits=geometry_bits,
            layout=layout,
            geometry_codebook=geometry_codebook,
            metadata_fields=[f.strip() for f in metadata_fields.split(",") if f.strip()],
            append=append,
            jpeg_draft=jpeg_draft,
            precision=precision.value,
            refine=refine_settings(refine_steps, refine_lr, refine_loss),
            columns=Columns(image=image_column, caption=caption_column, key=key_column),
        )
    if json_output:
        print_json(summary.to_dict())
        return
    typer.echo(
        f"encoded {summary.encoded} images, skipped {summary.skipped} of {summary.samples_read} "
        f"samples read, from {summary.shards_encoded} shards "
        f"({summary.shards_already_done} were already done) in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} img/s)"
    )
    if summary.store_counts is not None:
        _print_counts(summary.store, summary.store_counts)
    if summary.next_step and not is_quiet():
        console.print(summary.next_step, soft_wrap=True)


def _print_counts(store: str, counts: dict) -> None:
    typer.echo(
        f"{store}: {counts['encoded']} rows from {counts['shards']} shards; "
        f"{counts['skipped']} samples skipped of {counts['samples']} read"
        + (f"; {counts['damaged_shards']} damaged tars" if counts["damaged_shards"] else "")
    )
