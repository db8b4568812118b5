"""`render_page`: the report's `index.html`, one self-contained page (inline style, no
script, no network; images are relative links to PNG files beside it).

Sections, pictures first: the labelled grid (a row per chosen image: role, rank and key;
original, then each tokenizer's reconstruction with its per-image metrics and its
Gaussians), the summary (headline metrics of each tokenizer, counts and timing, the models,
unavailable metrics with their reasons folded away), the plots, the skipped samples and
the protocol. Values are shown as a person writes them (`shown`: "none", not Python's
`None` or `{}`). Every text that comes from the data (keys, paths, reasons) is
HTML-escaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from gtok.evaluate.summary import summary_rows, tokenizer_names

__all__ = ["GridRow", "Plot", "column_title", "image_count", "render_page", "shown"]

SKIPPED_SHOWN = 50
TILE_PX = (224, 184)  # displayed side of a grid picture: one tokenizer, two
_METRIC_LABELS = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "lpips_vgg": "LPIPS-VGG",
    "lpips_alex": "LPIPS-Alex",
}
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1400px;padding:16px 28px 40px;color:#1d2330;background:#f6f7f9}
h1{font-size:1.6em;margin:.4em 0 .1em}h2{margin-top:1.6em;border-bottom:2px solid #d9dde5;
 padding-bottom:.2em}.sub{color:#5a6275;margin:0 0 1em}
table{border-collapse:collapse;background:#fff}
th,td{padding:5px 10px;border:1px solid #dde1e8;text-align:left;vertical-align:top}
table.metrics td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}
table.grid td,table.grid th{padding:6px;text-align:center}
table.grid th.row{text-align:left;min-width:150px;max-width:170px}
table.grid img{height:auto;image-rendering:pixelated;display:block;margin:auto}
.score{font-size:.85em;color:#333;margin-top:4px;font-variant-numeric:tabular-nums}
.key{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8em;overflow-wrap:break-word;
 font-weight:normal;color:#333}
.role{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:.85em}
.best{background:#2a9d4a}.median{background:#e09b1a}.worst{background:#d33b3b}
.rank{font-size:.85em;color:#5a6275;font-weight:normal;margin:4px 0}
figure{margin:1em 0;background:#fff;padding:8px;border:1px solid #dde1e8}
figure img{max-width:100%;height:auto}figcaption{color:#5a6275;font-size:.9em}
dl.protocol dt{font-weight:600;margin-top:.6em}dl.protocol dd{margin-left:1.2em}
pre{background:#fff;border:1px solid #dde1e8;padding:6px;overflow-x:auto;font-size:.85em}
.note{color:#5a6275}ul.unavailable li{margin:.2em 0}
"""


@dataclass
class GridRow:
    """One image of the grid: key, role ("best", "median", "worst"), rank (1 = highest
    PSNR), the pictures' paths relative to the page (one per column) and each tokenizer's
    per-image metrics ({"psnr", "ssim", ...})."""

    key: str
    role: str
    rank: int
    pictures: list[str]
    scores: list[dict[str, float]]


@dataclass
class Plot:
    """A plot on the page: heading, path relative to the page, caption."""

    title: str
    file: str
    caption: str


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _img(src: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{_e(src)}" alt="{_e(alt)}"{size} loading="eager">'


def image_count(n: int) -> str:
    """ "1 image", "12 images"."""
    return f"{n} image" if n == 1 else f"{n} images"


def shown(value: object) -> str:
    """A setting's value for people: "none" for None or an empty table or list, "yes" and
    "no" for booleans, the value itself otherwise."""
    if value is None or (isinstance(value, dict | list | tuple) and not value):
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _summary(document: dict) -> str:
    names = tokenizer_names(document)
    head = ["metric", *names] + (["difference"] if len(names) > 1 else [])
    out = ['<h2 id="summary">Summary</h2>', '<table class="metrics"><thead><tr>']
    out += [f"<th>{_e(h)}</th>" for h in head] + ["</tr></thead><tbody>"]
    for label, cells in summary_rows(document):
        tds = "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
        out.append(f"<tr><th>{_e(label)}</th>{tds}</tr>")
    out.append("</tbody></table>")
    seconds = document.get("seconds")
    timing = f", {seconds:.1f} s ({document['images_per_second']:.1f} img/s)" if seconds else ""
    out.append(
        f"<p>{document['n']} images scored, {document['skipped']} samples skipped{timing}.</p>"
    )
    reasons = list(document["unavailable"].items())
    if "compare" in document:  # the second tokenizer's reasons where they differ
        first = document["unavailable"]
        other = document["compare"]["unavailable"].items()
        reasons += [(f"{n} ({names[1]})", r) for n, r in other if first.get(n) != r]
    models = [document["model"]] + ([document["compare"]["model"]] if "compare" in document else [])
    out.append("<p>Tokenizers:</p><ul>")
    for name, model in zip(names, models, strict=True):
        details = ", ".join(f"{_e(k)}: {_e(shown(v))}" for k, v in model.items())
        out.append(f"<li><b>{_e(name)}</b>: {details}</li>")
    out.append("</ul>")
    if reasons:
        items = "".join(f"<li><b>{_e(n)}</b>: {_e(r)}</li>" for n, r in reasons)
        listed = ", ".join(_e(n) for n, _ in reasons)
        out.append(
            f"<details><summary>Not computed: {listed} (why)</summary>"
            f'<ul class="unavailable">{items}</ul></details>'
        )
    return "\n".join(out)


def _scores(scores: dict[str, float]) -> str:
    parts = []
    for name, value in scores.items():
        label = _METRIC_LABELS.get(name, name)
        parts.append(f"{label} {value:.2f} dB" if name == "psnr" else f"{label} {value:.4f}")
    return " · ".join(_e(p) for p in parts)


def column_title(column: str, names: Sequence[str]) -> tuple[str, str | None]:
    """(title, tokenizer name or None) of a grid column ("original", "reconstruction[ 2]",
    "gaussians[ 2]"), given the tokenizers' `names`."""
    kind, _, number = column.partition(" ")
    if kind == "original":
        return kind, None
    return ("Gaussians" if kind == "gaussians" else kind), names[int(number) - 1 if number else 0]


def _grid(rows: Sequence[GridRow], columns: Sequence[str], document: dict, note: str) -> str:
    names = tokenizer_names(document)
    out = ['<h2 id="grid">Reconstructions</h2>', f"<p>{note}</p>"]
    if not rows:
        out.append('<p class="note">No images were kept for the grid (--grid-images 0).</p>')
        return "\n".join(out)
    heads = []
    for column in columns:
        title, owner = column_title(column, names)
        heads.append(title if owner is None else f"{title}<br><small>{_e(owner)}</small>")
    out.append('<div class="scroll"><table class="grid"><thead><tr><th>image</th>')
    out += [f"<th>{h}</th>" for h in heads] + ["</tr></thead><tbody>"]
    total = document["n"]
    tile = TILE_PX[0] if len(names) == 1 else TILE_PX[1]
    for row in rows:
        label = (
            f'<span class="role {_e(row.role)}">{_e(row.role)}</span>'
            f'<div class="rank">rank {row.rank} of {total} by PSNR</div>'
            f'<div class="key">{_e(row.key)}</div>'
        )
        cells = []
        for column, picture in zip(columns, row.pictures, strict=True):
            kind, _, number = column.partition(" ")
            score = ""
            if kind == "reconstruction":
                metrics = row.scores[int(number) - 1 if number else 0]
                score = f'<div class="score">{_scores(metrics)}</div>'
            cells.append(f"<td>{_img(picture, f'{column} of {row.key}', tile)}{score}</td>")
        out.append(f'<tr><th class="row">{label}</th>{"".join(cells)}</tr>')
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _plots(plots: Sequence[Plot]) -> str:
    out = ['<h2 id="plots">Plots</h2>']
    for plot in plots:
        out.append(
            f"<figure>{_img(plot.file, plot.title)}<figcaption><b>{_e(plot.title)}</b>: "
            f"{_e(plot.caption)}</figcaption></figure>"
        )
    if not plots:
        out.append('<p class="note">No plots.</p>')
    return "\n".join(out)


def _skipped(document: dict) -> str:
    samples = document.get("skipped_samples", [])
    if not samples:
        return ""
    out = [f'<h2 id="skipped">Samples not scored ({document["skipped"]})</h2>', "<table>"]
    out.append("<thead><tr><th>key</th><th>reason</th></tr></thead><tbody>")
    for sample in samples[:SKIPPED_SHOWN]:
        out.append(
            f'<tr><td class="key">{_e(sample["key"])}</td><td>{_e(sample["reason"])}</td></tr>'
        )
    out.append("</tbody></table>")
    if len(samples) > SKIPPED_SHOWN:
        more = len(samples) - SKIPPED_SHOWN
        out.append(f'<p class="note">... and {more} more in metrics.json.</p>')
    return "\n".join(out)


def _protocol(document: dict) -> str:
    out = ['<h2 id="protocol">Protocol</h2>', '<dl class="protocol">']
    for name, value in document.get("protocol", {}).items():
        if isinstance(value, dict | list) and value:
            text = f"<pre>{_e(json.dumps(value, indent=2, default=str))}</pre>"
        else:
            text = _e(shown(value))
        out.append(f"<dt>{_e(name)}</dt><dd>{text}</dd>")
    out.append("</dl>")
    return "\n".join(out)


def render_page(
    document: dict,
    rows: Sequence[GridRow],
    columns: Sequence[str],
    plots: Sequence[Plot],
    grid_note: str,
    files: Sequence[str],
) -> str:
    """The whole page. document: the evaluation document; rows, columns: the grid; plots: in
    order; grid_note: how the grid's images were chosen (HTML); files: the report's data
    files beside the page, linked at the end."""
    names = tokenizer_names(document)
    title = f"gtok eval: {' vs '.join(names)}, {image_count(document['n'])}"
    links = " · ".join(f'<a href="{_e(f)}">{_e(f)}</a>' for f in files)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">gtok {_e(document.get("protocol", {}).get("gtok_version", "?"))} · '
        f"{_e(document.get('protocol', {}).get('image_size', '?'))} px images · data: {links}</p>",
        _grid(rows, columns, document, grid_note),
        _summary(document),
        _plots(plots),
        _skipped(document),
        _protocol(document),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
