"""`gtok encode --distributor ray`: one Ray task per shard, the same store as one process.

Covers: a Ray-run store (a fresh local Ray of 2 CPUs) is byte-identical to the one-process
store; a task whose worker process dies is retried and the store completes; a shard that
keeps failing ends the run with exit 1 naming it, the finished parts kept, and a rerun
resumes; without Ray, one sentence says how to get it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from shardmaker import write_clean_shards
from test_encode import SMALL, _encode, _gtok, _save_model
from test_store import assert_same_store

from gtok.cli.main import app
from gtok.store import Location, TokenStore, schema
from gtok.store.lock import Locks
from gtok.store.opening import open_root
from gtok.store.writer import part_counts

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("--workers", "2", "--batch-size", "4", "--distributor", "ray")


def _ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'gtok[ray]')")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_clean_shards(folder, 3, 3)
    return folder


@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def local_ray(marks):
    """A local Ray of 2 CPUs for this module, its workers running `rayfaults`' hook."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "GTOK_TEST_RAY_MARKS": str(marks)}
    runtime = {"env_vars": env, "worker_process_setup_hook": "rayfaults.die_once_where_marked"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.subprocess
def test_ray_store_equals_the_one_process_store(tmp_path, model, data):
    _ray()
    out = tmp_path / "ray.zarr"
    run = _gtok(
        "encode",
        str(data),
        "-o",
        str(out),
        "-m",
        str(model),
        *FLAGS,
        "--json",
        RAY_USAGE_STATS_ENABLED="0",
        GTOK_PROGRESS_INTERVAL="1",  # the job's progress line, printed once a second
    )
    stdout, stderr = run.communicate(timeout=500)
    assert run.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["finalized"] and summary["shards_encoded"] == 3 and summary["encoded"] == 9
    assert "encode on Ray, 3 shards" in stderr.decode()
    _encode(data, tmp_path / "one.zarr", model)
    assert_same_store(out, tmp_path / "one.zarr")


@pytest.mark.slow
def test_a_task_whose_process_dies_is_retried(tmp_path, model, data, marks, local_ray, runner):
    out = tmp_path / "died.zarr"
    (marks / f"{out.name}__shard-0001.tar").touch()
    args = ["encode", str(data), "-o", str(out), "-m", str(model), *FLAGS, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert (marks / f"{out.name}__shard-0001.tar.died").exists()  # its first attempt died
    assert json.loads(result.stdout)["encoded"] == 9, result.stdout
    assert len(TokenStore(out)) == 9


@pytest.mark.slow
def test_a_shard_that_keeps_failing_is_named_and_the_rest_kept(
    tmp_path, model, data, local_ray, runner
):
    out = tmp_path / "busy.zarr"
    args = ["encode", str(data), "-o", str(out), "-m", str(model), *FLAGS, "--retries", "1"]
    with Locks(Location(str(out)), "a test holding one part") as held:
        part = schema.part_name("shard-0001.tar")
        held.acquire({part: "input shard shard-0001.tar"}, advice="wait for the test")
        failed = runner.invoke(app, args)
    assert failed.exit_code == 1
    assert "1 of 3 shards failed after 2 attempts each, e.g. shard-0001.tar:" in failed.stderr
    assert "a test holding one part" in failed.stderr  # the error of that shard
    root = open_root(Location(str(out)))
    assert [part_counts(root, s) is not None for s in ("shard-0000.tar", "shard-0002.tar")] == [
        True,
        True,
    ]
    resumed = runner.invoke(app, [*args, "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["shards_already_done"], summary["shards_encoded"]) == (2, 1)
    assert len(TokenStore(out)) == 9


def test_without_ray_one_sentence_says_how_to_get_it(tmp_path, data, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["encode", str(data), "-o", str(tmp_path / "t.zarr"), "--distributor", "ray"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: encoding on Ray needs Ray: pip install 'gtok[ray]'."
    assert not (tmp_path / "t.zarr").exists()


def test_options_of_the_other_distributor_are_refused(tmp_path, data, runner):
    out = ["-o", str(tmp_path / "t.zarr")]
    with_ray = [*out, "--distributor", "ray", "--shard-id", "0", "--num-shards", "2"]
    refused = runner.invoke(app, ["encode", str(data), *with_ray])
    assert refused.exit_code == 2 and "leave out --shard-id/--num-shards" in refused.stderr
    refused = runner.invoke(app, ["encode", str(data), *out, "--retries", "3"])
    assert refused.exit_code == 2 and "go with --distributor ray" in refused.stderr
    assert not (tmp_path / "t.zarr").exists()
