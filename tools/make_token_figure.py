"""Make `docs/token.png`: what a GaussianToken token is, drawn on one of the demo photographs.

Four panels: the photograph (as the model sees it), every token's Gaussian (2-sigma ellipse,
coloured by code id, `gtok.viz.draw_gaussians`), one token picked out (1- and 2-sigma
ellipses) with its numbers written below, and the image decoded from the tokens; a second
row shows the same after encode-time geometry refinement (`--refine-steps`, default 50; 0
leaves it out), where the Gaussians follow the image's edges. The PNG records the model it
was drawn with (`gtok-weights-sha256` text chunk) and the refinement steps
(`gtok-refine-steps`); the test of the shipped default model checks that it is that model,
so rerun this after replacing it:

    .venv/bin/python tools/make_token_figure.py    # default model, 01-chelsea.jpg
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from gtok.data import center_crop, decode_rgb, to_tensor
from gtok.demo import DEMO_PHOTOS
from gtok.model import default_model_dir, load_tokenizer_with_sha256
from gtok.viz import draw_gaussians, ellipse_points, image_grid, to_pil

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "token.png"
PANEL = 256  # px per panel
SHA_KEY = "gtok-weights-sha256"
REFINE_KEY = "gtok-refine-steps"  # text chunk: the refinement steps of the second row
REFINE_STEPS = 50


def _text(width: int, lines: list[str], size: int = 15) -> Image.Image:
    font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (width, (size + 6) * len(lines) + 8), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((8, 4 + i * (size + 6)), line, fill=(235, 235, 235), font=font)
    return strip


def _titles(width: int, titles: list[str], size: int = 15, pad: int = 2) -> Image.Image:
    """One title above each panel of an `image_grid` row (panels PANEL px, `pad` apart)."""
    font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (width, size + 12), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        draw.text((pad + i * (PANEL + pad) + 6, 6), title, fill=(235, 235, 235), font=font)
    return strip


def _stack(parts: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (parts[0].width, sum(p.height for p in parts)))
    top = 0
    for part in parts:
        out.paste(part, (0, top))
        top += part.height
    return out


def _panels(tok, image: torch.Tensor, tokens, decoded: torch.Tensor) -> tuple[list, int]:
    """The four panels of one row (photo, every Gaussian, one token, decoded) and the token
    picked out: the one whose centre lies nearest the middle of the image."""
    map_size = tok.config.map_size
    codes, geometry = tokens.indices[0], tokens.geometry[0]  # [G], [G, 5]
    means, scales, rotations = geometry[:, 0:2], geometry[:, 2:4], geometry[:, 4]
    pick = int(means.norm(dim=1).argmin())
    big = (PANEL, PANEL)
    original = to_pil(image[0]).resize(big, Image.Resampling.NEAREST)
    dimmed = Image.blend(original, Image.new("RGB", big, (0, 0, 0)), 0.6)
    every = draw_gaussians(dimmed, means, scales, rotations, codes, (map_size, map_size))
    one = dimmed.copy()
    draw = ImageDraw.Draw(one)
    for sigmas in (1.0, 2.0):
        outline = ellipse_points(
            means[pick : pick + 1],
            scales[pick : pick + 1],
            rotations[pick : pick + 1],
            (map_size, map_size),
            big,
            sigmas,
        )[0]
        points = [(float(x), float(y)) for x, y in outline]
        draw.line([*points, points[0]], fill=(255, 255, 255), width=2)
    decoded_panel = to_pil(decoded[0]).resize(big, Image.Resampling.NEAREST)
    return [original, every, one, decoded_panel], pick


def _psnr(decoded: torch.Tensor, image: torch.Tensor) -> float:
    mse = float(((decoded.clamp(-1, 1) - image) / 2).pow(2).mean())
    return 10 * math.log10(1 / mse)


def make(model: Path, photo: Path, out: Path, refine_steps: int = 0) -> str:
    """Draw the figure for `photo` with the model at `model` into `out`; returns the caption.
    refine_steps > 0 adds a second row: the same after encode-time geometry refinement."""
    tok, sha = load_tokenizer_with_sha256(model)  # the sha256 of the weights drawn with
    size, map_size = tok.config.image_size, tok.config.map_size
    crop, _ = center_crop(decode_rgb(photo.read_bytes()), size)
    image = to_tensor(crop)[None]  # [1, 3, S, S] in [-1, 1]
    runs = [(0, "")] + ([(refine_steps, f", refined {refine_steps} steps")] if refine_steps else [])
    parts, caption = [], ""
    for steps, label in runs:
        with torch.inference_mode():
            tokens = tok.encode(image, refine_steps=steps)
            decoded = tok.decode(tokens)
        panels, pick = _panels(tok, image, tokens, decoded)
        grid = image_grid([panels])
        n = tokens.indices.shape[1]
        titles = [f"image ({size} px)", f"{n} tokens{label}", f"token {pick}"]
        titles.append(f"decoded ({_psnr(decoded, image):.1f} dB)")
        parts += [_titles(grid.width, titles), grid]
        mx, my, sx, sy, rot = (float(v) for v in tokens.geometry[0, pick])
        caption = (
            f"token {pick} = code {int(tokens.indices[0, pick])} of "
            f"{tok.config.codebook_size} + geometry: mean (x, y) = ({mx:+.2f}, {my:+.2f}) "
            f"in [-1, 1], scales = ({sx:.2f}, {sy:.2f}) map px, rotation = {rot:.2f} rad"
        )
    lines = [caption]
    if refine_steps:
        lines.append(
            f"second row: geometry refined at encode time (gtok encode --refine-steps "
            f"{refine_steps}): decoder and codes fixed, Gaussians fitted to the image"
        )
    lines.append(
        f"model: {tok.config.preset} ({size} px, {map_size}x{map_size} map, weights "
        f"sha256 {sha[:12]}); photo: {photo.name} (see gtok/demo_photos/LICENSES.md)"
    )
    figure = _stack([*parts, _text(parts[1].width, lines, size=14)])
    info = PngImagePlugin.PngInfo()
    info.add_text(SHA_KEY, sha)
    info.add_text(REFINE_KEY, str(refine_steps))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, format="PNG", pnginfo=info, optimize=True)
    return caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: the default model")
    parser.add_argument("--photo", type=Path, default=DEMO_PHOTOS / "01-chelsea.jpg")
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    parser.add_argument(
        "--refine-steps",
        type=int,
        default=REFINE_STEPS,
        help=f"add a row with the geometry refined this many steps (0: none; default "
        f"{REFINE_STEPS})",
    )
    args = parser.parse_args()
    model = args.model or default_model_dir()
    print(make(model, args.photo, args.out, args.refine_steps))
    print(f"wrote {args.out} (model {model})")


if __name__ == "__main__":
    main()
