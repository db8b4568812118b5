"""Hostile output folders: links planted where gtok writes, two packs into one folder at once,
demo parts that are links.

Promise (docs/reliability.md): every file gtok writes is created under a new random name
with `O_EXCL | O_NOFOLLOW` and renamed into place (`gtok.outputs`), so a symbolic link
planted in an output folder, at a name an earlier gtok used or at any other, is never
written through; one `gtok pack` at a time writes into a folder (a second one is refused
with one sentence, a killed one's lock and temporary files are taken over); `gtok demo`
neither deletes nor writes through a link in the place of one of its parts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hostilekit import assert_no_temp_files, assert_one_error, run_gtok, start_gtok
from shardmaker import jpeg
from test_hostile_outputs import NO_METRICS, _convert_checkpoint

from gtok import outputs
from gtok.cli.main import app
from gtok.decode import key_path
from gtok.outputs import is_temporary, write_atomically
from gtok.pack import MANIFEST, ShardStats, shard_name, stats_name
from gtok.store import TokenStore

SECRET = b"the victim's own bytes\n"
PACK_FILES = 600  # enough for a pack to take a while: stopped with SIGSTOP mid-way
PER_SHARD = 20


def _old_temporary(target: Path) -> Path:
    """The fixed temporary name older gtok wrote `target` under."""
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


@pytest.mark.slow
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


def _photos(folder: Path, count: int = PACK_FILES) -> Path:
    folder.mkdir()
    for i in range(count):
        (folder / f"{i:04d}.jpg").write_bytes(jpeg(i, (64, 64)))
    return folder


def _stopped_while_packing(src: Path, out: Path) -> subprocess.Popen:
    """A `gtok pack SRC -o OUT` stopped (SIGSTOP) as soon as it has started writing OUT."""
    first = start_gtok("pack", src, "-o", out, "--per-shard", PER_SHARD)
    deadline = time.monotonic() + 120
    while not (out / MANIFEST).exists() and first.poll() is None:
        assert time.monotonic() < deadline, "the first pack never started writing"
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)
    time.sleep(0.2)  # a stop is asynchronous: let it land
    assert first.poll() is None, f"the first pack ended before it was stopped: {first.stderr}"
    return first


def _assert_complete_pack(out: Path, files: int) -> dict:
    """The pack in `out` is complete and its records agree with the tars on disk."""
    manifest = json.loads((out / MANIFEST).read_text())
    shards = -(-files // PER_SHARD)
    sizes = [(out / shard_name(i)).stat().st_size for i in range(shards)]
    stats = [ShardStats.read(out / stats_name(i)) for i in range(shards)]
    assert manifest["complete"] is True
    assert [s.bytes for s in stats] == sizes
    assert manifest["summary"]["bytes"] == sum(sizes)
    assert manifest["summary"]["packed"] == sum(s.count for s in stats) == files
    assert not (out / "locks").exists()
    assert not [p for p in out.iterdir() if is_temporary(p.name)]
    assert_no_temp_files(out)
    return manifest


@pytest.mark.subprocess
def test_a_second_pack_into_a_busy_folder_is_refused(tmp_path):
    """Point 5: two `gtok pack` into one folder at once. The second is refused with one
    sentence naming the first, which then finishes a correct pack (no traceback, stats and
    summary agree with the tars)."""
    src, out = _photos(tmp_path / "photos"), tmp_path / "shards"
    first = _stopped_while_packing(src, out)
    try:
        second = run_gtok("pack", src, "-o", out, "--per-shard", PER_SHARD)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    line = assert_one_error(second, contains=f"is in use by process {first.pid} on ")
    assert f"the pack folder {out}" in line and "pack into another folder" in line, line
    assert first.returncode == 0 and "Traceback" not in stderr, stderr
    _assert_complete_pack(out, PACK_FILES)


@pytest.mark.subprocess
def test_a_killed_pack_leaves_nothing_that_stops_the_next(tmp_path):
    """Point 5: a pack killed mid-way (SIGKILL) leaves its lock and temporary file; the next
    pack takes the lock over (said on stderr), deletes the temporary file and finishes."""
    src, out = _photos(tmp_path / "photos"), tmp_path / "shards"
    first = _stopped_while_packing(src, out)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert (out / "locks" / "pack.lock").is_file()
    again = run_gtok("pack", src, "-o", out, "--per-shard", PER_SHARD)
    assert again.returncode == 0, again.stderr
    assert f"took over the stale lock of the pack folder {out}" in again.stderr
    _assert_complete_pack(out, PACK_FILES)


@pytest.mark.subprocess
@pytest.mark.parametrize("part", ["recon", "tokens.zarr", "demo.json"])
def test_demo_never_replaces_a_link_in_place_of_a_part(part, tmp_path, standin_default, no_weights):
    """Point 16: `gtok demo -o D` where D/recon (a folder's place), D/tokens.zarr (a dangling
    link) or D/demo.json (a file's place) is a symbolic link: one sentence naming it; the link
    and what it points at are left as they were."""
    out, elsewhere = tmp_path / "demo", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.png").write_bytes(SECRET)
    victim = _victim(tmp_path)
    target = {"recon": elsewhere, "tokens.zarr": tmp_path / "nowhere", "demo.json": victim}[part]
    link = _plant(out / part, target)
    result = run_gtok("demo", "-o", out, timeout=120)
    line = assert_one_error(result, contains=f"{link} is a symbolic link")
    assert "remove the link" in line, line
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (elsewhere / "keep.png").read_bytes() == SECRET and victim.read_bytes() == SECRET
    assert not (tmp_path / "nowhere").exists()
