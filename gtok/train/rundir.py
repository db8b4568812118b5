"""The run directory of `gtok train`: where everything a run writes lives.

    RUN_DIR/train.json                 the resolved settings, architecture, preprocessing,
                                       LPIPS status and environment of the run
    RUN_DIR/model/                     EMA tokenizer of the latest checkpoint (a model
                                       directory: `gtok.load_tokenizer(RUN_DIR)` loads it)
    RUN_DIR/best/                      EMA tokenizer with the best validation PSNR
    RUN_DIR/checkpoints/step-NNNNNN.pt training states (the last K and the best) + best.json
    RUN_DIR/metrics.jsonl              one JSON object per line: {"kind": "train" | "val" |
                                       "event", "step": ..., ...}
    RUN_DIR/skipped.jsonl              one line per sample passed over: step, shard, key, reason
    RUN_DIR/samples/step-NNNNNN.png    originals | reconstructions | Gaussians, one row per image

Only rank 0 writes here. Every file is replaced atomically or appended line by line; on
resume from step s, log lines of later steps (written before an interruption) are dropped
so that the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gtok.model.io import RUN_MODEL_SUBDIR
from gtok.outputs import write_atomically
from gtok.safeload import SETTINGS_BYTES, Unreadable, load_json, parse_json
from gtok.train.checkpoints import CheckpointDir

__all__ = ["RunDir"]


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.checkpoints = CheckpointDir(self.root / "checkpoints")

    @property
    def settings_path(self) -> Path:
        return self.root / "train.json"

    @property
    def model_dir(self) -> Path:
        return self.root / RUN_MODEL_SUBDIR

    @property
    def best_dir(self) -> Path:
        return self.root / "best"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def skipped_path(self) -> Path:
        return self.root / "skipped.jsonl"

    def sample_path(self, step: int) -> Path:
        return self.root / "samples" / f"step-{step:06d}.png"

    def create(self) -> None:
        """Make the folders and delete what a killed writer left half-written."""
        (self.root / "samples").mkdir(parents=True, exist_ok=True)
        self.checkpoints.remove_stale()

    def saved_settings(self) -> dict[str, Any] | None:
        """The "settings" of an existing `train.json`, or None (no run here, or unreadable:
        then the checkpoint's own settings decide whether a resume is compatible)."""
        try:
            settings = load_json(self.settings_path, SETTINGS_BYTES)["settings"]
        except (Unreadable, KeyError, TypeError):
            return None
        return settings if isinstance(settings, dict) else None

    def write_settings(self, document: dict[str, Any]) -> None:
        text = json.dumps(document, indent=2) + "\n"
        write_atomically(self.settings_path, text.encode(), durable=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record (a JSON line)."""
        _append(self.metrics_path, [record])

    def log_skipped(self, records: list[dict[str, Any]]) -> None:
        _append(self.skipped_path, records)

    def has_val_skips(self) -> bool:
        """Whether skipped.jsonl already lists the validation samples passed over."""
        if not self.skipped_path.is_file():
            return False
        return any('"split": "val"' in line for line in self.skipped_path.open())

    def truncate_logs(self, step: int) -> None:
        """Drop log lines of steps after `step` (from a run interrupted after its last
        checkpoint), and any half-written last line."""
        for path in (self.metrics_path, self.skipped_path):
            if not path.is_file():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = parse_json(line, str(path))
                except Unreadable:
                    continue  # the line a kill cut short
                if record.get("step", 0) <= step:
                    kept.append(line)
            text = "".join(f"{line}\n" for line in kept)
            write_atomically(path, text.encode(), durable=True)


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    with path.open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
        handle.flush()
