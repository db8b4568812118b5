"""Damaged token stores given to `gtok info`, `verify`, `decode` and `eval`.

One small store is encoded once (evalkit's); each case damages a copy the way a disk, a
half-finished copy or a hand edit would, and every command must end with one `error:`
sentence naming the store and the problem (exit 1, no traceback), except that `verify`
lists the bad rows of a store that opens (exit 1) and `info` summarizes such a store as it
is. Most cases run in process; the ones that used to allocate gigabytes run as a subprocess
under hostilekit's memory limit, so a regression fails instead of taking the machine down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from hostilekit import assert_one_error, run_gtok

import gtok
from gtok.cli.main import app
from gtok.store import schema

G = 8  # evalkit's model: 8 Gaussians, 64 codes

# -- damage ----------------------------------------------------------------------------------


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def more_tokens(h: dict) -> None:
    """Header and model config both say G + 1 tokens (the arrays hold G)."""
    h["model"]["num_tokens"] = G + 1
    h["model"]["config"]["num_gaussians"] = G + 1


def header(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Edit the header (root attribute `gtok`)."""
    return lambda s: _edit_json(s / "zarr.json", lambda d: edit(d["attributes"]["gtok"]))


def array_meta(name: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Edit array `name`'s metadata, in its zarr.json and in the consolidated copy."""

    def damage(s: Path) -> None:
        _edit_json(s / name / "zarr.json", edit)
        _edit_json(s / "zarr.json", lambda d: edit(d["consolidated_metadata"]["metadata"][name]))

    return damage


def rows(name: str, value, selection=slice(0, 3)) -> Callable[[Path], None]:
    """Overwrite rows `selection` of array `name` with `value`, through zarr."""

    def damage(s: Path) -> None:
        zarr.open_array(s / name, mode="r+")[selection] = value

    return damage


def both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda s: [d(s) for d in damages]


def shard_file(s: Path, name: str) -> Path:
    return next(p for p in (s / name / "c").rglob("*") if p.is_file())


def truncate(name: str) -> Callable[[Path], None]:
    def damage(s: Path) -> None:
        path = shard_file(s, name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def scribble(name: str) -> Callable[[Path], None]:
    """Overwrite the first bytes of the array's first chunk (its zstd frame header)."""

    def damage(s: Path) -> None:
        path = shard_file(s, name)
        data = bytearray(path.read_bytes())
        data[:8] = b"garbage!"
        path.write_bytes(bytes(data))

    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda s: shutil.rmtree(s / name)


def zstd_bomb(size: int) -> bytes:
    """A valid zstd frame of `size` zero bytes made of RLE blocks: ~4 bytes per 128 KiB."""
    block = 128 << 10
    out = bytearray(b"\x28\xb5\x2f\xfd\xe0" + size.to_bytes(8, "little"))  # single segment
    for start in range(0, size, block):
        n = min(block, size - start)
        last = start + n >= size
        out += (int(last) | 1 << 1 | n << 3).to_bytes(3, "little") + b"\x00"  # RLE block
    return bytes(out)


def bomb(name: str, size: int = 3 << 30) -> Callable[[Path], None]:
    """Make inner chunk 0 of `name`'s first shard a `zstd_bomb` (with a valid index crc)."""

    def damage(s: Path) -> None:
        path = shard_file(s, name)
        raw = path.read_bytes()
        entries = schema.SHARD_ROWS // schema.CHUNK_ROWS
        data, index = raw[: -(16 * entries + 4)], raw[-(16 * entries + 4) : -4]
        table = np.frombuffer(index, "<u8").reshape(entries, 2).copy()
        payload = zstd_bomb(size)
        table[0] = (len(data), len(payload))
        index = table.tobytes()
        crc = google_crc32c.value(index).to_bytes(4, "little")
        path.write_bytes(data + payload + index + crc)

    return damage


def drop_indices(s: Path) -> None:
    shutil.rmtree(s / "indices")
    _edit_json(s / "zarr.json", lambda d: d["consolidated_metadata"]["metadata"].pop("indices"))


def garbage_json(s: Path) -> None:
    (s / "zarr.json").write_text("{ not json")


def chunk_rows(rows: int) -> Callable[[dict], None]:
    """Chunks (Zarr shards and their inner chunks) of `rows` rows: a valid Zarr layout."""

    def edit(meta: dict) -> None:
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = rows
        meta["codecs"][0]["configuration"]["chunk_shape"][0] = rows

    return edit


COMMANDS = ("info", "verify", "decode", "eval")
READERS = ("verify", "decode", "eval")  # info reads no keys

# cases every command (of the third item, default all) refuses in one sentence
ERROR_CASES = {
    "garbage zarr.json": (garbage_json, "Zarr metadata cannot be read"),
    "no state": (header(lambda h: h.pop("state")), "no 'state'"),
    "a newer format version": (
        header(lambda h: h.update(format_version=schema.FORMAT_VERSION + 1)),
        f"has format version {schema.FORMAT_VERSION + 1}, written by gtok "
        f"{gtok.__version__}; this gtok ({gtok.__version__}) reads format version "
        f"{schema.FORMAT_VERSION}: upgrade gtok (pip install -U gtok) to read it.",
    ),
    "format version 0": (
        header(lambda h: h.update(format_version=0, gtok_version="0.0.1")),
        "has format version 0, written by gtok 0.0.1; this gtok",
    ),
    "no model": (header(lambda h: h.pop("model")), "no 'model"),
    "counts null": (header(lambda h: h.update(counts=None)), "'counts.shards'"),
    "geometry dtype": (header(lambda h: h.update(geometry_dtype="int8")), "geometry dtype"),
    "empty inputs": (header(lambda h: h.update(inputs={})), "'inputs.names'"),
    "G unlike the model": (
        header(lambda h: h["model"].update(num_tokens=G + 1)),
        "model config says gaussian tokens, 8 per image",
    ),
    "G unlike the arrays": (
        header(more_tokens),
        f"indices array has shape [11, {G}], the gtok format says [11, {G + 1}]",
    ),
    "no indices": (drop_indices, "no indices array"),
    "keys deleted": (remove("keys"), "keys/c/0, the keys of rows 0-10, is missing"),
    "indices uint32": (  # info: in MEMORY_CASES
        array_meta("indices", lambda m: m.update(data_type="uint32")),
        "uint32",
        READERS,
    ),
    "chunk too large": (
        array_meta("indices", chunk_rows(1 << 20)),
        f"indices array has chunk shape [1048576, {G}], the gtok format says [16384, {G}]",
    ),
    "fill value 0": (
        array_meta("indices", lambda m: m.update(fill_value=0)),
        "indices array has fill value 0",
    ),
    "64 MiB zstd bomb": (bomb("indices", 64 << 20), "claims 67,108,864 bytes where at most"),
    "indices chunk truncated": (truncate("indices"), "indices rows 0-"),
    "indices chunk scribbled": (scribble("indices"), "indices rows 0-"),
    "keys chunk scribbled": (scribble("keys"), "keys rows 0-", READERS),
}

# cases that open but whose rows hold no tokens: verify lists them, decode and eval refuse
ROW_CASES = {
    "ids out of range": (rows("indices", 100), "code id 100 outside the codebook of 64"),
    "unwritten rows": (
        both(rows("indices", 65535), rows("geometry", np.nan)),
        "code id 65535 (the mark of a row never written)",
    ),
    "NaN geometry": (rows("geometry", np.nan, (slice(1, 2), 0, 2)), "non-finite geometry"),
}

# cases that used to allocate gigabytes: a subprocess under a memory limit
MEMORY_CASES = {
    "codebook 2**40": (
        header(lambda h: h["model"].update(codebook_size=2**40)),
        "'model.codebook_size' is 1099511627776",
        ("info",),
    ),
    "uint32 indices": (
        array_meta("indices", lambda m: m.update(data_type="uint32")),
        "data type uint32",
        ("info",),
    ),
    "3 GB zstd bomb": (bomb("indices"), "claims 3,221,225,472 bytes", ("decode",)),
}


# -- running the commands ----------------------------------------------------------------------


def command(name: str, damaged: Path, shards: Path, out: Path) -> list[str]:
    return {
        "info": ["info", str(damaged)],
        "verify": ["verify", str(damaged), "--against", str(shards)],
        "decode": ["decode", str(damaged), "-o", str(out), "--device", "cpu"],
        "eval": ["eval", "--reference", str(shards), "--reconstructed", str(damaged),
                 "--workers", "0", "--device", "cpu", "--json"],
    }[name]  # fmt: skip


def invoke(runner, args: list[str]) -> subprocess.CompletedProcess:
    """Run `gtok ARGS` in process; an exception that escaped the CLI counts as a traceback."""
    result = runner.invoke(app, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\nTraceback (in process): {result.exception!r}"
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


@pytest.fixture
def damage(tmp_path, store) -> Callable[[Callable[[Path], None]], Path]:
    def make(how: Callable[[Path], None]) -> Path:
        copy = tmp_path / "damaged.zarr"
        shutil.copytree(store, copy)
        how(copy)
        return copy

    return make


@pytest.mark.parametrize("case", ERROR_CASES)
def test_damaged_store_is_one_sentence(case, damage, shards, tmp_path, runner, no_weights):
    how, phrase, *commands = ERROR_CASES[case]
    damaged = damage(how)
    for name in commands[0] if commands else COMMANDS:
        result = invoke(runner, command(name, damaged, shards, tmp_path / "out"))
        line = assert_one_error(result, contains=phrase)
        assert str(damaged) in line, f"{name}: {line}"


@pytest.mark.parametrize("case", ROW_CASES)
def test_rows_without_tokens(case, damage, shards, tmp_path, runner, no_weights):
    how, phrase = ROW_CASES[case]
    damaged = damage(how)
    info = invoke(runner, ["info", str(damaged), "--json"])
    assert info.returncode == 0, info.stderr
    verify = invoke(runner, command("verify", damaged, shards, tmp_path))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr
    assert "problems" in verify.stdout and phrase in verify.stderr, verify.stdout + verify.stderr
    for name in ("decode", "eval"):
        result = invoke(runner, command(name, damaged, shards, tmp_path / "out"))
        line = assert_one_error(result, contains=phrase)
        assert str(damaged) in line, f"{name}: {line}"


@pytest.mark.subprocess
@pytest.mark.parametrize("case", MEMORY_CASES)
def test_damage_that_used_to_take_gigabytes(case, damage, shards, tmp_path):
    how, phrase, commands = MEMORY_CASES[case]
    damaged = damage(how)
    for name in commands:
        result = run_gtok(*command(name, damaged, shards, tmp_path / "out"))
        assert_one_error(result, contains=phrase)


@pytest.mark.parametrize("args", [[], ["--append"], ["--overwrite"]], ids=str)
def test_encode_leaves_a_store_of_a_newer_format_version_untouched(
    args, damage, shards, model, runner, no_weights
):
    """Resuming, appending to or overwriting a store of a newer format version is refused
    before anything is written (`gtok.TokenStore` refuses it as the readers do)."""
    newer = damage(header(lambda h: h.update(format_version=schema.FORMAT_VERSION + 1)))
    before = {p: p.read_bytes() for p in newer.rglob("*") if p.is_file()}
    encode = ["encode", str(shards), "-o", str(newer), "-m", str(model), "--workers", "0"]
    assert_one_error(invoke(runner, [*encode, *args]), contains="upgrade gtok")
    assert {p: p.read_bytes() for p in newer.rglob("*") if p.is_file()} == before
    newer_version = rf"format version {schema.FORMAT_VERSION + 1}, .*upgrade gtok"
    with pytest.raises(gtok.GtokError, match=newer_version):
        gtok.TokenStore(newer)


def test_intact_copy_verifies(damage, shards, runner):
    """The cases above damage a store that is fine as encoded."""
    intact = damage(lambda s: None)
    result = invoke(runner, command("verify", intact, shards, intact))
    assert result.returncode == 0 and ": ok;" in result.stdout, result.stdout + result.stderr


def test_zstd_bomb_is_what_it_claims():
    """The bomb is a real zstd frame: 1 MiB of it decompresses to 1 MiB of zeros."""
    from numcodecs.zstd import decompress

    assert decompress(zstd_bomb(1 << 20)) == bytes(1 << 20)


def test_eval_geometry_statistics_of_non_finite_tokens_are_unavailable():
    """A tokenizer whose geometry is NaN gets its other scores and a reason, not a traceback."""
    import torch

    from gtok.evaluate import MetricNets, Scorer

    scorer = Scorer(MetricNets(), codebook_size=64, has_geometry=True)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    geometry = torch.rand(2, G, 5) + 0.5
    geometry[1, 3, 2] = float("nan")
    scorer.add(["a", "b"], images, images, torch.zeros(2, G, dtype=torch.long), geometry)
    result = scorer.result()
    assert "non-finite" in result["unavailable"]["geometry"] and "geometry" not in result
    assert result["n"] == 2 and result["codebook"]["used"] == 1
