"""What a training run shows on stderr: a rich progress bar on a terminal, else one plain
line per log interval plus `gtok.console.progress`'s timed lines with the ETA (so
`nohup gtok train ... 2> log` still shows progress). The first log line (step 1) comes with
one that says the rate and how long the rest of the run takes at it, and on the CPU, when
that is long, which `--steps` would make a first try of a few minutes."""

from __future__ import annotations

from typing import Any

from rich.progress import TextColumn

from gtok.console import console, is_quiet, progress
from gtok.plainprogress import human_duration

__all__ = ["TrainProgress", "describe", "run_estimate"]

LONG_CPU_RUN_S = 3600.0  # seconds: a CPU run longer than this gets a shorter --steps suggested
FIRST_TRY_S = 600.0  # seconds: the length of the suggested first try


def describe(record: dict[str, Any]) -> str:
    """One line for a train record: images/s, losses, learning rate, code usage."""
    parts = [f"{record['img_per_s']:.1f} img/s", f"loss {record['loss']:.4f}"]
    parts += [f"{k} {record[k]:.4f}" for k in ("l1", "lpips", "gen", "d_loss") if k in record]
    parts += [f"lr {record['lr']:.2e}", f"usage {record['usage']:.0%}"]
    return "  ".join(parts)


def run_estimate(
    step: int, total: int, images_per_s: float, images_per_step: int, cpu: bool
) -> str:
    """One line after `step` of `total` steps at `images_per_s` (`images_per_step` images
    each, all processes): the rate and the time the remaining steps take at it; on the CPU
    (`cpu`), when that is over `LONG_CPU_RUN_S`, the `--steps` of a `FIRST_TRY_S` run."""
    step_s = images_per_step / max(images_per_s, 1e-9)
    line = (
        f"step {step}/{total}: {images_per_s:.1f} img/s; the {total - step} steps to go take "
        f"{human_duration((total - step) * step_s)} at this rate"
    )
    if cpu and (total - step) * step_s > LONG_CPU_RUN_S:
        first_try = max(1, int(FIRST_TRY_S / step_s))
        line += (
            f" (on the CPU: for a first try, --steps {first_try} takes "
            f"{human_duration(first_try * step_s)})"
        )
    return line


class TrainProgress:
    """Progress of steps `start`..`total` (a no-op unless `enabled`, i.e. on rank 0), of
    `images_per_step` images each (all processes), on the CPU when `cpu`."""

    def __init__(
        self, total: int, start: int, enabled: bool, images_per_step: int, cpu: bool
    ) -> None:
        self.enabled = enabled and not is_quiet()
        self.images_per_step, self.cpu = images_per_step, cpu
        self.estimated = False  # whether the run's estimate was printed
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
        """Move to `step` and show the latest train record (the first time, after a line
        with the run's estimate)."""
        if not self.estimated:
            self.estimated = True
            args = (step, self.total, record["img_per_s"], self.images_per_step, self.cpu)
            self.note(run_estimate(*args))
        line = describe(record)
        self.bar.update(self.task, completed=step, info=line)
        if self.plain:
            console.print(f"step {step}/{self.total}  {line}", soft_wrap=True)

    def note(self, message: str) -> None:
        """Print a line (validation results) above the bar."""
        if self.enabled:
            console.print(message, soft_wrap=True)
