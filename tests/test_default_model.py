"""The default model: its lookup, `gtok encode` / `gtok eval` without `--model` (on a stand-in),
the package data that installs it, and the shipped model itself when it is there."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
from PIL import Image
from scriptkit import BENCH, script_module

import gtok
from gtok.cli.main import app
from gtok.demo import DEMO_PHOTOS
from gtok.errors import GtokError
from gtok.model import default as default_module
from gtok.model.default import DEFAULT_MODEL_ENV, SHIPPED_MODEL_DIR, default_model_dir
from gtok.store import TokenStore

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FILES = [SHIPPED_MODEL_DIR / n for n in ("config.json", "model.safetensors")]
MAX_BYTES = 20 * 1000 * 1000


def test_lookup_follows_the_environment_variable(standin_default):
    assert default_model_dir() == standin_default
    assert gtok.model.default_model_dir() == standin_default


def test_a_bad_override_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(GtokError, match=f"^{DEFAULT_MODEL_ENV}=.*does not exist"):
        default_model_dir()


def test_missing_shipped_files_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(default_module, "SHIPPED_MODEL_DIR", tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(GtokError, match=r"not installed \(.* lacks model\.safetensors\); pass"):
        default_model_dir()


@pytest.mark.slow
def test_encode_without_model_uses_the_default_and_says_so(
    runner, tmp_path, shards, standin_default
):
    out = tmp_path / "tokens.zarr"
    args = ["encode", str(shards), "-o", str(out), "--workers", "0", "--batch-size", "4"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "default model" in line]
    assert said == [
        f"no model given: using the default model {standin_default} (tiny, 64 px, 64 tokens "
        "per image)"
    ]
    summary = json.loads(result.stdout)
    assert summary["model"] == str(standin_default) and summary["encoded"] == 11
    store = TokenStore(out)
    assert store.model_path == str(standin_default.resolve())
    assert store.weights_sha256 == gtok.model.weights_sha256(standin_default)
    quiet = runner.invoke(app, ["-q", *args, "--overwrite"])
    assert quiet.exit_code == 0, quiet.stderr
    assert "default model" not in quiet.stderr


def test_eval_without_model_uses_the_default(runner, shards, standin_default, no_weights):
    skip = ["--skip", "lpips-vgg", "--skip", "lpips-alex", "--skip", "rfid"]
    result = runner.invoke(app, ["eval", str(shards), "--workers", "0", *skip, "--json"])
    assert result.exit_code == 0, result.stderr
    assert f"using the default model {standin_default}" in result.stderr
    document = json.loads(result.stdout)
    assert document["model"]["path"] == str(standin_default) and document["n"] == 11


def test_without_any_default_encode_fails_with_one_line(runner, tmp_path, shards, monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.setattr(default_module, "SHIPPED_MODEL_DIR", tmp_path / "empty")
    result = runner.invoke(app, ["encode", str(shards), "-o", str(tmp_path / "t.zarr")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the default model is not installed")
    assert "; pass --model, a gtok model directory, or set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _package_data() -> list[str]:
    document = tomllib.loads((REPO / "pyproject.toml").read_text())
    return document["tool"]["setuptools"]["package-data"]["gtok"]


def test_package_data_installs_the_model_and_the_demo_photos():
    """Every file of the two folders is matched by a pattern of pyproject.toml's package data
    (a pattern applies to files directly in its folder, as setuptools globs them)."""
    patterns = _package_data()
    wanted = [
        p
        for folder in ("default_model", "demo_photos")
        for p in (REPO / "gtok" / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(p.suffix == ".jpg" for p in wanted)
    for path in wanted:
        relative = path.relative_to(REPO / "gtok").as_posix()
        assert any(
            fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/")
            for pattern in patterns
        ), relative
    for name in ("config.json", "model.safetensors"):  # the files the lead adds
        relative = f"default_model/{name}"
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), name


shipped = pytest.mark.skipif(
    not all(p.is_file() for p in SHIPPED_FILES),
    reason=f"the trained default model is not in this checkout ({SHIPPED_MODEL_DIR} lacks "
    "config.json / model.safetensors)",
)


@shipped
def test_the_shipped_model_loads_is_tiny_and_small(monkeypatch):
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    assert default_model_dir() == SHIPPED_MODEL_DIR
    tok = gtok.load_tokenizer(SHIPPED_MODEL_DIR)
    assert tok.config.preset == "tiny"
    assert (tok.config.image_size, tok.config.num_tokens) == (64, 64)
    assert sum(p.stat().st_size for p in SHIPPED_FILES) <= MAX_BYTES
    drawn_with = Image.open(REPO / "docs" / "token.png").text.get("gtok-weights-sha256")
    assert drawn_with == gtok.model.weights_sha256(SHIPPED_MODEL_DIR), (
        "docs/token.png was drawn with other weights than the shipped model's; "
        "run .venv/bin/python tools/make_token_figure.py"
    )


@shipped
def test_the_shipped_model_keeps_grayscale_gray():
    """Grayscale input comes back without a colour cast: over the 36 demo photographs in
    grayscale, the mean of R - G and of B - G of the reconstructions is within 1 level (of
    255) of 0, and the per-pixel mean |R - G|, |B - G| (cast plus colour noise) under 3
    (bench/colour.py; the default model before the GroupNorm fix, one channel per group:
    casts +3.1 / +4.1, per pixel 9.0 / 10.1; this one: -0.66 / -0.60 and 2.54 / 2.57)."""
    tok = gtok.load_tokenizer(SHIPPED_MODEL_DIR).eval()
    with script_module(BENCH / "colour.py") as colour:
        shift = colour.grayscale_shift(tok, sorted(DEMO_PHOTOS.glob("*.jpg")))
    for difference in shift.values():
        assert abs(difference["cast"]) < 1.0 and difference["per_pixel"] < 3.0, shift
