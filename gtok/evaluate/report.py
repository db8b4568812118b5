"""`write_report`: an evaluation's results as files, for people to look at and for the record.

REPORT_DIR/index.html     the page to open in a browser (`gtok.evaluate.page`): summary
                          metrics, the labelled grid, plots, skipped samples, protocol; no
                          script and no network, every picture a PNG file beside it
REPORT_DIR/images/        the grid's pictures, rowNN-<column>.png (NN from 01, in grid order)
REPORT_DIR/plots/         psnr.png (per-image PSNR); codes.png (code usage) and geometry.png
                          (Gaussian scales, anisotropy, rotation, centres) of a tokenizer with
                          tokens, codes-2.png and geometry-2.png for the `--compare` model
REPORT_DIR/metrics.json   the evaluation document (values, skipped samples, protocol with
                          the weights sha256 of the model(s) and metric networks) plus the
                          grid's columns, keys, roles and ranks
REPORT_DIR/grid.png       the grid in one picture, labelled as the page: column headers
                          (original | reconstruction | Gaussians drawn over the dimmed
                          reconstruction, coloured by code id; the last two again for the
                          `--compare` model), under each row its role, rank, key and PSNR
REPORT_DIR/per_image.csv  tokenizer (its name), key and every per-image metric (psnr, ssim,
                          lpips_*)

The grid shows images chosen across the set by the first tokenizer's PSNR: the best, those
nearest the median and the worst (`gtok.evaluate.picks`). Each file is written under a new
temporary name and renamed (`gtok.outputs.write_atomically`), the page last, so it never
links a missing file; pictures of an earlier report in images/ and plots/ that this one does
not use are removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from html import escape
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gtok.evaluate import plots
from gtok.evaluate.page import GridRow, Plot, column_title, image_count, render_page
from gtok.evaluate.picks import POOL, split_count
from gtok.evaluate.run import EvalResult, GridSample
from gtok.evaluate.summary import tokenizer_names
from gtok.outputs import naming, write_atomically
from gtok.viz import comparison_rows, image_grid

__all__ = ["grid_rows", "write_report"]

DATA_FILES = ("metrics.json", "per_image.csv", "grid.png")
_OURS = {  # the names this module writes, by folder (other files are left alone)
    "": re.compile(r"grid\.png"),
    "images": re.compile(r"row\d{2,}-[a-z0-9-]+\.png"),
    "plots": re.compile(r"(psnr|codes(-\d+)?|geometry(-\d+)?)\.png"),
}
_TITLES = {
    "psnr": "Per-image PSNR",
    "codes": "Code usage of {}",
    "geometry": "Gaussian geometry of {}",
}
_CAPTIONS = {
    "psnr": "left, how many images reached each PSNR; right, every image sorted by PSNR, the "
    "grid's images marked.",
    "codes": "left, tokens per code id (dashed: the count if every code were used equally); "
    "right, how many codes were used how often (0: never).",
    "geometry": "every token's Gaussian: standard deviations (feature-map pixels), major / "
    "minor scale, rotation (radians) and where the centres lie ([-1, 1], y down).",
}


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
        tokens = [tok for s in samples if (tok := s.tokens[t]) is not None]
        gaussians = codes = None
        if map_size is not None and len(tokens) == len(samples):
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


class _Writer:
    """Writes the report's files into `folder` atomically and remembers them by their path
    relative to it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: dict[str, Path] = {}

    def bytes(self, name: str, data: bytes) -> str:
        path = self.folder / name
        if not path.parent.is_dir():
            with naming(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        self.written[name] = path
        return name

    def picture(self, name: str, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self.bytes(name, buffer.getvalue())

    def remove_stale(self) -> None:
        """Remove the pictures of an earlier report that this one did not write."""
        for sub, pattern in _OURS.items():
            folder = self.folder / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                name = f"{sub}/{path.name}" if sub else path.name
                if pattern.fullmatch(path.name) and name not in self.written and path.is_file():
                    with naming(path):
                        path.unlink(missing_ok=True)


def _grid(writer: _Writer, result: EvalResult) -> tuple[list[GridRow], list[str]]:
    """Write grid.png and each picture of the grid; returns the page's rows and columns."""
    if not result.grid:
        return [], []
    pictures, columns = grid_rows(result.grid, result.map_sizes)
    names = tokenizer_names(result.document)
    titles = [column_title(column, names) for column in columns]
    headers = [title if owner is None else f"{title} ({owner})" for title, owner in titles]
    total = result.document["n"]
    labels = [
        f"{s.role} · rank {s.rank} of {total} · {s.key} · PSNR {s.scores[0]['psnr']:.2f} dB"
        for s in result.grid
    ]
    writer.picture("grid.png", image_grid(pictures, headers=headers, labels=labels))
    rows = []
    for i, (sample, row) in enumerate(zip(result.grid, pictures, strict=True)):
        names = [
            writer.picture(f"images/row{i + 1:02d}-{column.replace(' ', '-')}.png", picture)
            for column, picture in zip(columns, row, strict=True)
        ]
        rows.append(GridRow(sample.key, sample.role, sample.rank, names, sample.scores))
    return rows, columns


def _grid_note(result: EvalResult, first: str) -> str:
    """How the grid's images were chosen and what its columns show (HTML, escaped)."""
    n = result.document["n"]
    roles = [s.role for s in result.grid]
    chosen = [
        _the(roles.count(role), what)
        for role, what in (("best", "best"), ("median", "nearest the median"), ("worst", "worst"))
        if role in roles
    ]
    listed = " and ".join([", ".join(chosen[:-1]), chosen[-1]] if len(chosen) > 1 else chosen)
    if len(roles) >= n:
        every = "The one image scored is" if n == 1 else f"All {n} images scored are"
        note = f"{every} shown, ranked by the PSNR of {escape(first)}. "
    else:
        note = (
            f"Each row is one image, chosen by the PSNR of {escape(first)}: {listed} of the "
            f"{image_count(n)} scored (every image is shown when there are "
            f"{sum(split_count(len(roles)))} or fewer). "
        )
    note += (
        "Gaussians: each token's Gaussian as its 2-sigma ellipse over the dimmed "
        "reconstruction, coloured by its code id (one colour per code). Under each "
        "reconstruction: that image's metrics."
    )
    if n > POOL:
        note += (
            f" With more than {POOL} images, the median rows come from a uniform sample of "
            f"{POOL}; their rank shows how near the middle they lie."
        )
    return note


def _the(count: int, what: str) -> str:
    """ "the best" for one image, "the 3 best" for three ("the one nearest the median")."""
    if count == 1:
        return f"the {what}" if what in ("best", "worst") else f"the one {what}"
    return f"the {count} {what}"


def _plots(writer: _Writer, result: EvalResult, names: list[str]) -> list[Plot]:
    """Write the plots; returns them in page order."""
    out = []
    psnr = [
        np.array([r["psnr"] for r in result.per_image if r["tokenizer"] == t])
        for t in range(len(names))
    ]
    picks = [(s.rank, s.scores[0]["psnr"], s.role) for s in result.grid]
    file = writer.bytes("plots/psnr.png", plots.psnr_plot(psnr, names, picks))
    out.append(Plot(_TITLES["psnr"], file, _CAPTIONS["psnr"]))
    for t, (name, counts, geometry) in enumerate(
        zip(names, result.code_histograms, result.geometry, strict=False)
    ):
        suffix = "" if t == 0 else f"-{t + 1}"
        drawn = {"codes": (counts, plots.code_plot), "geometry": (geometry, plots.geometry_plot)}
        for kind, (values, draw) in drawn.items():
            if values is not None:
                file = writer.bytes(f"plots/{kind}{suffix}.png", draw(values, name))
                out.append(Plot(_TITLES[kind].format(name), file, _CAPTIONS[kind]))
    return out


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    names = list(rows[0]) if rows else ["tokenizer", "key"]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(result: EvalResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write the report (see the module doc) into `out` (created); returns every file written
    by its path relative to `out` ("index.html", "metrics.json", "plots/psnr.png", ...)."""
    folder = Path(out)
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder)
    document = dict(result.document)
    names = tokenizer_names(document)
    rows, columns = _grid(writer, result)
    if rows:
        document["grid"] = {
            "file": "grid.png",
            "columns": columns,
            "keys": [r.key for r in rows],
            "roles": [r.role for r in rows],
            "ranks": [r.rank for r in rows],
        }
    plots = _plots(writer, result, names)
    text = json.dumps(document, indent=2, default=str) + "\n"
    writer.bytes("metrics.json", text.encode())
    named = [row | {"tokenizer": names[row["tokenizer"]]} for row in result.per_image]
    writer.bytes("per_image.csv", _csv(named).encode())
    writer.remove_stale()
    files = [f for f in DATA_FILES if f in writer.written]
    page = render_page(document, rows, columns, plots, _grid_note(result, names[0]), files)
    writer.bytes("index.html", page.encode())
    return writer.written
