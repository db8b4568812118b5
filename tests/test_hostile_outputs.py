"""Hostile outputs: keys that collide as paths, a full disk or read-only output folder, and
reconstruction folders holding things that are not reconstructions.

Promise (docs/reliability.md): decode writes every row whose key a file system can hold
(colliding and over-long keys included) and exits 1 naming the rows it could not write; a
refused write (full disk, read-only folder, file size limit) ends every writing command with
one `error:` line naming the file and no temporary file left; eval reads only regular files
of at most 64 MiB as reconstructions and records any other one as a skipped sample.
"""

from __future__ import annotations

import errno
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from evalkit import _encode
from hostilekit import assert_no_temp_files, assert_one_error, run_gtok
from shardmaker import jpeg, write_tar

from gtok import outputs
from gtok.cli.main import app
from gtok.data.tario import escape_name, read_tar
from gtok.decode import HASHED_DIR, read_index, wds_key_path
from gtok.evaluate import sources
from gtok.evaluate.sources import folder_index
from gtok.outputs import describe_write_failure
from gtok.store import TokenStore

# sample keys that collide as paths: a file and a folder of one name, names that differ in
# case only, a folder named like a label member, a name longer than a file system takes
HOSTILE = ["a", "a.png/b", "A", "a.cls/c", "d/" + "x" * 250, "e/f", "e"]
FULL = 3000  # bytes per file: every command's first real output file is larger
NO_METRICS = ["--skip", "lpips-vgg", "--skip", "lpips-alex", "--skip", "rfid"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, vq_model) -> tuple[Path, Path]:
    """(a shard of HOSTILE keys, its token store encoded with the VQ model)."""
    folder = tmp_path_factory.mktemp("hostile")
    shard = write_tar(folder / "shard.tar", [(k, {"jpg": jpeg(i)}) for i, k in enumerate(HOSTILE)])
    return shard, _encode(shard, folder / "tokens.zarr", vq_model)


def eval_json(runner, *args: str) -> dict:
    result = runner.invoke(app, ["eval", *args, *NO_METRICS, "--workers", "0", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_colliding_and_long_keys_are_all_written_and_read_back(tmp_path, hostile, runner):
    shard, store = hostile
    keys = TokenStore(store).keys()
    assert sorted(keys) == sorted(f"shard.tar/{k}" for k in HOSTILE)
    out = tmp_path / "png"
    result = runner.invoke(app, ["decode", str(store), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["written"] == len(HOSTILE)
    assert (out / "shard.tar" / "a.png").is_file()
    assert (out / "shard.tar" / "a%2Epng" / "b.png").is_file()
    hashed = read_index(out)  # the long key, and "A" (it differs from "a" only in case)
    assert set(hashed) == {"shard.tar/A", f"shard.tar/d/{'x' * 250}"}
    assert all((out / f"{p}.png").is_file() for p in hashed.values())
    pairs = eval_json(runner, "--reference", str(shard), "--reconstructed", str(out))
    assert pairs["n"] == len(HOSTILE) and pairs["skipped"] == 0
    assert pairs["unmatched_reconstructions"] == 0
    # each key's file holds its own reconstruction: the one the tar has under the key
    wds = tmp_path / "wds"
    result = runner.invoke(app, ["decode", str(store), "-o", str(wds), "--format", "wds"])
    assert result.exit_code == 0, result.stderr
    members = {s.key: s.files["png"] for s in read_tar(str(wds / "recon-000000.tar"))}
    files = folder_index(out)
    for key in keys:  # read_tar escapes a member name's "%2E" as "%252E" (reversibly)
        member = members[escape_name(wds_key_path(key).encode())]
        assert files[key].read_bytes() == member, key
    assert len(set(members.values())) == len(keys)  # seven different images
    from_tars = eval_json(runner, "--reference", str(shard), "--reconstructed", str(wds))
    assert (from_tars["n"], from_tars["skipped"], from_tars["psnr"]) == (
        pairs["n"],
        0,
        pairs["psnr"],
    )


def test_webdataset_members_are_never_both_file_and_folder(tmp_path, hostile, runner):
    _, store = hostile
    out = tmp_path / "wds"
    result = runner.invoke(app, ["decode", str(store), "-o", str(out), "--format", "wds"])
    assert result.exit_code == 0, result.stderr
    with tarfile.open(out / "recon-000000.tar") as tar:
        names = tar.getnames()
    folders = {str(Path(n).parent) for n in names}
    assert not folders & set(names), names
    stems = [str(Path(n).parent / Path(n).name.split(".")[0]) for n in names]
    assert set(stems) == {wds_key_path(f"shard.tar/{k}") for k in HOSTILE}


def test_rows_that_cannot_be_written_are_listed_and_exit_1(tmp_path, hostile, runner):
    _, store = hostile
    out = tmp_path / "taken"
    (out / "shard.tar" / "a.png").mkdir(parents=True)  # a folder where key a's file goes
    (out / "shard.tar" / "e.png").mkdir()
    result = runner.invoke(app, ["decode", str(store), "-o", str(out), "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["written"] == len(HOSTILE) - 2
    assert {f["key"] for f in summary["failed"]} == {"shard.tar/a", "shard.tar/e"}
    assert "Is a directory" in summary["failed"][0]["reason"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        'error: 2 of 7 rows were not written (listed under "failed" in the JSON); the other '
        "rows were."
    ]
    assert (out / "shard.tar" / "a%2Epng" / "b.png").is_file()  # decoded after the failure
    assert_no_temp_files(out)


def _images(folder: Path) -> Path:
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(i, (64, 64)))
    return folder


def _convert_checkpoint(folder: Path) -> Path:
    from test_convert import _synthetic_state

    path = folder / "last.ckpt"
    torch.save({"state_dict": _synthetic_state("cifar")}, path)
    return path


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["decode", "pack", "encode", "eval-report", "convert-official"])
def test_full_disk_is_one_sentence_and_no_temporary_file(
    command, tmp_path, shards, vq_model, vq_store
):
    out = tmp_path / "out"
    if command == "pack":
        args = ["pack", _images(tmp_path / "images"), "-o", out]
    elif command == "convert-official":
        args = ["convert-official", _convert_checkpoint(tmp_path), "-o", out]
    else:
        args = {
            "decode": ["decode", vq_store, "-o", out],
            "encode": ["encode", shards, "-m", vq_model, "-o", out, "--workers", "0"],
            "eval-report": ["eval", shards, "-m", vq_model, "--workers", "0", "--report", out,
                            *NO_METRICS],
        }[command]  # fmt: skip
    env = {"GTOK_KERNEL_CACHE": str(tmp_path / "kernels"), "GTOK_WEIGHTS": str(tmp_path / "w")}
    result = run_gtok(*args, env=env, file_size_limit=FULL)
    line = assert_one_error(result, contains="File too large")
    assert line.startswith(f"error: cannot write {out}") and "ulimit -f" in line, line
    assert_no_temp_files(out, markers=(".tmp", ".partial", ".part", ".tmp-"))


@pytest.mark.parametrize(
    ("output", "refused"),
    [("png", (outputs, "create_temporary")), ("wds", (tarfile.TarFile, "addfile"))],
)
def test_read_only_output_is_one_sentence(output, refused, tmp_path, vq_store, runner, monkeypatch):
    """EROFS from the creation of the first file (png) or the first write into it (wds)
    (simulated: root writes anywhere)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(*refused, refuse)
    out = tmp_path / "ro"
    result = runner.invoke(app, ["decode", str(vq_store), "-o", str(out), "--format", output])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: cannot write {out}")
    assert "Read-only file system; choose an output folder you can write to." in result.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]  # no file, temporary or final


def test_only_write_failures_that_name_a_file_are_user_errors():
    named = OSError(errno.ENOSPC, "No space left on device", "/x/y")
    assert describe_write_failure(named) == (
        "cannot write /x/y: No space left on device; free space or choose another output."
    )
    assert describe_write_failure(OSError(errno.ENOSPC, "No space left on device")) is None
    assert describe_write_failure(OSError(errno.EIO, "Input/output error", "/x")) is None
    assert describe_write_failure(ValueError("x")) is None


@pytest.mark.subprocess
def test_eval_skips_what_is_not_a_reconstruction(tmp_path, shards, vq_store, runner):
    """A link to /dev/zero, a FIFO, a sparse file over the cap and garbage (the first file
    in order, which also sets the crop size) are skipped with reasons; the rest is scored."""
    out = tmp_path / "recon"
    assert runner.invoke(app, ["decode", str(vq_store), "-o", str(out)]).exit_code == 0
    files = sorted(out.rglob("*.png"))
    garbage, zero, fifo, huge = files[:4]
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    zero.unlink()
    zero.symlink_to("/dev/zero")
    fifo.unlink()
    os.mkfifo(fifo)
    with open(huge, "r+b") as handle:
        handle.truncate(sources.MAX_RECONSTRUCTION_BYTES + 1)
    env = {"GTOK_WEIGHTS": str(tmp_path / "w"), "TORCH_HOME": str(tmp_path / "t")}
    result = run_gtok(
        "eval", "--reference", shards, "--reconstructed", out, *NO_METRICS, "--workers", "0",
        "--json", env=env, memory_limit=3 << 30, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    reasons = {s["key"]: s["reason"] for s in document["skipped_samples"]}
    key = {f: f.relative_to(out).as_posix()[: -len(".png")] for f in (garbage, zero, fifo, huge)}
    assert "not a regular file" in reasons[key[zero]] and "not a regular file" in reasons[key[fifo]]
    assert f"more than the {sources.MAX_RECONSTRUCTION_BYTES}" in reasons[key[huge]]
    assert "image" in reasons[key[garbage]]
    assert document["n"] == len(files) - 4
    assert HASHED_DIR not in {p.name for p in out.iterdir()}
