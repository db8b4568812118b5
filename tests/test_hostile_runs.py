"""Unlucky runs: a DataLoader worker killed under `gtok encode` (as the out-of-memory killer
does), a shard whose every sample is skipped (progress must move), and decoding a store that
holds no rows. Each ends with one sentence that says what happened and what to do, or with
progress that says where the run is; nothing finished is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hostilekit import assert_one_error, run_gtok
from shardmaker import jpeg, write_clean_shards, write_tar
from test_encode import SMALL, _completed_parts, _gtok, _save_model
from test_hostile_cli import _children

from gtok.cli.main import app
from gtok.data import EncodeStream, Preprocess, expand_shards, loader
from gtok.data.stream import worker_death_as_error
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.store import TokenStore

# torch notices a killed worker by its SIGCHLD ("was killed (SIGKILL)") or, when a chunk
# was in flight, by the worker's end ("exited unexpectedly"); both end alike
KILLED = (
    "was killed (SIGKILL), most likely by the out-of-memory killer",
    "exited unexpectedly, most likely killed by the out-of-memory killer",
)
NEXT_STEP = (
    "the shards finished before it are saved: rerun the same command to resume, with fewer "
    "--workers or a smaller --batch-size if memory is short"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _data_workers(pid: int) -> list[int]:
    """The spawned DataLoader workers among the children of process `pid`."""
    workers = []
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue  # it ended meanwhile
    return workers


@pytest.mark.subprocess
def test_a_killed_data_worker_ends_in_one_sentence_and_a_rerun_resumes(tmp_path, model):
    data = tmp_path / "data"
    write_clean_shards(data, 24, 4)
    out = tmp_path / "t.zarr"
    args = (str(data), "-o", str(out), "-m", str(model), "--batch-size", "2")
    run = _gtok("encode", *args, "--workers", "1")
    deadline = time.monotonic() + 180
    while _completed_parts(out) < 1 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    workers = _data_workers(run.pid)
    assert workers, "the run ended before its worker could be killed"
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=180)
    ended = subprocess.CompletedProcess(run.args, run.returncode, stdout.decode(), stderr.decode())
    line = assert_one_error(ended)
    assert line in [f"error: a data-loading worker process {how}; {NEXT_STEP}" for how in KILLED]
    done = _completed_parts(out)
    assert 1 <= done < 24
    resumed = run_gtok("encode", *args, "--workers", "0", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "stale lock" not in resumed.stderr  # the killed run released its locks
    assert '"finalized": true' in resumed.stdout
    assert len(TokenStore(out)) == 96


@pytest.mark.subprocess
def test_a_worker_killed_before_a_connection_error_is_named(tmp_path):
    write_clean_shards(tmp_path, 1, 2)
    stream = EncodeStream(expand_shards([tmp_path]), Preprocess(image_size=8), batch_size=2)
    data = loader(stream, workers=1)
    batches = iter(data)  # starts the worker
    [worker] = data.worker_processes
    killed = r"^a data-loading worker process was killed \(SIGKILL\)"
    with pytest.raises(GtokError, match=killed), worker_death_as_error(data, "rerun"):
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
        raise ConnectionResetError("the worker's end of the queue is gone")
    del batches


def test_skipped_samples_move_progress_without_changing_the_batches(tmp_path):
    junk = [(f"{i:03d}", {"jpg": b"not an image"}) for i in range(5)]
    good = [(f"{i:03d}", {"jpg": jpeg(i)}) for i in range(5, 8)]
    write_tar(tmp_path / "s.tar", junk + good)
    stream = EncodeStream(expand_shards([tmp_path]), Preprocess(image_size=8), batch_size=2)
    chunks = [(c.keys, [s.key for s in c.skipped], c.end is not None) for c in stream]
    assert chunks == [
        ([], ["000", "001"], False),
        ([], ["002", "003"], False),
        (["005", "006"], ["004"], False),
        (["007"], [], True),
    ]


def test_decoding_a_store_without_rows_says_so(tmp_path, model, runner):
    write_tar(tmp_path / "shards" / "junk.tar", [("000", {"jpg": b"not an image"})])
    empty = tmp_path / "empty.zarr"
    assert encode_shards([tmp_path / "shards"], empty, model, workers=0).finalized
    result = runner.invoke(app, ["decode", str(empty), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {empty} holds no rows to decode: no sample was encoded into it "
        f"(`gtok info {empty}` lists what was skipped and why)."
    )


def test_a_selection_past_the_rows_names_only_the_bounds_given(tmp_path, model, runner):
    write_clean_shards(tmp_path / "shards", 1, 3)
    store = tmp_path / "t.zarr"
    encode_shards([tmp_path / "shards"], store, model, workers=0)
    result = runner.invoke(app, ["decode", str(store), "-o", str(tmp_path / "out"), "--start", "7"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: the selection --start 7 holds no rows; {store} has 3 rows, numbered 0 to 2."
    )
