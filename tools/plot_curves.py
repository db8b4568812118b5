"""Training curves of `gtok train` runs side by side, as one PNG: validation PSNR (dB) and
training L1 (on [-1, 1] pixels) against the optimizer step, one line per run, read from each
run's metrics.jsonl (`gtok.train.rundir`). A run continued in a new run directory (`gtok
train --init-from`) is given as NAME=FIRST,SECOND: the second's steps follow the first's
last step, and a dotted line marks where it starts.

    .venv/bin/python tools/plot_curves.py tiny=runs/tiny vq-tiny=runs/vq-tiny \
        -o docs/training_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (("val", "psnr", "validation PSNR (dB)"), ("train", "l1", "training L1"))


def read_curves(run: Path) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(kind, metric) -> (steps, values) of every panel's metric in `run`/metrics.jsonl."""
    curves: dict[tuple[str, str], tuple[list[int], list[float]]] = {
        (kind, metric): ([], []) for kind, metric, _ in PANELS
    }
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for kind, metric, _ in PANELS:
            if record.get("kind") == kind and metric in record:
                curves[kind, metric][0].append(record["step"])
                curves[kind, metric][1].append(record[metric])
    return curves


def read_continued(parts: list[Path]) -> tuple[dict, list[int]]:
    """`read_curves` of runs that continue each other, on one step axis, and the steps at
    which each continuation starts."""
    joined: dict = {(kind, metric): ([], []) for kind, metric, _ in PANELS}
    offset, starts = 0, []
    for part in parts:
        if offset:
            starts.append(offset)
        last = offset
        for key, (steps, values) in read_curves(part).items():
            joined[key][0].extend(offset + s for s in steps)
            joined[key][1].extend(values)
            last = max([last, *(offset + s for s in steps)])
        offset = last
    return joined, starts


def plot(runs: dict[str, list[Path]], out: Path) -> None:
    """Draw every run's curves into `out` (PNG, 1000 x 380 px, no date metadata)."""
    figure = Figure(figsize=(10, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(PANELS))
    for name, parts in runs.items():
        curves, starts = read_continued(parts)
        for ax, (kind, metric, _) in zip(axes, PANELS, strict=True):
            steps, values = curves[kind, metric]
            line = ax.plot(steps, values, label=name, marker="o" if kind == "val" else None, ms=3)
            for start in starts:
                ax.axvline(start, color=line[0].get_color(), linestyle=":", alpha=0.6)
    for ax, (_, _, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(out, format="png", metadata={"Software": None})


def _named(text: str) -> tuple[str, list[Path]]:
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR[,RUN_DIR...], got {text!r}")
    return name, [Path(part) for part in value.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=_named, nargs="+", help="NAME=RUN_DIR[,RUN_DIR...]")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    plot(dict(args.runs), args.out)


if __name__ == "__main__":
    main()
