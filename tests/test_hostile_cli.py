"""Hostile input to `gtok`: each mistake ends with one sentence and exit 1 (2 for a
usage error), never a traceback, a segfault or unbounded memory.

Checks made before any work are run in-process (fast); model loading, Taichi's kernel cache
and Ctrl-C run `gtok` in a subprocess under hostilekit's memory limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from evalkit import save_model
from hostilekit import GTOK, REPO, assert_no_temp_files, assert_one_error, run_gtok
from shardmaker import write_clean_shards

from gtok.cli.main import app
from gtok.encode import encode_shards
from gtok.store import TokenStore


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_clean_shards(folder, 2, 2)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory, shards, model) -> Path:
    out = tmp_path_factory.mktemp("store") / "tokens.zarr"
    encode_shards([shards], out, model, batch_size=4, workers=0)
    return out


def _in_process(runner, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    """`gtok ARGS` through Click's runner, as the CompletedProcess hostilekit checks."""
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


# ------------------------------------------------------------ checks before any work (14)


@pytest.fixture
def files(tmp_path, model, shards, store) -> dict[str, Path]:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    state = {"gs_embed.gaussian_lifter.anchor": torch.tensor(3.0)}  # 0-d anchor
    torch.save({"state_dict": state}, tmp_path / "scalar-anchor.ckpt")
    torch.save({"state_dict": {1: torch.zeros(2)}}, tmp_path / "int-keys.ckpt")
    return {
        "MODEL": model,
        "SHARDS": shards,
        "STORE": store,
        "FILE": tmp_path / "file",
        "BINARY": tmp_path / "binary",
        "OUT": tmp_path / "out",
        "SCALAR_ANCHOR": tmp_path / "scalar-anchor.ckpt",
        "INT_KEYS": tmp_path / "int-keys.ckpt",
    }


CASES = [  # (arguments with placeholders, exit code, text of the one error)
    ("encode SHARDS -o OUT -m MODEL --workers -1", 2, "'--workers'"),
    ("eval SHARDS -m MODEL --workers -1", 2, "'--workers'"),
    ("pack SHARDS -o OUT --workers -1", 2, "'--workers'"),
    ("decode STORE -o OUT --format wds --shard-size 0", 2, "'--shard-size'"),
    ("encode SHARDS -o FILE -m MODEL --workers 0", 1, "is a file; give a folder"),
    ("decode STORE -o FILE", 1, "is a file; give a folder"),
    ("eval SHARDS -m MODEL --report FILE", 2, "is a file"),
    ("train SHARDS --preset tiny -o FILE --steps 1", 2, "is a file"),
    ("pack SHARDS -o FILE", 1, "is a file"),
    ("convert-official INT_KEYS -o FILE", 2, "is a file"),
    ("decode STORE -o OUT --config BINARY", 2, "is not UTF-8 text"),
    ("decode STORE -o OUT --keys @BINARY", 2, "is not UTF-8 text"),
    ("encode SHARDS -o OUT -m MODEL --workers 0 --device meta", 1, "gtok runs on cpu or cuda"),
    ("decode STORE -o OUT --device meta", 1, "gtok runs on cpu or cuda"),
    ("eval SHARDS -m MODEL --workers 0 --device meta", 1, "gtok runs on cpu or cuda"),
    ("encode SHARDS -o OUT -m MODEL --max-pixels -1", 2, "'--max-pixels'"),
    ("pack SHARDS -o OUT --max-pixels -1", 2, "'--max-pixels'"),
    ("convert-official SCALAR_ANCHOR -o OUT", 1, "anchor shape []"),
    ("convert-official INT_KEYS -o OUT", 1, "keys that are not names (such as [1])"),
]


@pytest.mark.parametrize(("command", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_options_and_inputs_are_one_sentence_before_any_work(
    runner, files, command, code, message
):
    args = [files.get(word, word) for word in command.split()]
    args = [f"@{files['BINARY']}" if a == "@BINARY" else a for a in args]
    assert_one_error(_in_process(runner, *args), exit_code=code, contains=message)
    assert not files["OUT"].exists()


def test_overwrite_through_a_symbolic_link_is_refused_and_deletes_nothing(
    runner, tmp_path, shards, model, store
):
    target = tmp_path / "real.zarr"
    shutil.copytree(store, target)
    link = tmp_path / "link.zarr"
    link.symlink_to(target)
    args = ["encode", shards, "-o", link, "-m", model, "--workers", "0", "--overwrite"]
    line = assert_one_error(_in_process(runner, *args), contains="is a symbolic link")
    assert str(target) in line
    assert len(TokenStore(target)) == len(TokenStore(store))


# ------------------------------------------------------ model directories checked first (5)


def _break(model_dir: Path, **architecture) -> None:
    path = model_dir / "config.json"
    document = json.loads(path.read_text())
    document["architecture"].update(architecture)
    path.write_text(json.dumps(document))


# values that would build 100000 modules, or gigabytes of 4096-channel convs (bounds of the
# other fields: tests/test_model.py)
BREAKAGES = {
    "num_res_blocks": ({"num_res_blocks": 100000}, "num_res_blocks must be an integer in [1, 16]"),
    "weights": (
        {"ch": 1024, "ch_mult": [1, 4, 4], "num_res_blocks": 16},
        "the two files do not belong together",
    ),
}


@pytest.mark.subprocess
@pytest.mark.parametrize("breakage", ["num_res_blocks", "weights"])
def test_model_directory_is_checked_before_the_model_is_built(tmp_path, model, shards, breakage):
    changes, message = BREAKAGES[breakage]
    broken = shutil.copytree(model, tmp_path / "broken")
    _break(broken, **changes)
    started = time.monotonic()
    result = run_gtok("encode", shards, "-o", tmp_path / "out.zarr", "-m", broken, "--workers", "0")
    line = assert_one_error(result, contains=message)
    assert str(broken) in line
    assert time.monotonic() - started < 60


@pytest.mark.subprocess
@pytest.mark.parametrize("breakage", ["weights"])
def test_store_recorded_model_is_checked_before_the_model_is_built(
    tmp_path, model, shards, breakage
):
    recorded = shutil.copytree(model, tmp_path / "recorded")
    encode_shards([shards], tmp_path / "tokens.zarr", recorded, batch_size=4, workers=0)
    changes, message = BREAKAGES[breakage]
    _break(recorded, **changes)
    result = run_gtok("decode", tmp_path / "tokens.zarr", "-o", tmp_path / "recon")
    line = assert_one_error(result, contains=message)
    assert str(recorded) in line


# ----------------------------------------------------------- unwritable kernel cache (13)


@pytest.mark.subprocess
def test_unwritable_kernel_cache_is_one_warning_and_exit_0(tmp_path):
    blocker = tmp_path / "a-file"  # nothing can be created below a regular file, even by root
    blocker.write_text("")
    result = run_gtok("env", env={"GTOK_KERNEL_CACHE": str(blocker / "cache")})
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, detail  # was 139: Taichi segfaulted writing it at exit
    assert "Traceback" not in result.stderr, detail
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(blocker) in warnings[0], detail
    fallback = re.search(r"using (\S+) for this run", warnings[0])[1]
    assert not Path(fallback).exists()  # the temporary cache is removed at exit
    assert re.search(r"taichi kernels +ok", result.stdout), detail


def test_unwritable_home_falls_back_the_same_way(tmp_path, monkeypatch, capsys):
    """Without GTOK_KERNEL_CACHE the cache is under $HOME (empty XDG_CACHE_HOME is unset)."""
    from gtok.kernels import runtime

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.delenv("GTOK_KERNEL_CACHE")
    assert runtime.cache_dir() == blocker / ".cache" / "gtok" / "taichi"
    folder = runtime._usable_cache_dir()
    assert folder.is_dir() and not folder.is_relative_to(blocker)
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning:") and "\n" not in warning
    assert f"{blocker}/.cache/gtok/taichi is not writable" in warning


# ------------------------------------------------------------------- Ctrl-C (14, SIGINT)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.subprocess
def test_ctrl_c_while_the_worker_starts_is_one_line(tmp_path, model, shards):
    """The spawned DataLoader worker ignores SIGINT (it printed a traceback of its own);
    resuming after an interruption is test_encode's kill test."""
    out = tmp_path / "tokens.zarr"
    args = [str(shards), "-o", str(out), "-m", str(model), "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [*GTOK, "encode", *args, "--workers", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C goes to the whole process group
    )
    deadline = time.monotonic() + 120
    while not _children(run.pid) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # the spawned worker is importing torch now
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted; rerun the same command to resume." in stderr
    assert_no_temp_files(out)
