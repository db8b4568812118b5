"""One writer per part: lock files, stale locks, finalize's refusals, and races.

The races run writers, finalizers and `--overwrite`s of the same store at the same moment in
separate processes and accept exactly two outcomes per process: it finished, or it was refused
with a `GtokError`. After each race the store is either complete with exactly the expected
rows (no fill value, every key present) or unfinished, and then a plain rerun completes it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hostilekit import GTOK, assert_no_temp_files, assert_one_error
from shardmaker import write_clean_shards
from test_encode import SMALL, _save_model
from test_store import NAMES, assert_same_store, header, make_part

from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.store import Location, StoreWriter, finalize_store, schema
from gtok.store.lock import Holder, LockBusy, _boot_id, _pid_namespace, _proc_stat

REPO = Path(__file__).resolve().parents[1]


def _encode(out, shards=NAMES, *, finalize=True, overwrite=False, rng=None, **changes) -> None:
    """What `encode_shards` does to the store, with synthetic parts instead of a model."""
    with StoreWriter.open(str(out), header(**changes), overwrite=overwrite) as writer:
        if writer.state != schema.STATE_COMPLETE:
            writer.claim(shards)
        done = writer.completed(shards)
        for name in shards:
            if name not in done:
                time.sleep(rng.random() * 0.01 if rng else 0)
                writer.write_part(make_part(name))
        if finalize:
            finalize_store(str(out))


def _expected():
    parts = [make_part(n) for n in NAMES]
    return np.concatenate([p.indices for p in parts]), [k for p in parts for k in p.keys]


def assert_clean_and_complete(out) -> None:
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["gtok"]["state"] == "complete"
    indices, keys = _expected()
    got = root["indices"][...]
    assert not (got == schema.INDEX_FILL).any()
    assert np.array_equal(got, indices)
    assert [str(k) for k in root["keys"][...]] == keys
    assert not (Path(out) / "parts").exists() and not (Path(out) / "locks").exists()
    assert_no_temp_files(out, markers=(".tmp", ".partial", ".stale", ".lock"))


# ---- a lock held by another live process -----------------------------------------------------


@pytest.fixture
def other_process():
    """A live process that is not this one (its pid holds the planted locks)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _plant(
    out, name: str, pid: int, host: str | None = None, start: int | None = None, **recorded
) -> None:
    """A lock file `name` held by process `pid` (default host: this one); `recorded`: the
    holder's `pid_namespace` and `boot_id` (default: none, as older gtok versions wrote)."""
    stat = _proc_stat(pid)
    holder = Holder(
        pid=pid,
        host=host or socket.gethostname(),
        since="2025-01-02 03:04:05+00:00",
        process_start=start if start is not None else (stat[1] if stat else None),
        activity="encoding",
        token="planted",
        **recorded,
    )
    assert Location(str(out)).create(f"locks/{name}.lock", holder.to_bytes())


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    printed = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    return int(printed.stdout)


@pytest.mark.subprocess
def test_a_held_part_is_refused_naming_its_holder(tmp_path, other_process):
    out = tmp_path / "s.zarr"
    _plant(out, "c.tar", other_process.pid)
    writer = StoreWriter.open(str(out), header())
    with pytest.raises(LockBusy) as refused:
        writer.claim(NAMES)  # a.tar and b.tar are free, c.tar is not: none is taken
    message = str(refused.value)
    assert message.startswith(
        f"input shard c.tar of {out} is in use by process {other_process.pid} on "
    )
    assert message.endswith(
        "(encoding, since 2025-01-02 03:04:05+00:00); wait for it to finish, or give each "
        "parallel worker its own --shard-id."
    )
    assert sorted(p.name for p in (out / "locks").iterdir()) == ["c.tar.lock"]
    with pytest.raises(LockBusy, match=r"c\.tar"):
        writer.write_part(make_part("c.tar"))
    for name in ("a.tar", "b.tar"):
        writer.write_part(make_part(name))
    writer.close()
    assert sorted(p.name for p in (out / "locks").iterdir()) == ["c.tar.lock"]
    holder = rf"c.tar of .* is in use by process {other_process.pid} .*; wait for that worker"
    with pytest.raises(LockBusy, match=holder):
        finalize_store(str(out))
    # every part complete, but c.tar still locked by a live process: finalize refuses
    (out / "locks" / "c.tar.lock").unlink()
    with StoreWriter.open(str(out), header()) as writer:
        writer.write_part(make_part("c.tar"))
    _plant(out, "c.tar", other_process.pid)
    with pytest.raises(LockBusy, match=holder):
        finalize_store(str(out))
    assert zarr.open_group(str(out), mode="r").attrs["gtok"]["state"] == "encoding"
    _plant(out, "_store", other_process.pid)  # finalizing (or overwriting) right now
    for job in (lambda: finalize_store(str(out)), lambda: _encode(out, overwrite=True)):
        with pytest.raises(LockBusy, match=f"{out} is in use by process {other_process.pid}"):
            job()
    other_process.kill()
    other_process.wait()
    finalize_store(str(out))  # the holder is dead now: its locks are stale
    assert_clean_and_complete(out)


@pytest.mark.subprocess
def test_stale_locks_are_taken_over_and_said_so(tmp_path, capsys, other_process):
    out = tmp_path / "s.zarr"
    dead = _dead_pid()
    _plant(out, "a.tar", dead)  # its pid is gone
    _plant(out, "b.tar", other_process.pid, start=1)  # the pid lives, but was reused
    (out / "locks" / "c.tar.lock").write_text("")  # unreadable: a crash while writing it
    _encode(out)
    said = capsys.readouterr().err
    assert f"took over the stale lock of input shard a.tar of {out} and 2 more" in said
    assert f"process {dead} on {socket.gethostname()}" in said
    assert_clean_and_complete(out)


@pytest.mark.subprocess
def test_a_holder_in_another_pid_namespace_is_never_presumed_dead(tmp_path):
    """Another container with this host name: its pids are not ours, so a pid that does not
    exist here may be a live writer there."""
    out = tmp_path / "s.zarr"
    StoreWriter.open(str(out), header()).close()
    theirs = {"pid_namespace": "pid:[4026532999]", "boot_id": _boot_id()}
    assert theirs["pid_namespace"] != _pid_namespace()
    dead = _dead_pid()
    _plant(out, "a.tar", dead, **theirs)
    with pytest.raises(LockBusy) as refused:
        _encode(out)
    assert str(refused.value) == (
        f"input shard a.tar of {out} is in use by process {dead} on {socket.gethostname()} "
        "in another PID namespace (encoding, since 2025-01-02 03:04:05+00:00); wait for it "
        "to finish, or give each parallel worker its own --shard-id (if that process is gone, "
        f"delete {out}/locks/a.tar.lock)."
    )
    assert (out / "locks" / "a.tar.lock").exists()
    (out / "locks" / "a.tar.lock").unlink()  # what the message says, once it is known gone
    _encode(out)
    assert_clean_and_complete(out)


@pytest.mark.subprocess
def test_a_holder_from_before_a_reboot_is_dead(tmp_path, capsys, other_process):
    """After a reboot every pid means a new process, in any namespace."""
    out = tmp_path / "s.zarr"
    ours = {"pid_namespace": _pid_namespace(), "boot_id": "00000000-0000-0000-0000-000000000000"}
    _plant(out, "a.tar", other_process.pid, **ours)  # a live pid, but of this boot
    _plant(out, "b.tar", other_process.pid, **{**ours, "pid_namespace": "pid:[4026532999]"})
    _encode(out)
    assert f"took over the stale lock of input shard a.tar of {out} and 1 more" in (
        capsys.readouterr().err
    )
    assert_clean_and_complete(out)


@pytest.mark.subprocess
def test_lock_files_of_older_versions_count_as_this_namespace(tmp_path, capsys, other_process):
    """A lock file without pid_namespace and boot_id (gtok before they were recorded) is
    judged by its pid, as then."""
    out = tmp_path / "s.zarr"
    StoreWriter.open(str(out), header()).close()
    old_fields = ("pid", "host", "since", "process_start", "activity", "token")
    for name, pid in (("a.tar", _dead_pid()), ("b.tar", other_process.pid)):
        _plant(out, name, pid)
        path = out / "locks" / f"{name}.lock"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({field: record[field] for field in old_fields}))
    with pytest.raises(LockBusy, match=rf"b\.tar of .* in use by process {other_process.pid} on"):
        _encode(out)
    assert sorted(p.name for p in (out / "locks").iterdir()) == ["b.tar.lock"]  # a.tar's: stale
    other_process.kill()
    other_process.wait()
    _encode(out)
    assert f"took over the stale lock of input shard b.tar of {out}:" in capsys.readouterr().err
    assert_clean_and_complete(out)


def test_a_holder_on_another_host_is_never_presumed_dead(tmp_path):
    out = tmp_path / "s.zarr"
    StoreWriter.open(str(out), header()).close()
    _plant(out, "a.tar", 1, host="elsewhere.example")
    with pytest.raises(LockBusy, match=r"if that process is gone, delete .*/locks/a.tar.lock\)"):
        _encode(out)
    assert (out / "locks" / "a.tar.lock").exists()


def test_locks_are_released_on_errors_and_in_an_fsspec_store(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt), StoreWriter.open(str(out), header()) as writer:
        writer.claim(NAMES)
        assert len(list((out / "locks").iterdir())) == 3
        raise KeyboardInterrupt
    assert not (out / "locks").exists()
    memory = "memory://gtok-locks-test/s.zarr"
    StoreWriter.open(memory, header()).close()
    _plant(memory, "a.tar", 1, host="elsewhere.example")
    with pytest.raises(LockBusy, match=r"input shard a\.tar"):
        _encode(memory)
    Location(memory).remove("locks/a.tar.lock")
    _encode(memory)
    assert Location(memory).names("locks") == []


def test_finalize_refuses_a_complete_part_with_unwritten_rows(tmp_path):
    out = tmp_path / "s.zarr"
    _encode(out, finalize=False)
    for chunk in (out / "parts" / "c.tar" / "indices" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # reads as fill values now
    with pytest.raises(GtokError, match=r"part of c\.tar .* has unwritten rows in indices"):
        finalize_store(str(out))
    assert zarr.open_group(str(out), mode="r").attrs["gtok"]["state"] == "encoding"


# ---- races --------------------------------------------------------------------------------------


def _compete(out: str, role: str, start_at: float, seed: int) -> str:
    """One process of a race: "ok", or "refused: <message>" for a `GtokError`."""
    rng = random.Random(seed)
    time.sleep(max(0.0, start_at - time.time()) + rng.random() * 0.03)
    try:
        if role == "encode":
            _encode(out, rng=rng)
        elif role == "worker":  # a parallel worker of a.tar and c.tar
            _encode(out, ("a.tar", "c.tar"), finalize=False, rng=rng)
        elif role == "finalize":
            finalize_store(out)
        elif role == "overwrite":
            _encode(out, overwrite=True, rng=rng)
    except GtokError as exc:
        return f"refused: {exc}"
    return "ok"


RACES = (
    ("encode", "encode"),
    ("encode", "encode"),
    ("worker", "finalize"),
    ("overwrite", "encode"),
)


def _before(out: Path, roles: tuple[str, str]) -> None:
    if "finalize" in roles:  # b.tar is done; the worker and finalize race for the rest
        _encode(out, ("b.tar",), finalize=False)
    elif "overwrite" in roles:  # a finished store of another model, to be overwritten
        _encode(out, weights_sha256="cd" * 32)


@pytest.fixture(scope="module")
def pool():
    with multiprocessing.get_context("spawn").Pool(2) as workers:
        yield workers


@pytest.mark.subprocess
def test_races_end_in_a_clean_store_or_a_refusal(tmp_path, pool):
    outcomes = []
    for race in range(20):
        out = tmp_path / f"race{race}.zarr"
        roles = RACES[race % len(RACES)]
        _before(out, roles)
        start_at = time.time() + 0.15
        jobs = [
            pool.apply_async(_compete, (str(out), role, start_at, race * 2 + i))
            for i, role in enumerate(roles)
        ]
        results = [job.get(timeout=120) for job in jobs]  # any other exception fails here
        for result in results:
            assert result == "ok" or result.startswith("refused: "), result
            assert "\n" not in result
        outcomes += results
        if any(r.startswith("refused: ") for r in results):  # the rerun a user would make
            _encode(out, overwrite="overwrite" in roles)
        assert_clean_and_complete(out)
    refused = [r for r in outcomes if r.startswith("refused: ")]
    assert refused, "no race was contested: the processes never overlapped"
    print(f"{len(outcomes) - len(refused)} finished, {len(refused)} refused")


# ---- the CLI: two `gtok encode` of the same output ----------------------------------------------


@pytest.mark.subprocess
def test_two_cli_encodes_of_the_same_output(tmp_path):
    model = _save_model(tmp_path / "model", seed=0, **SMALL)
    data = tmp_path / "data"
    write_clean_shards(data, 4, 3)
    out = tmp_path / "t.zarr"
    args = [str(data), "-o", str(out), "-m", str(model), "--workers", "0", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    runs = [
        subprocess.Popen(
            [*GTOK, "encode", *args, "--json"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr))
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode:
            line = assert_one_error(result, contains="is in use by process")
            assert socket.gethostname() in line and "since" in line
        else:
            summary = json.loads(result.stdout)
            assert summary["finalized"]
    assert any(r.returncode == 0 for r in results)
    encode_shards([data], tmp_path / "ref.zarr", model, batch_size=4, workers=0)
    assert_same_store(out, tmp_path / "ref.zarr")
    again = encode_shards([data], out, model, batch_size=4, workers=0)  # what a rerun says
    assert again.shards_already_done == 4 and again.shards_encoded == 0
    assert_same_store(out, tmp_path / "ref.zarr")
