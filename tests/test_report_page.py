"""The `gtok eval --report` page: the grid's images are chosen across the set by PSNR (best,
median, worst), `index.html` links only relative PNG files that exist and decode, escapes
every key, loads no script and nothing from the network, replaces an earlier report's
pictures, says in one sentence when matplotlib is missing, and renders in a real headless
Chromium (screenshot not blank, every image loaded; skipped with the reason without one)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gtok import outputs
from gtok.errors import GtokError
from gtok.evaluate import EvalResult, MetricNets, Scorer, write_report
from gtok.evaluate.picks import GridPicker, split_count
from gtok.evaluate.run import GridSample
from gtok.outputs import describe_write_failure

HOSTILE_KEY = 'shard.tar/a<b>&"c" <script>alert(1)</script>'
SIZE, GAUSSIANS, CODES, MAP = 16, 6, 32, 8


# --- choosing the grid's images ---------------------------------------------------------


def _offer_all(picker: GridPicker, values: list[float]) -> list[int]:
    """Offer images 0..n-1 with PSNR `values`; returns which payloads were built."""
    built: list[int] = []

    def make(i: int):
        built.append(i)
        return i

    for i, value in enumerate(values):
        picker.offer(value, lambda i=i: make(i))
    return built


def test_grid_picks_best_median_worst_across_the_set():
    values = list(np.random.default_rng(7).normal(25, 4, 400))
    picker = GridPicker(9, pool=64)
    built = _offer_all(picker, values)
    picks = picker.picks(values)
    order = list(np.argsort(-np.asarray(values), kind="stable"))  # rank order
    assert [p.role for p in picks] == ["best"] * 3 + ["median"] * 3 + ["worst"] * 3
    assert [p.index for p in picks[:3]] == order[:3]  # exactly the three highest
    assert [p.index for p in picks[6:]] == order[-3:]  # and the three lowest
    assert [p.rank for p in picks] == [order.index(p.index) + 1 for p in picks]
    medians = [p.rank for p in picks[3:6]]
    assert all(abs(r - 200) <= 20 for r in medians), medians  # from a sample of 64: near
    assert len({p.index for p in picks}) == 9
    assert len(built) < 250  # payloads are built only for images kept (about 190 of 400)


def test_grid_median_is_exact_within_the_pool_and_small_sets_are_shown_whole():
    values = [30.0, 10.0, 20.0, 25.0, 15.0, 22.0, 18.0, 21.0, 19.0, 40.0, 5.0]
    picker = GridPicker(5)
    _offer_all(picker, values)
    picks = picker.picks(values)
    assert [(p.role, values[p.index]) for p in picks] == [
        ("best", 40.0), ("best", 30.0), ("median", 20.0), ("worst", 10.0), ("worst", 5.0)
    ]  # fmt: skip
    small = GridPicker(9)
    _offer_all(small, values[:4])
    assert [(p.role, p.rank) for p in small.picks(values[:4])] == [
        ("best", 1), ("median", 2), ("median", 3), ("worst", 4)
    ]  # fmt: skip
    assert split_count(8) == (3, 2, 3) and split_count(6) == (2, 2, 2)
    assert GridPicker(0).picks([]) == []


# --- the page ----------------------------------------------------------------------------


def _result(count: int = 12, grid: int = 6, key: str = HOSTILE_KEY) -> EvalResult:
    """An evaluation of `count` random images (one keyed `key`) by a stand-in tokenizer with
    Gaussians, scored by the real `Scorer`, and its grid chosen by the real `GridPicker`."""
    g = torch.Generator().manual_seed(0)
    originals = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    amplitude = torch.arange(1, count + 1).float()[:, None, None, None] * 6  # PSNR falls
    noise = (torch.rand(originals.shape, generator=g) * 2 - 1) * amplitude
    recons = (originals.float() + noise).round().clamp(0, 255).to(torch.uint8)
    indices = torch.randint(0, CODES, (count, GAUSSIANS), generator=g)
    geometry = torch.cat(
        [
            torch.rand(count, GAUSSIANS, 2, generator=g) * 2 - 1,
            torch.rand(count, GAUSSIANS, 2, generator=g) * 2 + 0.2,
            torch.rand(count, GAUSSIANS, 1, generator=g) * np.pi,
        ],
        dim=-1,
    )
    keys = [f"shard.tar/{i:04d}" for i in range(count - 1)] + [key]
    scorer = Scorer(MetricNets(), codebook_size=CODES, has_geometry=True)
    scorer.add(keys, originals, recons, indices, geometry)
    picker = GridPicker(grid)
    for i, scores in enumerate(scorer.latest(count)):
        sample = GridSample(
            keys[i], originals[i], [recons[i]], [(indices[i], geometry[i])], [scores]
        )
        picker.offer(scores["psnr"], lambda sample=sample: sample)
    chosen = []
    for pick in picker.picks(scorer.per_image["psnr"]):
        pick.payload.role, pick.payload.rank = pick.role, pick.rank
        chosen.append(pick.payload)
    document = scorer.result() | {
        "model": {"path": "/models/<tiny>", "weights_sha256": "ab" * 32},
        "skipped": 1,
        "skipped_samples": [{"key": "bad<1>", "reason": "cannot decode: a & b"}],
        "seconds": 1.5,
        "images_per_second": count / 1.5,
        "protocol": {
            "images": count,
            "image_size": SIZE,
            "preprocessing": {"resize": SIZE},
            "limit": None,
            "metric_weights": {},
        },
    }
    document["model"]["refinement"] = None
    per_image = [{"tokenizer": 0} | row for row in scorer.rows()]
    return EvalResult(
        document, per_image, chosen, [MAP], [scorer.code_histogram()], [scorer.geometry()]
    )


class _Links(HTMLParser):
    """Every img src, a href, script and link tag, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    write_report(_result(), folder)
    return folder


def test_page_links_only_local_pngs_that_exist(report):
    parsed = _parse(report / "index.html")
    assert "script" not in parsed.tags and "link" not in parsed.tags  # no code, no stylesheets
    assert "http" not in (report / "index.html").read_text().replace("http-equiv", "")
    # 6 rows x (original, reconstruction, Gaussians) + psnr, codes, geometry plots
    assert len(parsed.images) == 6 * 3 + 3
    for src in parsed.images + parsed.links:
        assert not re.match(r"^[a-z]+:|^/|\.\.", src), src  # relative, inside the folder
        assert (report / src).is_file(), src
    for src in parsed.images:
        with Image.open(report / src) as image:
            assert image.format == "PNG" and min(image.size) >= 64
            image.verify()
    assert set(parsed.links) == {"metrics.json", "per_image.csv", "grid.png"}


def test_page_labels_the_grid_and_escapes_keys(report):
    html = (report / "index.html").read_text()
    parsed = _parse(report / "index.html")
    text = " ".join(parsed.text)
    assert HOSTILE_KEY in text  # shown as text ...
    assert "<script>alert" not in html and "a<b>" not in html  # ... never as markup
    assert "a&lt;b&gt;&amp;&quot;c&quot;" in html and "bad&lt;1&gt;" in html
    metrics = json.loads((report / "metrics.json").read_text())
    grid = metrics["grid"]
    assert grid["columns"] == ["original", "reconstruction", "gaussians"]
    assert grid["roles"] == ["best"] * 2 + ["median"] * 2 + ["worst"] * 2
    rows = {r["key"]: r for r in _csv_rows(report)}
    psnrs = sorted((float(r["psnr"]) for r in rows.values()), reverse=True)
    for key, rank in zip(grid["keys"], grid["ranks"], strict=True):
        assert float(rows[key]["psnr"]) == psnrs[rank - 1]
        shown = f"PSNR {float(rows[key]['psnr']):.2f} dB · SSIM {float(rows[key]['ssim']):.4f}"
        assert shown in text
        assert f"rank {rank} of 12 by PSNR" in text
    assert grid["ranks"][:2] == [1, 2] and grid["ranks"][-2:] == [11, 12]
    for label in ("original", "reconstruction", "Gaussians", "Summary", "Protocol", "2-sigma"):
        assert label in text, label


def test_page_opens_on_the_grid_and_shows_no_python_values(report):
    html = (report / "index.html").read_text()
    order = [html.index(f'<h2 id="{part}">') for part in ("grid", "summary", "plots", "protocol")]
    assert order == sorted(order)
    text = " ".join(_parse(report / "index.html").text)
    assert not re.search(r"\bNone\b|\{\}", text)
    assert "refinement: none" in text and "metric_weights" in text


@pytest.mark.parametrize(
    ("count", "grid", "chosen"),
    [
        (2, 2, "All 2 images scored are shown, ranked by the PSNR of <tiny>."),
        (1, 1, "The one image scored is shown, ranked by the PSNR of <tiny>."),
        (12, 6, "the 2 best, the 2 nearest the median and the 2 worst of the 12 images"),
        (12, 3, "the best, the one nearest the median and the worst of the 12 images"),
    ],
)
def test_the_grid_caption_reads_right_for_any_count(tmp_path, count, grid, chosen):
    write_report(_result(count=count, grid=grid), tmp_path)
    text = " ".join(" ".join(_parse(tmp_path / "index.html").text).split())
    assert chosen in text


def test_grid_png_is_labelled_like_the_page(report):
    with Image.open(report / "grid.png") as image:
        pixels = np.asarray(image.convert("L"))
    rows, tile = 6, 256  # six rows of original | reconstruction | Gaussians
    assert pixels.shape == (16 + rows * (tile + 2 + 16) + 2, 3 * (tile + 2) + 2)
    for column in range(3):  # a header over each column: light text on the dark strip
        x = 2 + column * (tile + 2)
        assert pixels[:16, x : x + tile].max() > 200
    for row in range(rows):  # a label under each row
        y = 16 + 2 + row * (tile + 2 + 16) + tile
        assert pixels[y : y + 16, :].max() > 200


def test_per_image_csv_names_the_model(report):
    assert {row["tokenizer"] for row in _csv_rows(report)} == {"<tiny>"}


def _csv_rows(report: Path) -> list[dict]:
    import csv

    with open(report / "per_image.csv") as f:
        return list(csv.DictReader(f))


def test_plots_are_the_same_bytes_on_a_rerun(report, tmp_path):
    write_report(_result(), tmp_path)
    for name in ("plots/psnr.png", "plots/codes.png", "plots/geometry.png", "index.html"):
        assert (report / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_rerun_replaces_the_pictures_of_an_earlier_report(report, tmp_path):
    folder = shutil.copytree(report, tmp_path / "report")
    (folder / "images" / "mine.png").write_bytes(b"not ours")
    written = write_report(_result(grid=3), folder)
    rows = sorted(p.name for p in (folder / "images").glob("row*.png"))
    assert rows == [f"row0{i}-{c}.png" for i in (1, 2, 3) for c in
                    ("gaussians", "original", "reconstruction")]  # fmt: skip
    assert (folder / "images" / "mine.png").exists()  # not a name the report writes
    assert {"index.html", "plots/psnr.png", "plots/codes.png"} <= set(written)
    write_report(_result(grid=0), folder)
    assert not list((folder / "images").glob("row*.png")) and not (folder / "grid.png").exists()
    assert "No images were kept for the grid" in (folder / "index.html").read_text()


def test_a_refused_write_names_its_file_and_leaves_no_page(tmp_path, monkeypatch):
    create = outputs.create_temporary

    def full_disk(path: Path) -> tuple[Path, int]:
        if "psnr" in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return create(path)

    monkeypatch.setattr(outputs, "create_temporary", full_disk)
    with pytest.raises(OSError) as caught:
        write_report(_result(grid=0), tmp_path)
    assert describe_write_failure(caught.value) == (
        f"cannot write {tmp_path}/plots/psnr.png: No space left on device; free space or "
        "choose another output."
    )
    assert not (tmp_path / "index.html").exists()  # the page comes last: no broken links
    assert not [p for p in tmp_path.rglob("*") if outputs.is_temporary(p.name)]


def test_missing_matplotlib_is_one_sentence(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(GtokError, match=r"need matplotlib .*pip install matplotlib") as caught:
        write_report(_result(), tmp_path)
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")
    assert not (tmp_path / "index.html").exists()


@pytest.mark.subprocess
def test_importing_gtok_does_not_import_matplotlib():
    code = "import sys, gtok, gtok.evaluate; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- in a real browser -------------------------------------------------------------------

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium, chromium-browser or google-chrome on PATH "
    "(apt-get install chromium; .ci/run installs it)",
)
# index.html plus this script, beside it: marks the body with the images that did not load
CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0);
  document.body.dataset.images = images.length;
  document.body.dataset.broken = broken.map(i => i.getAttribute("src")).join(" ") || "none";
  document.body.dataset.firstImage = Math.round(images[0].getBoundingClientRect().bottom);
});
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--no-first-run", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@needs_chromium
def test_page_renders_in_chromium_with_every_image_loaded(report, tmp_path):
    shot = tmp_path / "page.png"
    page = (report / "index.html").as_uri()
    result = _chromium(f"--screenshot={shot}", "--window-size=1200,2000", page, profile=tmp_path)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # drawn
    check = report / "check.html"
    check.write_text((report / "index.html").read_text().replace("</body>", CHECK + "</body>"))
    try:
        dom = _chromium("--virtual-time-budget=10000", "--window-size=1280,1000", "--dump-dom",
                        check.as_uri(), profile=tmp_path).stdout  # fmt: skip
    finally:
        check.unlink()
    found = re.search(
        r'<body data-images="(\d+)" data-broken="([^"]*)" data-first-image="(\d+)"', dom
    )
    assert found, dom[:2000]
    assert found.groups()[:2] == ("21", "none")  # 18 grid pictures and 3 plots, all loaded
    assert int(found.group(3)) <= 1000  # the first screenful (1280 x 1000) holds a whole picture
