"""`write_report`: an evaluation's results as files, for the record and for people to look at.

REPORT_DIR/metrics.json   the evaluation document (values, skipped samples, protocol with
                          the weights sha256 of the model(s) and metric networks) plus the
                          grid's column names
REPORT_DIR/grid.png       one row per image: original | reconstruction | Gaussians (drawn over
                          the dimmed reconstruction, coloured by code id), the last two again
                          for the `--compare` model; no Gaussians column without them
REPORT_DIR/per_image.csv  tokenizer, key and every per-image metric (psnr, ssim, lpips_*)

Each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch
from PIL import Image

from gtok.evaluate.run import EvalResult, GridSample
from gtok.outputs import naming, write_atomically
from gtok.viz import comparison_rows, save_image_grid

__all__ = ["grid_rows", "write_report"]


def _floats(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images).float() / 127.5 - 1  # uint8 -> [-1, 1]


def grid_rows(
    samples: list[GridSample], map_sizes: list[int | None]
) -> tuple[list[list[Image.Image]], list[str]]:
    """(rows of PIL images, column names) for the report grid of `samples`."""
    originals = _floats([s.original for s in samples])
    rows: list[list[Image.Image]] = [[] for _ in samples]
    columns = ["original"]
    for t, map_size in enumerate(map_sizes):
        recons = _floats([s.reconstructions[t] for s in samples])
        tokens = [s.tokens[t] for s in samples]
        gaussians = codes = None
        if map_size is not None and all(tok is not None for tok in tokens):
            geometry = torch.stack([tok[1] for tok in tokens]).float()  # [N, G, 5]
            codes = torch.stack([tok[0] for tok in tokens])
            gaussians = (geometry[..., 0:2], geometry[..., 2:4], geometry[..., 4])
        built = comparison_rows(
            originals,
            recons,
            gaussians,
            codes,
            None if map_size is None else (map_size, map_size),
        )
        suffix = "" if len(map_sizes) == 1 else f" {t + 1}"
        columns += [f"reconstruction{suffix}"] + ([f"gaussians{suffix}"] if gaussians else [])
        for row, new in zip(rows, built, strict=True):
            row.extend(new if t == 0 else new[1:])
    return rows, columns


def _replace(path: Path, text: str) -> None:
    write_atomically(path, text.encode(), path.with_name(f".{path.name}.tmp"))


def write_report(result: EvalResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write metrics.json, grid.png and per_image.csv into `out` (created); returns the
    paths by name."""
    folder = Path(out)
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("metrics.json", "grid.png", "per_image.csv")}
    document = dict(result.document)
    if result.grid:
        rows, columns = grid_rows(result.grid, result.map_sizes)
        save_image_grid(paths["grid.png"], rows)
        keys = [s.key for s in result.grid]
        document["grid"] = {"file": "grid.png", "columns": columns, "keys": keys}
    else:
        paths.pop("grid.png")
    _replace(paths["metrics.json"], json.dumps(document, indent=2, default=str) + "\n")
    buffer = io.StringIO()
    names = list(result.per_image[0]) if result.per_image else ["tokenizer", "key"]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.per_image)
    _replace(paths["per_image.csv"], buffer.getvalue())
    return paths
