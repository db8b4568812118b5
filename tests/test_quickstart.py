"""The README's Quickstart and "Packing images" commands, run as written (read from README.md)
in a folder holding the images they name, with a stand-in default model."""

from __future__ import annotations

# ruff: noqa: F811  (fixtures imported from defaultkit / evalkit are redefined as test arguments)
import json
import re
import shlex
import shutil
from pathlib import Path

from defaultkit import (  # noqa: F401
    standin_default,
    standin_model,
)
from evalkit import (  # noqa: F401
    no_weights,
    one_thread,
)

from cli.main import app
from gtok.demo import DEMO_PHOTOS
from gtok.store import TokenStore

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Quickstart", "## Packing images")


def readme_commands(section: str) -> list[list[str]]:
    """The `gtok ...` lines of the bash blocks of one README section, as argument lists."""
    text = README.read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    blocks = re.findall(r"```bash\n(.*?)```", text[start : end if end > 0 else None], re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("gtok ")]


def _copy(photos: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, folder / photo.name)


def test_readme_commands_run_as_written(runner, tmp_path, monkeypatch, standin_default, no_weights):
    photos = sorted(DEMO_PHOTOS.glob("*.jpg"))[:4]
    _copy(photos[:2], tmp_path / "my-photos")
    _copy(photos[2:], tmp_path / "my-photos" / "more")
    _copy(photos[:2], tmp_path / "photos")
    _copy(photos[:2], tmp_path / "train" / "cats")
    _copy(photos[2:], tmp_path / "train" / "dogs")
    monkeypatch.chdir(tmp_path)
    env = {f"GTOK_{c}_WORKERS": "0" for c in ("PACK", "ENCODE", "EVAL")}  # no worker processes
    commands = [c for section in SECTIONS for c in readme_commands(section)]
    assert [c[0] for c in commands] == ["pack", "encode", "decode", "eval", "pack", "pack"]
    for command in commands:
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 0, (command, result.stderr)
    assert len(TokenStore("tokens.zarr")) == 4
    assert len(list(Path("recon").rglob("*.gaussians.png"))) == 4
    assert Path("report/metrics.json").is_file() and Path("report/grid.png").is_file()
    classes = json.loads((tmp_path / "train-shards" / "classes.json").read_text())
    assert classes == {"cats": 0, "dogs": 1}
