"""SIGTERM (Slurm, Kubernetes, `timeout`) stops a command as Ctrl-C does.

`timeout` and Slurm signal the whole process group, DataLoader workers included; Kubernetes
signals the main process. Either way the command finishes what a Ctrl-C finishes (encode:
the completed shards stay, train: the step is saved), releases its locks, says so in one line
and exits 143; rerunning the same command resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from evalkit import save_model
from hostilekit import GTOK, REPO, assert_no_temp_files, run_gtok
from shardmaker import write_clean_shards, write_tar
from test_encode import _completed_parts
from test_store import assert_same_store
from test_train import _gradients

import gtok.decode
from gtok.cli._signals import TERMINATED
from gtok.cli.main import app
from gtok.encode import encode_shards

RESUME_LINE = "stopped by SIGTERM; rerun the same command to resume."


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), seed=0)


def _start(*args: str) -> subprocess.Popen:
    """`gtok ARGS` in a process group of its own, as `timeout` starts it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [*GTOK, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _terminate_when(run: subprocess.Popen, ready, what: str) -> tuple[str, str]:
    """Wait until `ready()`, then SIGTERM `run`'s process group; (stdout, stderr)."""
    deadline = time.monotonic() + 240
    while not ready():
        assert run.poll() is None, f"it ended before {what}: {run.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in 240 s"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGTERM)
    return run.communicate(timeout=240)


@pytest.mark.subprocess
@pytest.mark.parametrize("workers", ["0", "1"])
def test_sigterm_stops_encode_with_its_locks_released_and_a_rerun_resumes(tmp_path, model, workers):
    data = tmp_path / "data"
    write_clean_shards(data, 12, 4)
    out = tmp_path / "t.zarr"
    args = [str(data), "-o", str(out), "-m", str(model), "--batch-size", "4"]
    run = _start("encode", *args, "--workers", workers)
    _, stderr = _terminate_when(run, lambda: _completed_parts(out) >= 2, "2 encoded shards")
    assert run.returncode == TERMINATED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().endswith(RESUME_LINE), stderr
    assert not (out / "locks").exists()  # released: a rerun need not take over stale ones
    assert_no_temp_files(out)
    done = _completed_parts(out)
    assert 2 <= done < 12, "the run ended before it could be stopped"
    rerun = run_gtok("encode", *args, "--workers", "0", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert "stale lock" not in rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["shards_already_done"] == done and summary["finalized"]
    encode_shards([data], tmp_path / "clean.zarr", model, batch_size=4, workers=0)
    assert_same_store(out, tmp_path / "clean.zarr")


@pytest.mark.subprocess
def test_sigterm_stops_train_after_saving_the_step_and_a_rerun_resumes(tmp_path):
    write_tar(tmp_path / "four.tar", _gradients(4, start=50))
    run_dir = tmp_path / "run"
    args = [str(tmp_path / "four.tar"), "--preset", "tiny", "--out", str(run_dir), "--json"]
    args += ["--steps", "40", "--image-size", "32", "--batch-size", "2", "--log-every", "1"]
    args += ["--model", "num_gaussians=16", "--model", "codebook_size=64", "--workers", "1"]
    metrics = run_dir / "metrics.jsonl"
    run = _start("train", *args)
    trained = lambda: '"kind": "train"' in (metrics.read_text() if metrics.exists() else "")  # noqa: E731
    stdout, stderr = _terminate_when(run, trained, "training step")
    assert run.returncode == TERMINATED, stderr
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr
    assert stderr.strip().endswith(RESUME_LINE), stderr
    stopped = json.loads(stdout)
    assert stopped["stopped"] == "terminated" and 1 <= stopped["step"] < 40
    assert (run_dir / "checkpoints" / f"step-{stopped['step']:06d}.pt").is_file()
    rerun = run_gtok("train", *args[:-2], "--workers", "0")
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout)
    assert (resumed["resumed_from"], resumed["step"], resumed["stopped"]) == (
        stopped["step"],
        40,
        None,
    )


def test_sigterm_stops_any_other_command_in_one_line(tmp_path, runner, monkeypatch):
    """Commands that do not resume (decode, eval, demo, ...) say that they did not finish;
    the handler is the caller's again afterwards (tests run many commands in one process)."""
    started = []

    def terminated_while_decoding(*args, **kwargs):
        started.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # SIGTERM ends this at once

    monkeypatch.setattr(gtok.decode, "decode_store", terminated_while_decoding)
    before = signal.getsignal(signal.SIGTERM)
    began = time.monotonic()
    result = runner.invoke(app, ["decode", str(tmp_path / "t.zarr"), "-o", str(tmp_path / "r")])
    assert started and time.monotonic() - began < 30
    assert result.exit_code == TERMINATED, result.output
    assert result.stderr.strip() == (
        "stopped by SIGTERM; it did not finish, so rerun the command."
    ), result.stderr
    assert signal.getsignal(signal.SIGTERM) is before
