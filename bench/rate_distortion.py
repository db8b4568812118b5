"""Rate against distortion of GaussianToken token layouts: prints one JSON document, draws a plot.

For each row (a token layout of the model's tokens), on the same training and validation
shards:

1. encode them (`gtok encode`, `--geometry-bits` / `--layout` / `--geometry-codebook` as the
   row says) into WORK/<row>-train.zarr and WORK/<row>-val.zarr; a codebook row first fits
   its codebook on the fields-B8 training store (`gtok fit-codebook`, seed 0,
   `--rate-weight` as the row says: codebook-K plain, codebook-K-rateL entropy-constrained);
2. score the validation store's tokens as `gtok eval VAL STORE` does (`evaluate_pairs`,
   mean per-image PSNR of the decoded uint8 images, `gtok.metrics.psnr`), and against a
   plain store's float16 geometry (WORK/float16-val.zarr: `psnr_vs_float16_db`);
3. train the small prior of examples/ar_prior.py on the training store with a fixed budget
   (600 steps, width 128, 3 layers, 4 heads, batch 16, seed 0: the budget the VQ row of
   docs/results.md was measured with) and take its validation bits per image on the first
   1,024 validation rows, and the ids per image.

Each step is skipped when its output is there (a finished store, a codebook file, a prior's
results.json, a store's PSNR in STORE.psnr.json), so a rerun only does what is missing, and
rows can run in parallel processes (`--rows`) before one run that prints everything. With
`--vq-model DIR` the VQ row is measured the same way (encoded with that VQ model: code ids,
no geometry, so no layout or geometry bits; its PSNR against float16 geometry is tiny's, as
for the other rows); without it, it is the recorded one of docs/results.md (`--vq-bits`,
`--vq-psnr`, marked "recorded"). Writes the PSNR-against-bits plot to `--plot`.

    OMP_NUM_THREADS=1 python bench/rate_distortion.py \\
        --train '/work/shared/data/photos64/train-*.tar' \\
        --val /work/shared/data/photos64/val-000000.tar --work /work/rd \\
        --plot docs/rate_distortion.png > rate_distortion.json
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gtok.encode import encode_shards  # noqa: E402
from gtok.evaluate.run import evaluate_pairs  # noqa: E402
from gtok.store.codebook_fit import fit_store_codebook  # noqa: E402

PRIOR = ["--steps", "600", "--minutes", "600", "--eval-every", "100", "--dim", "128",
         "--layers", "3", "--heads", "4", "--batch-size", "16", "--val-rows", "1024",
         "--seed", "0", "--threads", "1"]  # fmt: skip
SKIP_METRICS = ("lpips_vgg", "lpips_alex", "rfid")


@dataclass(frozen=True)
class Row:
    """One token layout to measure: `gtok encode` options and, for a codebook, its size
    (layout None: the VQ model's code ids, encoded with `--vq-model`)."""

    name: str
    bits: int | None = None  # --geometry-bits
    layout: str | None = "fields"
    codebook_size: int | None = None  # --layout codebook with a codebook of at most K entries
    rate_weight: float = 0.0  # the codebook's lambda (0: plain k-means)

    def encode_options(self, work: Path) -> dict:
        if self.layout is None:  # a VQ store has no geometry to lay out
            return {}
        options: dict = {"geometry_bits": self.bits, "layout": self.layout}
        if self.codebook_size is not None:
            options["geometry_codebook"] = str(codebook_path(work, self))
        return options


def _codebook_row(size: int, rate_weight: float = 0.0) -> Row:
    rate = f"-rate{rate_weight:g}" if rate_weight else ""
    return Row(f"codebook-{size}{rate}", layout="codebook", codebook_size=size,
               rate_weight=rate_weight)  # fmt: skip


ROWS = {
    row.name: row
    for row in (
        Row("fields-b8", bits=8),
        Row("fields-b6", bits=6),
        Row("fields-b5", bits=5),
        Row("fields-b4", bits=4),
        Row("raster-b8", bits=8, layout="raster"),
        Row("raster-b5", bits=5, layout="raster"),
        _codebook_row(64),
        _codebook_row(256),
        _codebook_row(1024),
        _codebook_row(256, 2e-5),
        _codebook_row(256, 4e-5),
        _codebook_row(1024, 2e-5),
        _codebook_row(1024, 3e-5),
        _codebook_row(1024, 4e-5),
    )
}
VQ_ROW = Row("vq-tiny", layout=None)
FIT_ON = "fields-b8"  # the training store the codebooks are fitted on


def codebook_path(work: Path, row: Row) -> Path:
    return work / f"{row.name}.npz"


def _script(path: Path):
    """A script (examples/, tools/) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _encode(shards: str, out: Path, row: Row, args) -> Path:
    """`gtok encode` (resumes, so a finished store costs a check) into `out`, with
    `--vq-model` for the VQ row and `--model` for the others."""
    options = row.encode_options(Path(args.work))
    model = args.vq_model if row.layout is None else args.model
    encode_shards([shards], out, model, workers=0, **options)
    return out


def _fit(row: Row, args) -> None:
    path = codebook_path(Path(args.work), row)
    if path.exists():  # a refit would change the file the stores name
        return
    store = _encode(args.train, Path(args.work) / f"{FIT_ON}-train.zarr", ROWS[FIT_ON], args)
    fitted = fit_store_codebook(store, path, size=row.codebook_size or 0,
                                rate_weight=row.rate_weight)  # fmt: skip
    print(json.dumps(fitted), file=sys.stderr)


def _psnr(val: str, store: Path) -> float:
    """Mean per-image PSNR (dB) of the store's decoded tokens against the val images (kept
    in STORE.psnr.json beside the store)."""
    cached = store.with_name(f"{store.name}.psnr.json")
    if not cached.exists():
        result = evaluate_pairs(
            [val], store, skip_metrics=SKIP_METRICS, device="cpu", grid_images=0
        )
        scores = [image["psnr"] for image in result.per_image]
        cached.write_text(json.dumps({"psnr_db": float(np.mean(scores)), "images": len(scores)}))
    return json.loads(cached.read_text())["psnr_db"]


def _prior(train: Path, val: Path, out: Path, settings: list[str]) -> dict:
    results = out / "results.json"
    if not results.exists():
        with redirect_stdout(sys.stderr):  # its progress lines; stdout is the JSON document
            _script(ROOT / "examples" / "ar_prior.py").main(
                [str(train), "--val-store", str(val), "-o", str(out), *settings]
            )
    return json.loads(results.read_text())


def measure(row: Row, args) -> dict:
    """The row's encode, PSNR and prior: {"psnr_db", "bits_per_image", ...}."""
    work = Path(args.work)
    if row.codebook_size is not None:
        _fit(row, args)
    train = _encode(args.train, work / f"{row.name}-train.zarr", row, args)
    val = _encode(args.val, work / f"{row.name}-val.zarr", row, args)
    prior = _prior(train, val, work / f"prior-{row.name}", ["--smoke"] if args.smoke else PRIOR)
    bits = prior["val_bits_per_image"]
    return {
        "row": row.name,
        "recorded": False,
        "layout": row.layout,
        "geometry_bits": row.bits,
        "codebook_size": row.codebook_size,
        "rate_weight": row.rate_weight,
        "psnr_db": _psnr(args.val, val),
        "ids_per_image": prior["ids_per_sequence"],
        "vocabulary": prior["vocabulary"]["size"],
        "bits_per_image": bits["gpt"],
        "bits_per_image_unigram_per_position": bits["unigram_per_position"],
        "bits_per_image_by_field": prior["val_bits_per_image_by_field"]["gpt"],
        "prior_seconds": prior["training"]["seconds"],
        "prior_curve": prior["training"]["curve"],
        "val_rows": prior["val_sequences"],
        "train_rows": prior["train_sequences"],
    }


def _family(row: dict) -> tuple[str, str]:
    """A row's family on the plot: (legend label, colour)."""
    if row.get("recorded") or row["layout"] is None:
        return "VQ twin", "tab:red"
    if row["layout"] != "codebook":
        return f"{row['layout']}: code + 5 bins", "tab:gray"
    if row.get("rate_weight"):
        return "codebook, entropy-constrained", "tab:green"
    return "codebook, plain k-means", "tab:orange"


def plot(rows: list[dict], path: str) -> None:
    """PSNR against float16 geometry of the same images (dB) against validation bits per
    image: one labelled point per row, coloured by family, and the region of the targets
    (bits <= 2x the VQ twin's, PSNR >= the twin's + 0.5 dB) shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    vq = next(row for row in rows if _family(row)[0] == "VQ twin")
    bits, psnr = 2 * vq["bits_per_image"], vq["psnr_vs_float16_db"] + 0.5
    ax.fill_between([0, bits], psnr, 0.1, color="tab:green", alpha=0.08,
                    label="targets: <= 2x VQ bits, >= VQ + 0.5 dB")  # fmt: skip
    shown: set[str] = set()
    for row in rows:
        family, colour = _family(row)
        point = (row["bits_per_image"], row["psnr_vs_float16_db"])
        ax.scatter(*point, color=colour, marker="s" if family == "VQ twin" else "o",
                   label=None if family in shown else family, zorder=3)  # fmt: skip
        shown.add(family)
        label = row["row"].replace("codebook-", "cb-").replace("-rate", " λ")
        left = colour == "tab:orange"  # plain codebooks labelled to the left, others right
        ax.annotate(label, point, fontsize=6.5, textcoords="offset points", va="center",
                    xytext=(-6 if left else 6, 0), ha="right" if left else "left")  # fmt: skip
    ax.set_xlabel("validation bits per image (600-step prior)")
    ax.set_ylabel("PSNR against tiny's float16 geometry (dB)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training shards (a glob)")
    parser.add_argument("--val", required=True, help="validation shards")
    parser.add_argument("--work", required=True, help="folder for the stores and priors")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--vq-model", help="VQ model directory: measure the VQ row")
    parser.add_argument("--vq-bits", type=float, default=430.0)
    parser.add_argument("--vq-psnr", type=float, default=24.00)
    parser.add_argument(
        "--vq-float16-psnr", type=float, default=25.25, help="tiny's PSNR on the VQ row's images"
    )
    parser.add_argument("--plot", help="PNG of PSNR against bits per image")
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--smoke", action="store_true", help="ar_prior.py --smoke priors")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = [measure(ROWS[name], args) for name in args.rows]
    work = Path(args.work)
    floats = _psnr(args.val, _encode(args.val, work / "float16-val.zarr", Row("float16"), args))
    if args.vq_model:
        vq = measure(VQ_ROW, args)
        vq["psnr_vs_float16_db"] = vq["psnr_db"] - floats
    else:
        vq = {"row": VQ_ROW.name, "recorded": True, "ids_per_image": 64, "vocabulary": 1024,
              "bits_per_image": args.vq_bits, "psnr_db": args.vq_psnr,
              "psnr_vs_float16_db": args.vq_psnr - args.vq_float16_psnr}  # fmt: skip
    for row in rows:
        row["bits_vs_vq"] = row["bits_per_image"] / vq["bits_per_image"]
        row["ids_vs_vq"] = row["ids_per_image"] / vq["ids_per_image"]
        row["psnr_vs_vq_db"] = row["psnr_db"] - vq["psnr_db"]
        row["psnr_vs_float16_db"] = row["psnr_db"] - floats
    prior = ["--smoke"] if args.smoke else PRIOR
    document = {"train": args.train, "val": args.val, "prior": prior,
                "float16_psnr_db": floats, "rows": [*rows, vq]}  # fmt: skip
    if args.plot:
        plot(document["rows"], args.plot)
    json.dump(document, sys.stdout, indent=2)
    print()
    return document


if __name__ == "__main__":
    main()
