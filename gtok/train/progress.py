"""What a training run shows on stderr: a rich progress bar on a terminal, else one plain
line per log interval plus `gtok.console.progress`'s timed lines with the ETA (so
`nohup gtok train ... 2> log` still shows progress)."""

from __future__ import annotations

from typing import Any

from rich.progress import TextColumn

from gtok.console import console, is_quiet, progress

__all__ = ["TrainProgress", "describe"]


def describe(record: dict[str, Any]) -> str:
    """One line for a train record: images/s, losses, learning rate, code usage."""
    parts = [f"{record['img_per_s']:.1f} img/s", f"loss {record['loss']:.4f}"]
    parts += [f"{k} {record[k]:.4f}" for k in ("l1", "lpips", "gen", "d_loss") if k in record]
    parts += [f"lr {record['lr']:.2e}", f"usage {record['usage']:.0%}"]
    return "  ".join(parts)


class TrainProgress:
    """Progress of steps `start`..`total` (a no-op unless `enabled`, i.e. on rank 0)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled and not is_quiet()
        self.bar = progress("step", TextColumn("{task.fields[info]}"))
        self.total = total
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.plain = self.enabled and not console.is_terminal

    def __enter__(self) -> TrainProgress:
        if self.enabled:  # a bar, or on a log file timed lines with the ETA
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def show(self, step: int, record: dict[str, Any]) -> None:
        """Move to `step` and show the latest train record."""
        line = describe(record)
        self.bar.update(self.task, completed=step, info=line)
        if self.plain:
            console.print(f"step {step}/{self.total}  {line}", soft_wrap=True)

    def note(self, message: str) -> None:
        """Print a line (validation results) above the bar."""
        if self.enabled:
            console.print(message, soft_wrap=True)
