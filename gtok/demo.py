"""`run_demo`: the whole job on real photographs shipped with gtok (what `gtok demo` runs).

The photographs are 36 small public-domain / CC0 crops in `gtok/demo_photos/images/` (sources
and licences in `gtok/demo_photos/LICENSES.md`). The demo packs them into WebDataset shards
(`pack_images`), encodes the shards into a token store with the default model or `model`
(`encode_shards`), decodes the store into PNGs with pictures of the Gaussians
(`decode_store`), scores the reconstructions against the originals (`evaluate_pairs`: PSNR,
SSIM, codebook and geometry statistics, and LPIPS / rFID when their weight files are found)
and writes a report. Everything lands in one folder:

    OUT/shards/        shard-000000.tar ... and their stats
    OUT/tokens.zarr    the token store
    OUT/recon/         <shard>/<key>.png and <key>.gaussians.png
    OUT/report/        index.html (the report page: open it in a browser), its pictures and
                       plots, metrics.json, grid.png, per_image.csv
    OUT/demo.json      this run's summary (`DemoResult`)

A rerun replaces these; a folder holding anything else is refused, and so is one where any
of these names is a symbolic link (the demo never deletes or writes through a link: the
user made it, and it may point at anything).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gtok.errors import GtokError
from gtok.outputs import write_atomically

if TYPE_CHECKING:
    from gtok.model.refine import RefineSettings

__all__ = ["DEMO_PHOTOS", "DemoResult", "run_demo"]

DEMO_PHOTOS = Path(__file__).resolve().parent / "demo_photos" / "images"
PARTS = ("shards", "tokens.zarr", "recon", "report", "demo.json")
GRID_IMAGES = 6  # the two best, two median and two worst photographs by PSNR
PER_SHARD = 12


@dataclass
class DemoResult:
    """Where the demo wrote what, and the headline numbers."""

    out: str
    model: str
    photos: str
    shards: str
    store: str
    recon: str
    report: str
    page_file: str  # the report page, index.html
    metrics_file: str
    grid_file: str
    images: int  # photographs scored
    tokens_per_image: int
    psnr: float | None
    ssim: float | None
    unavailable: dict[str, str]  # metric -> why it was not computed
    skipped: int  # photographs that could not be packed, encoded or scored
    refinement: dict | None = None  # encode-time geometry refinement, None when off
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block takes as `steps[name]`."""
    began = time.perf_counter()
    yield
    steps[name] = round(time.perf_counter() - began, 3)


def _clear(out: Path) -> None:
    """Make `out` an empty demo folder: remove a previous demo's parts, refuse anything else
    (symbolic links in the place of a part included)."""
    if out.exists() and not out.is_dir():
        raise GtokError(f"{out} is a file; give a new folder for the demo's output.")
    out.mkdir(parents=True, exist_ok=True)
    other = sorted(p.name for p in out.iterdir() if p.name not in PARTS)
    if other:
        raise GtokError(
            f"{out} holds files the demo does not write (e.g. {other[0]}); give a new or "
            "empty folder with -o."
        )
    links = [name for name in PARTS if (out / name).is_symlink()]
    if links:
        raise GtokError(
            f"{out / links[0]} is a symbolic link, which the demo would replace; remove the "
            "link or give a new or empty folder with -o."
        )
    for name in PARTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_demo(
    out: str | os.PathLike = "demo-out",
    *,
    model: str | os.PathLike | None = None,
    photos: str | os.PathLike = DEMO_PHOTOS,
    device: str = "auto",
    refine: RefineSettings | None = None,
) -> DemoResult:
    """Pack, encode, decode and evaluate the demo photographs into `out` (see the module doc).

    model: a model directory or run directory (None: the default model, announced on stderr).
    photos: the folder of images to use instead of the shipped ones.
    refine: encode-time geometry refinement (`gtok.model.refine`); the reconstructions and
        the pictures of the Gaussians then show the refined tokens.
    """
    from gtok.decode import decode_store
    from gtok.encode import encode_shards, resolve_model
    from gtok.evaluate import evaluate_pairs, write_report
    from gtok.model.io import read_config
    from gtok.pack import pack_images

    started = time.perf_counter()
    out = Path(out)
    model_dir = resolve_model(model)
    _clear(out)
    shards, store, recon, report = (out / n for n in ("shards", "tokens.zarr", "recon", "report"))
    steps: dict[str, float] = {}
    with _timed(steps, "pack"):
        packed = pack_images(photos, shards, per_shard=PER_SHARD)
    with _timed(steps, "encode"):
        encoded = encode_shards([shards], store, model_dir, workers=0, device=device, refine=refine)
    with _timed(steps, "decode"):
        decode_store(store, recon, gaussians=True, device=device)
    with _timed(steps, "eval"):
        result = evaluate_pairs([shards], store, device=device, grid_images=GRID_IMAGES)
        paths = write_report(result, report)
    document = result.document
    demo = DemoResult(
        out=str(out),
        model=str(model_dir),
        photos=str(photos),
        shards=str(shards / packed.shard_pattern),
        store=str(store),
        recon=str(recon),
        report=str(report),
        page_file=str(paths["index.html"]),
        metrics_file=str(paths["metrics.json"]),
        grid_file=str(paths["grid.png"]),
        images=document["n"],
        tokens_per_image=read_config(model_dir).num_tokens,
        psnr=document.get("psnr"),
        ssim=document.get("ssim"),
        unavailable=dict(document.get("unavailable", {})),
        skipped=packed.skipped + encoded.skipped + document["skipped"],
        refinement=refine.to_dict() if refine is not None and refine.enabled else None,
        steps=steps,
    )
    demo.seconds = round(time.perf_counter() - started, 3)
    write_atomically(out / "demo.json", (json.dumps(demo.to_dict(), indent=2) + "\n").encode())
    return demo
