"""Hostile output folders: links planted where gtok writes (issue 30, point 9).

Promise (README, "Reliability"): every file gtok writes is created under a new random name
with `O_EXCL | O_NOFOLLOW` and renamed into place (`gtok.outputs`), so a symbolic link
planted in an output folder, at a name an earlier gtok used or at any other, is never
written through.
"""

# ruff: noqa: F811  (fixtures imported from evalkit are redefined as test arguments)

from __future__ import annotations

from pathlib import Path

import pytest
from evalkit import _encode, one_thread, shards, vq_model, vq_store  # noqa: F401
from test_hostile_outputs import NO_METRICS, _convert_checkpoint

from cli.main import app
from gtok import outputs
from gtok.decode import key_path
from gtok.outputs import is_temporary, write_atomically
from gtok.store import TokenStore

SECRET = b"the victim's own bytes\n"


def _old_temporary(target: Path) -> Path:
    """The fixed temporary name gtok wrote `target` under before issue 30."""
    return target.with_name(f".{target.name}.tmp")


def _plant(link: Path, victim: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    return link


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    return victim


def _decode_png_targets(store: Path, out: Path) -> list[Path]:
    keys = TokenStore(store).keys()
    return [out / f"{key_path(key)}.png" for key in keys]


REPORT_FILES = ["index.html", "metrics.json", "per_image.csv", "grid.png", "plots/psnr.png"]


@pytest.mark.parametrize("command", ["decode-png", "decode-wds", "eval-report", "convert-official"])
def test_a_link_at_an_old_temporary_name_is_not_written_through(
    command, tmp_path, runner, shards, vq_model, vq_store
):
    """Point 9: a symbolic link planted at each temporary name gtok used to write through
    (`.img0001.png.tmp`, `.recon-000000.tar.tmp`, `.index.html.tmp`, ...) is left alone and
    its target keeps its bytes; every output is a regular file."""
    victim, out = _victim(tmp_path), tmp_path / "out"
    if command == "decode-png":
        args = ["decode", vq_store, "-o", out]
        targets = _decode_png_targets(vq_store, out)
    elif command == "decode-wds":
        args = ["decode", vq_store, "-o", out, "--format", "wds"]
        targets = [out / "recon-000000.tar"]
    elif command == "eval-report":
        args = ["eval", shards, "-m", vq_model, "--workers", "0", "--report", out, *NO_METRICS]
        targets = [out / name for name in REPORT_FILES]
    else:
        args = ["convert-official", _convert_checkpoint(tmp_path), "-o", out]
        targets = [out / "model.safetensors", out / "config.json"]
    links = [_plant(_old_temporary(target), victim) for target in targets]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    assert victim.read_bytes() == SECRET
    assert all(link.is_symlink() and link.resolve() == victim for link in links)
    for target in targets:
        assert target.is_file() and not target.is_symlink(), target


def test_temporary_files_are_created_exclusively(tmp_path, monkeypatch):
    """Point 9 at the helper every writer uses: a random name that is already taken by a link
    (to a file, or dangling) is never opened; the next name is tried."""
    victim = _victim(tmp_path)
    names = iter(["0" * 16, "1" * 16, "2" * 16])
    monkeypatch.setattr(outputs.secrets, "token_hex", lambda _: next(names))
    out = tmp_path / "out"
    out.mkdir()
    to_victim = _plant(out / f".gtok-{'0' * 16}.tmp", victim)
    dangling = _plant(out / f".gtok-{'1' * 16}.tmp", tmp_path / "made-through-a-link")
    write_atomically(out / "result.bin", b"new bytes")
    assert (out / "result.bin").read_bytes() == b"new bytes"
    assert victim.read_bytes() == SECRET and not (tmp_path / "made-through-a-link").exists()
    assert to_victim.is_symlink() and dangling.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [to_victim.name, dangling.name, "result.bin"]
    )
    assert not any(is_temporary(p.name) and not p.is_symlink() for p in out.iterdir())
