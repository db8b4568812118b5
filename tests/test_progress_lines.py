"""Progress on a log file: when stderr is not a terminal, long jobs print
a plain line (done/total, rate, ETA) at least every $GTOK_PROGRESS_INTERVAL seconds."""

from __future__ import annotations

import time

import pytest
from shardmaker import jpeg

from gtok.cli.main import app
from gtok.console import console, progress, set_quiet
from gtok.errors import GtokError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def log_file_stderr(monkeypatch):
    """stderr is a file here (pytest captures it), as under Slurm."""
    monkeypatch.setattr(type(console), "is_terminal", property(lambda self: False))
    monkeypatch.delenv("GTOK_PROGRESS_INTERVAL", raising=False)


def _lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_line_every_interval_with_count_rate_and_eta(capsys):
    clock = Clock()
    with progress("img", get_time=clock) as bar:
        task = bar.add_task("encode", total=1000)
        clock.now += 10
        bar.advance(task, 100)
        assert _lines(capsys) == []  # 10 s: not yet
        clock.now += 21
        bar.advance(task, 100)
        assert _lines(capsys) == [
            "encode: 200/1,000 img (20%), 6.5 img/s, elapsed 0:00:31, eta ~2 min"
        ]
        clock.now += 20
        bar.update(task, completed=500)
        assert _lines(capsys) == []  # 20 s after the last line
        clock.now += 30
        bar.update(task, completed=1000, description="encode 2/2 shards")
        assert _lines(capsys) == [
            "encode 2/2 shards: 1,000/1,000 img (100%), 12.3 img/s, elapsed 0:01:21, eta 0 s"
        ]
        clock.now += 5
    assert _lines(capsys) == [  # the last line at the end
        "encode 2/2 shards: 1,000/1,000 img (100%), 11.6 img/s, elapsed 0:01:26, eta 0 s"
    ]


def test_unknown_total_and_resumed_count(capsys):
    clock = Clock()
    with progress("step", get_time=clock) as bar:
        task = bar.add_task("train", total=None, completed=5000)  # resumed at step 5000
        clock.now += 40
        bar.update(task, completed=5080)
    assert _lines(capsys)[0] == "train: 5,080 step, 2.0 step/s, elapsed 0:00:40"


def test_short_jobs_print_nothing(capsys):
    with progress("img", get_time=Clock()) as bar:
        bar.advance(bar.add_task("decode", total=4), 4)
    assert _lines(capsys) == []


def test_a_stalled_job_still_prints(capsys, monkeypatch):
    """Lines come from a timer too: a job that advances nothing for a while is not silent."""
    monkeypatch.setenv("GTOK_PROGRESS_INTERVAL", "0.1")
    with progress("img") as bar:
        bar.advance(bar.add_task("pack", total=10), 3)
        time.sleep(0.5)
    lines = _lines(capsys)
    assert len(lines) >= 3, lines
    assert all(line.startswith("pack: 3/10 img (30%), ") for line in lines)


def test_quiet_and_bad_interval(capsys, monkeypatch):
    set_quiet(True)
    try:
        clock = Clock()
        with progress("img", get_time=clock) as bar:
            task = bar.add_task("encode", total=10)
            clock.now += 100
            bar.advance(task, 5)
    finally:
        set_quiet(False)
    assert _lines(capsys) == []
    for bad in ("soon", "0", "-5", "inf"):
        monkeypatch.setenv("GTOK_PROGRESS_INTERVAL", bad)
        with pytest.raises(GtokError, match="GTOK_PROGRESS_INTERVAL"):
            progress("img")


def test_gtok_pack_logs_progress(runner, tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(jpeg(i))
    args = ["pack", str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--workers", "0"]
    result = runner.invoke(app, args, env={"GTOK_PROGRESS_INTERVAL": "1e-9"})
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pack: ")]
    assert lines and lines[-1].startswith("pack: 3/3 img (100%), "), result.stderr
