"""tools/plot_curves.py: a run continued with `gtok train --init-from` joins its first part
on one step axis."""

from __future__ import annotations

import json
from pathlib import Path

from scriptkit import ROOT, script_module


def _run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_continued_run_follows_its_first_part_and_the_png_is_drawn(tmp_path):
    first = _run(tmp_path / "a", [
        {"kind": "train", "step": 10, "l1": 0.5}, {"kind": "val", "step": 20, "psnr": 20.0},
        {"kind": "train", "step": 20, "l1": 0.4},
    ])  # fmt: skip
    second = _run(tmp_path / "b", [
        {"kind": "event", "step": 0}, {"kind": "train", "step": 10, "l1": 0.3},
        {"kind": "val", "step": 10, "psnr": 22.0},
    ])  # fmt: skip
    with script_module(ROOT / "tools" / "plot_curves.py") as tool:
        curves, starts = tool.read_continued([first, second])
        assert starts == [20]
        assert curves["train", "l1"] == ([10, 20, 30], [0.5, 0.4, 0.3])
        assert curves["val", "psnr"] == ([20, 30], [20.0, 22.0])
        tool.plot({"tiny": [first, second], "vq": [first]}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
