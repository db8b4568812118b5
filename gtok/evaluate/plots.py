"""The report's plots as PNG bytes, drawn with matplotlib (Agg, no display, no pyplot state).

- `psnr_plot`: per-image PSNR of each tokenizer: a histogram, and every image by rank with
  the grid's picks marked;
- `code_plot`: one tokenizer's code usage: tokens per code id, and the histogram of code
  frequencies (how many codes were used how often);
- `geometry_plot`: one tokenizer's Gaussians: scales, anisotropy, rotation, centres.

Figures have fixed sizes (`WIDTH` inches at `DPI`) and carry no software or date metadata,
so a rerun on the same numbers writes the same bytes (same matplotlib and fonts).
matplotlib is imported here only, and only when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gtok.errors import GtokError

__all__ = ["DPI", "WIDTH", "code_plot", "geometry_plot", "psnr_plot"]

DPI = 100
WIDTH = 11.0  # inches: 1100 px
ROLE_COLOURS = {"best": "#2a9d4a", "median": "#e09b1a", "worst": "#d33b3b"}


def _figure(columns: int, height: float, **margins: float) -> tuple[Any, list[Any]]:
    """A matplotlib Figure on an Agg canvas and its row of `columns` axes, placed by fixed
    `margins` (figure fractions, as `Figure.subplots_adjust` takes them: a fixed layout is
    several times faster to draw than a constrained one)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise GtokError(
            f"the report's plots need matplotlib ({exc}); install it with "
            "`pip install matplotlib` or reinstall gtok."
        ) from exc
    figure = Figure(figsize=(WIDTH, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    figure.subplots_adjust(**({"left": 0.06, "right": 0.98, "bottom": 0.15, "top": 0.9} | margins))
    return figure, list(axes)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]


def _histogram(ax: Any, values: np.ndarray, bins: Any, label: str | None, colour: str) -> None:
    """A filled step histogram of the finite `values` (counted with numpy: fast for millions)."""
    v = _finite(values)
    if v.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    counts, edges = np.histogram(v, bins=bins)
    ax.stairs(counts, edges, fill=True, alpha=0.35, color=colour)
    ax.stairs(counts, edges, color=colour, label=label)


def psnr_plot(
    values: Sequence[np.ndarray],
    names: Sequence[str],
    picks: Sequence[tuple[int, float, str]] = (),
) -> bytes:
    """values: per tokenizer, every image's PSNR (dB) in scoring order; names: the
    tokenizers'; picks: (rank, PSNR, role) of the grid's images (ranks of the first)."""
    figure, (hist, ranked) = _figure(2, 3.6, wspace=0.18)
    everything = _finite(np.concatenate([np.asarray(v, np.float64) for v in values]))
    low, high = (everything.min(), everything.max()) if everything.size else (0.0, 1.0)
    bins = np.linspace(low - 0.5, high + 0.5, min(60, max(10, everything.size // 4)) + 1)
    for t, (v, name) in enumerate(zip(values, names, strict=True)):
        colour = f"C{t}"
        _histogram(hist, v, bins, f"{name}: mean {np.mean(v):.2f} dB", colour)
        ordered = np.sort(_finite(v))[::-1]
        ranked.plot(np.arange(1, ordered.size + 1), ordered, color=colour, label=name)
    for rank, value, role in picks:
        ranked.plot(rank, value, "o", color=ROLE_COLOURS.get(role, "k"), markersize=6)
    for role, colour in ROLE_COLOURS.items():
        if any(r == role for _, _, r in picks):
            ranked.plot([], [], "o", color=colour, label=f"{role} (in the grid)")
    hist.set(xlabel="PSNR (dB)", ylabel="images", title="Per-image PSNR")
    ranked.set(xlabel="rank (1 = highest PSNR)", ylabel="PSNR (dB)", title="Images by rank")
    hist.legend(fontsize=8)
    ranked.legend(fontsize=8)
    ranked.grid(alpha=0.3)
    return _png(figure)


def code_plot(counts: np.ndarray, name: str) -> bytes:
    """counts: int [K], tokens per code id, of the tokenizer `name`."""
    c = np.asarray(counts, dtype=np.int64)
    figure, (by_id, frequencies) = _figure(2, 3.4, wspace=0.18)
    by_id.stairs(c, np.arange(c.size + 1) - 0.5, fill=True, color="C0")
    by_id.axhline(c.sum() / c.size, color="k", linestyle="--", linewidth=1, label="uniform use")
    by_id.set(xlabel="code id", ylabel="tokens", xlim=(-0.5, c.size - 0.5))
    by_id.set_title(f"{name}: tokens per code ({int((c > 0).sum())} of {c.size} codes used)")
    by_id.legend(fontsize=8)
    top = int(c.max()) if c.size else 0
    bins = np.arange(top + 2) - 0.5 if top < 60 else np.linspace(0, top + 1, 61)
    _histogram(frequencies, c, bins, None, "C0")
    frequencies.set(xlabel="tokens per code", ylabel="codes", title="Histogram of code frequencies")
    return _png(figure)


def geometry_plot(geometry: np.ndarray, name: str) -> bytes:
    """geometry: [N, G, 5] = (mean_x, mean_y, scale_x, scale_y, rotation) of every token:
    centres in [-1, 1] (y down), scales in feature-map pixels, rotation in radians."""
    g = np.asarray(geometry, dtype=np.float64).reshape(-1, 5)
    mean_x, mean_y, scale_x, scale_y, rotation = g.T
    figure, (scales, anisotropy, angle, centres) = _figure(
        4, 3.3, top=0.84, right=0.94, wspace=0.42
    )
    top = float(_finite(np.concatenate([scale_x, scale_y])).max(initial=1.0))
    bins = np.linspace(0, top * 1.02, 51)
    _histogram(scales, scale_x, bins, "scale x", "C0")
    _histogram(scales, scale_y, bins, "scale y", "C1")
    scales.set(xlabel="std. deviation (map px)", ylabel="Gaussians", title="Scales")
    scales.legend(fontsize=8)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(scale_x, scale_y) / np.minimum(scale_x, scale_y)
    ratio = _finite(ratio)
    upper = max(float(np.percentile(ratio, 99.5)) if ratio.size else 1.0, 1.01)
    _histogram(anisotropy, np.minimum(ratio, upper), np.linspace(1.0, upper, 41), None, "C2")
    anisotropy.set(xlabel="major / minor scale", title="Anisotropy")
    anisotropy.text(
        0.97,
        0.95,
        f"last bin: {upper:.3g}+",
        ha="right",
        va="top",
        fontsize=8,
        transform=anisotropy.transAxes,
    )
    _histogram(angle, rotation, np.linspace(0, math.pi, 37), None, "C3")
    angle.set(xlabel="rotation (rad)", title="Rotation", xlim=(0, math.pi))
    angle.set_xticks([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4, math.pi])
    angle.set_xticklabels(["0", "π/4", "π/2", "3π/4", "π"])
    keep = np.isfinite(mean_x) & np.isfinite(mean_y)
    grid, _, _ = np.histogram2d(
        mean_y[keep], mean_x[keep], bins=32, range=[[-1, 1], [-1, 1]]
    )  # rows: y (down), columns: x
    shown = centres.imshow(grid, extent=(-1, 1, 1, -1), cmap="viridis", interpolation="nearest")
    figure.colorbar(shown, ax=centres, label="centres", shrink=0.85)
    centres.set(xlabel="x", ylabel="y (down)", title="Centres", aspect="equal")
    figure.suptitle(f"{name}: {g.shape[0]} Gaussians", fontsize=10)
    return _png(figure)
