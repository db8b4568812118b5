"""Colour fidelity of tokenizers: grayscale casts and flat colours.

Prints one JSON document with, for each `--model NAME=DIR`:

- `grayscale`: the 36 demo photographs (or `--photos DIR`'s JPEG/PNG files), center-cropped
  to the model's size and turned to grayscale, encoded and decoded. For R - G and B - G of
  the reconstructions (uint8 levels, 0-255): `cast`, the mean over all pixels (a systematic
  tint), and `per_pixel`, the mean absolute value (tint plus colour noise). A perfect
  tokenizer gives 0 for both; the target is under 2 levels.
- `flat`: flat images of a few named colours, encoded and decoded: the mean colour of the
  reconstruction (uint8 RGB) and `max_error`, the largest channel error in levels.

Usage: .venv/bin/python bench/colour.py --model default=gtok/default_model \
    [--model vq=runs/vq-tiny/model] [--photos DIR] > colour.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtok.data import center_crop, decode_rgb, to_tensor
from gtok.demo import DEMO_PHOTOS
from gtok.metrics import to_uint8
from gtok.model import load_tokenizer

# uint8 RGB: saturated primaries, the sky and foliage of outdoor photos, skin, grays
FLAT_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 220),
    "sky": (110, 160, 225),
    "foliage": (70, 110, 40),
    "skin": (225, 180, 150),
    "mid-gray": (128, 128, 128),
    "near-black": (12, 12, 12),
    "near-white": (245, 245, 245),
}


def round_trip(tok: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, S, S] in [-1, 1] -> reconstructions as float uint8 levels [B, 3, S, S]."""
    with torch.inference_mode():
        return to_uint8(tok.decode(tok.encode(images))).double()


def grayscale_images(paths: list[Path], size: int) -> torch.Tensor:
    """The photographs at `paths`, center-cropped to `size` and made gray: [N, 3, S, S] in
    [-1, 1] with R = G = B."""
    gray = [
        center_crop(decode_rgb(p.read_bytes()).convert("L").convert("RGB"), size)[0] for p in paths
    ]
    return torch.stack([to_tensor(g) for g in gray])


def grayscale_shift(tok: torch.nn.Module, paths: list[Path]) -> dict[str, dict[str, float]]:
    """R - G and B - G of the reconstructions of gray photographs: mean (`cast`) and mean
    absolute value (`per_pixel`), in uint8 levels."""
    rgb = round_trip(tok, grayscale_images(paths, tok.config.image_size))
    out = {}
    for name, channel in (("r_minus_g", 0), ("b_minus_g", 2)):
        difference = rgb[:, channel] - rgb[:, 1]
        out[name] = {"cast": difference.mean().item(), "per_pixel": difference.abs().mean().item()}
    return out


def flat_colours(tok: torch.nn.Module) -> dict[str, dict]:
    """Each of `FLAT_COLOURS` as a flat image through the tokenizer: mean reconstructed
    colour and the largest channel error (uint8 levels)."""
    size = tok.config.image_size
    target = torch.tensor(list(FLAT_COLOURS.values()), dtype=torch.float64)  # [C, 3]
    images = (target / 127.5 - 1.0).float()[:, :, None, None].expand(-1, -1, size, size)
    mean = round_trip(tok, images.contiguous()).mean(dim=(2, 3))  # [C, 3]
    return {
        name: {
            "decoded": [round(v, 1) for v in mean[i].tolist()],
            "max_error": round((mean[i] - target[i]).abs().max().item(), 1),
        }
        for i, name in enumerate(FLAT_COLOURS)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR (repeat)")
    parser.add_argument("--photos", type=Path, default=DEMO_PHOTOS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not paths:
        parser.error(f"{args.photos} holds no .jpg or .png photographs")
    report = {"photos": str(args.photos), "images": len(paths), "models": {}}
    for item in args.model:
        name, _, path = item.partition("=")
        tok = load_tokenizer(path or name).eval()
        report["models"][name] = {
            "path": path or name,
            "grayscale": grayscale_shift(tok, paths),
            "flat": flat_colours(tok),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
