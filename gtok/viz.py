"""Pictures of tokenizers at work: Gaussians drawn as ellipses, and image grids.

Used by training (sample grids), `gtok decode --gaussians` and `gtok eval --report`.

Geometry follows the rasterizer's conventions (docs/design.md section 1, step 5,
`gtok.kernels.reference`): a Gaussian with mean (x, y) in [-1, 1] is centred at ((x + 1) / 2
* W, (y + 1) / 2 * H) in map pixels, where map pixel (row i, column j) sits at the point (j,
i); its covariance is (R S)(R S)^T with R the rotation by -theta and S = diag(scale_x,
scale_y) in map pixels. Map pixel j covers image pixels [j f, (j + 1) f) for an image f
times larger, whose centre is at image coordinate (j + 0.5) f - 0.5 (PIL puts pixel centres
at integer coordinates), so a map point u is drawn at (u + 0.5) f - 0.5 and lengths are
multiplied by f.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from gtok.outputs import write_atomically

__all__ = [
    "code_color",
    "comparison_rows",
    "draw_gaussians",
    "ellipse_points",
    "image_grid",
    "save_image_grid",
    "to_pil",
    "with_caption",
]

_GOLDEN = 0.618033988749895


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [-1, 1] (clamped) -> RGB PIL image, rounding as a saved PNG does."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got {list(image.shape)}")
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


def code_color(code: int) -> tuple[int, int, int]:
    """A bright colour for code id `code`; nearby ids get well-separated hues."""
    hue = (code * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def ellipse_points(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    map_size: tuple[int, int],
    image_size: tuple[int, int],
    sigmas: float = 2.0,
    num_points: int = 48,
) -> np.ndarray:
    """Outline points of each Gaussian's `sigmas`-sigma ellipse, in image pixel coordinates.

    means: [G, 2] (x, y) in [-1, 1]; scales: [G, 2] standard deviations in map pixels;
    rotations: [G] radians; map_size, image_size: (H, W) in pixels.
    Returns float64 [G, num_points, 2] (x, y) with PIL's pixel-centre convention.
    """
    if means.ndim != 2 or means.shape[1] != 2 or scales.shape != means.shape:
        raise ValueError(
            f"expected means and scales [G, 2], got {list(means.shape)}, {list(scales.shape)}"
        )
    if rotations.shape != means.shape[:1]:
        raise ValueError(f"expected rotations [{means.shape[0]}], got {list(rotations.shape)}")
    (map_h, map_w), (img_h, img_w) = map_size, image_size
    m = means.detach().double().cpu().numpy()
    s = scales.detach().double().cpu().numpy()
    theta = rotations.detach().double().cpu().numpy()
    centre = np.stack([(m[:, 0] + 1) / 2 * map_w, (m[:, 1] + 1) / 2 * map_h], axis=1)  # [G, 2]
    t = np.linspace(0.0, 2.0 * math.pi, num_points, endpoint=False)
    unit = np.stack([np.cos(t), np.sin(t)], axis=1)  # [P, 2]
    c, sn = np.cos(theta), np.sin(theta)
    # R(-theta) S applied to the unit circle: R(-theta) = [[c, s], [-s, c]]
    ax = unit[None, :, 0] * s[:, None, 0]  # [G, P]
    ay = unit[None, :, 1] * s[:, None, 1]
    dx = c[:, None] * ax + sn[:, None] * ay
    dy = -sn[:, None] * ax + c[:, None] * ay
    points = centre[:, None, :] + sigmas * np.stack([dx, dy], axis=-1)  # [G, P, 2] map px
    factor = np.array([img_w / map_w, img_h / map_h])
    return (points + 0.5) * factor - 0.5


def draw_gaussians(
    image: Image.Image,
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    codes: torch.Tensor,
    map_size: tuple[int, int],
    sigmas: float = 2.0,
    width: int = 1,
) -> Image.Image:
    """A copy of `image` with each Gaussian's `sigmas`-sigma ellipse drawn in its code's colour.

    means: [G, 2] in [-1, 1]; scales: [G, 2] map pixels; rotations: [G] radians;
    codes: [G] code ids; map_size: (H, W) of the rendered map in pixels.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    size = (out.height, out.width)
    outlines = ellipse_points(means, scales, rotations, map_size, size, sigmas)
    for outline, code in zip(outlines, codes.tolist(), strict=True):
        points = [(float(x), float(y)) for x, y in outline]
        draw.line([*points, points[0]], fill=code_color(int(code)), width=width)
    return out


LABEL_PX = 16  # height of a strip of text (a column header, a row's label) in a grid


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    pad: int = 2,
    headers: Sequence[str] = (),
    labels: Sequence[str] = (),
) -> Image.Image:
    """Paste images row by row (each row's images side by side) on a dark background;
    every image must have the size of the first. With `headers`, a strip above the grid
    names each column; with `labels` (one per row), a strip below each row holds its label
    (light text, PIL's default font)."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with one image")
    w, h = rows[0][0].size
    columns = max(len(r) for r in rows)
    top = LABEL_PX if headers else 0
    row_h = h + pad + (LABEL_PX if labels else 0)
    grid = Image.new("RGB", (columns * (w + pad) + pad, top + len(rows) * row_h + pad), (24,) * 3)
    draw = ImageDraw.Draw(grid)
    for j, header in enumerate(headers):
        draw.text((pad + j * (w + pad) + 4, 2), header, fill=(230,) * 3)
    for i, row in enumerate(rows):
        y = top + pad + i * row_h
        for j, img in enumerate(row):
            if img.size != (w, h):
                raise ValueError(f"image_grid: image ({i}, {j}) is {img.size}, not {(w, h)}")
            grid.paste(img, (pad + j * (w + pad), y))
        if labels:
            draw.text((pad + 4, y + h + 2), labels[i], fill=(230,) * 3)
    return grid


def with_caption(image: Image.Image, caption: str, height: int = 16) -> Image.Image:
    """A copy of `image` with a strip of `height` pixels below it holding `caption` (light
    text on the grid's dark background, PIL's default font)."""
    out = Image.new("RGB", (image.width, image.height + height), (24,) * 3)
    out.paste(image.convert("RGB"), (0, 0))
    ImageDraw.Draw(out).text((4, image.height + 2), caption, fill=(230,) * 3)
    return out


def save_image_grid(
    path: str | os.PathLike,
    rows: Sequence[Sequence[Image.Image]],
    pad: int = 2,
    caption: str | None = None,
) -> None:
    """`image_grid(rows)` (with `caption` below it, if given) saved as PNG at `path`
    (written to a temporary name, then renamed)."""
    grid = image_grid(rows, pad)
    if caption:
        grid = with_caption(grid, caption)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    write_atomically(path, buffer.getvalue())


def comparison_rows(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    gaussians: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    codes: torch.Tensor | None = None,
    map_size: tuple[int, int] | None = None,
    display_size: int = 256,
) -> list[list[Image.Image]]:
    """One row per image: original | reconstruction | (Gaussians over the dimmed
    reconstruction, when given), each enlarged (nearest) to at least `display_size` pixels.

    originals, reconstructions: [B, 3, H, W] in [-1, 1]; gaussians: (means [B, G, 2],
    scales [B, G, 2], rotations [B, G]) with codes [B, G] and map_size (H, W) of the map.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"originals {list(originals.shape)} and reconstructions "
            f"{list(reconstructions.shape)} differ in shape"
        )
    if gaussians is not None and (codes is None or map_size is None):
        raise ValueError("drawing Gaussians needs their codes and the map size")
    height, width = originals.shape[2:]
    factor = max(1, math.ceil(display_size / max(height, width)))
    big = (width * factor, height * factor)
    rows = []
    for b in range(originals.shape[0]):
        original = to_pil(originals[b]).resize(big, Image.Resampling.NEAREST)
        recon = to_pil(reconstructions[b]).resize(big, Image.Resampling.NEAREST)
        row = [original, recon]
        if gaussians is not None:
            assert codes is not None and map_size is not None  # checked above
            means, scales, rotations = (g[b] for g in gaussians)
            dimmed = Image.blend(recon, Image.new("RGB", big, (0, 0, 0)), 0.6)
            row.append(draw_gaussians(dimmed, means, scales, rotations, codes[b], map_size))
        rows.append(row)
    return rows
