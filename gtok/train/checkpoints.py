"""The training states of a run: `RUN_DIR/checkpoints/step-NNNNNN.pt`, the last K and the best.

Each state is one file written atomically and durably (`gtok.outputs.AtomicFile`: a kill or
a power cut at any moment leaves the old file or the new one), holding only tensors and
plain Python values so that it loads with `torch.load(weights_only=True)`. `best.json`
names the step with the best validation PSNR; that state is kept however old it gets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from gtok.console import console
from gtok.outputs import AtomicFile, remove_temporaries, write_atomically
from gtok.safeload import SETTINGS_BYTES, load_json

__all__ = ["CheckpointDir"]

_NAME = re.compile(r"^step-(\d{6,})\.pt$")


class CheckpointDir:
    """The `checkpoints/` folder of a run directory."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step:06d}.pt"

    def steps(self) -> list[int]:
        """Steps of the states on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def best(self) -> dict[str, Any] | None:
        """`{"step": int, "psnr": float}` of the best state so far, or None."""
        path = self.folder / "best.json"
        return load_json(path, SETTINGS_BYTES) if path.is_file() else None

    def save(self, state: dict[str, Any], step: int, keep_last: int) -> Path:
        """Write the state of `step`, then delete states beyond the last `keep_last` (never
        the best one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        with AtomicFile(path, durable=True) as handle:
            torch.save(state, handle)
        self.prune(keep_last)
        return path

    def mark_best(self, step: int, psnr: float) -> None:
        """Record the state of `step` (already on disk) as the best by validation PSNR (dB)."""
        record = json.dumps({"step": step, "psnr": psnr}).encode()
        write_atomically(self.folder / "best.json", record, durable=True)

    def prune(self, keep_last: int) -> None:
        best = self.best()
        protected = set(self.steps()[-keep_last:])
        if best is not None:
            protected.add(best["step"])
        for step in self.steps():
            if step not in protected:
                self.path(step).unlink(missing_ok=True)

    def remove_stale(self) -> None:
        """Delete the temporary files of a writer that was killed (rank 0, at start)."""
        remove_temporaries(self.folder)

    def load_latest(self) -> dict[str, Any] | None:
        """The newest state that loads, or None when there is none (temporary files of a
        killed writer are never read). A state file that cannot be read (a damaged disk:
        atomic writes never leave half a file under a final name) is reported and the next
        older one is tried."""
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # any unreadable file: fall back to an older state
                console.print(
                    f"[yellow]warning:[/] cannot read {path} ({exc}); trying an older state."
                )
        return None
