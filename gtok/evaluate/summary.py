"""The headline rows of an evaluation document, as `gtok eval` prints them and the report
page shows them: one label and formatted cells per metric (each tokenizer, and with
`--compare` the signed difference)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SUMMARY_ROWS", "model_name", "summary_rows", "tokenizer_names"]

# (label, key path in the document, format)
SUMMARY_ROWS = [
    ("PSNR (dB)", ("psnr",), "{:.3f}"),
    ("SSIM", ("ssim",), "{:.4f}"),
    ("LPIPS-VGG", ("lpips_vgg",), "{:.4f}"),
    ("LPIPS-Alex", ("lpips_alex",), "{:.4f}"),
    ("rFID", ("rfid",), "{:.3f}"),
    ("codes used", ("codebook", "used"), "{:d}"),
    ("codebook usage", ("codebook", "usage"), "{:.1%}"),
    ("code perplexity", ("codebook", "perplexity"), "{:.1f}"),
    ("code entropy (bits)", ("codebook", "entropy_bits"), "{:.3f}"),
    ("Gaussian scale, mean (map px)", ("geometry", "scale", "mean"), "{:.3f}"),
    ("anisotropy, median", ("geometry", "anisotropy", "p50"), "{:.3f}"),
    ("centre coverage per image", ("geometry", "coverage_per_image"), "{:.1%}"),
]


def _get(document: dict, path: tuple[str, ...]) -> float | None:
    value: object = document
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, int | float) else None


def summary_rows(document: dict) -> list[tuple[str, list[str]]]:
    """(label, cells) per metric that applies: the first tokenizer's value, then with
    `compare` the second's and the signed difference; "unavailable" where a value is missing.
    A group (codebook, geometry) that applies to neither tokenizer is left out."""
    other = document.get("compare")
    rows = []
    for label, path, fmt in SUMMARY_ROWS:
        values = [_get(d, path) for d in (document, other) if d is not None]
        headline = len(path) == 1 and path[0] in document["unavailable"]
        if all(v is None for v in values) and not headline:
            continue  # the reason is under "unavailable"
        cells = [fmt.format(v) if v is not None else "unavailable" for v in values]
        if other is not None:
            a, b = values
            signed = fmt.replace("{:", "{:+")
            cells.append(signed.format(b - a) if a is not None and b is not None else "")
        rows.append((label, cells))
    return rows


def model_name(model: dict) -> str:
    """A short name for a document's "model" entry: its folder's name."""
    return Path(model.get("path") or model.get("reconstructions", "?")).name or "?"


def tokenizer_names(document: dict) -> list[str]:
    """The short names of the document's tokenizers: the model, then the `--compare` one."""
    models = [document["model"]] + ([document["compare"]["model"]] if "compare" in document else [])
    return [model_name(m) for m in models]
