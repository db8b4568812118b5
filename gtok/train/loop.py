"""`train`: the training loop of `gtok train`, on one process or under torchrun.

Order of one step t (0-based): read batch t (stream t mod streams), set the learning rate,
train tokenizer and discriminator (`TrainStep`), update the EMA; then, with s = t + 1 steps
done: log after this process's first step and every `log_every`; write a training state
(and export the EMA model) every `checkpoint_every`, before each validation and at the
end; validate every `eval_every` (a new best PSNR marks the state just written as the best
and exports it to `best/`); save a sample grid every `sample_every`. SIGINT/SIGTERM stop
the run after the step whose flag check sees them (the current one, or the next when they
arrive after its backward pass) with a saved state (a second SIGINT aborts at once); the
result says which stopped it.

Batch t + 1 is read before step t's optimizer update, so whether any rank's stream failed,
whether any rank was signalled and whether any loss or gradient is not finite travel in one
all-reduce per step: the step's only wait of the host for the GPU.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from gtok.console import console, is_quiet
from gtok.data.parquetio import Columns
from gtok.data.shards import expand_shards
from gtok.errors import GtokError
from gtok.train.config import TrainConfig, tokenizer_config, with_saved_recipe
from gtok.train.data import TrainBatch, count_samples, rank_shards, to_model_input, train_loader
from gtok.train.distributed import Dist, start
from gtok.train.progress import TrainProgress
from gtok.train.rundir import RunDir
from gtok.train.schedule import lr_at
from gtok.train.session import Session
from gtok.train.validate import evaluate, first_images, save_samples

__all__ = ["TrainResult", "train"]

SAMPLE_IMAGES = 8  # images in each sample grid


@dataclass
class TrainResult:
    """What a call to `train` did (on this process: `rank`). `stopped` is None when the run
    reached its last step, else "interrupted" (SIGINT, Ctrl-C; or a stop of another rank)
    or "terminated" (SIGTERM to this process); `best` ({"step", "psnr"}) is only known on
    rank 0."""

    rank: int
    run_dir: Path
    step: int
    steps: int
    resumed_from: int | None
    stopped: str | None
    images_per_s: float
    skipped: int
    lpips: bool
    val: dict[str, float] = field(default_factory=dict)
    best: dict | None = None


class _StopFlag:
    """SIGINT/SIGTERM -> finish the step, save, stop; a second SIGINT raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self.terminated = False  # SIGTERM came (Slurm, Kubernetes, `timeout`)
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.terminated |= signum == signal.SIGTERM
        self.requested = True
        console.print(
            "[yellow]Stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to abort without saving).[/]"
        )

    def __enter__(self) -> _StopFlag:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, out: str | Path) -> TrainResult:
    """Train (or resume) the run in directory `out` with settings `cfg`.

    Raises GtokError for bad settings or data, for a resume with different settings, and
    when a loss becomes NaN/inf (the last good checkpoint stays).
    """
    dist = start(cfg.device)
    try:
        return _train(cfg, RunDir(out), dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, run: RunDir, dist: Dist) -> TrainResult:
    columns = Columns(image=cfg.image_column)
    shards = expand_shards(cfg.shards, columns)
    val_shards = expand_shards(cfg.val_shards, columns) if cfg.val_shards else []
    num_samples = count_samples(shards) if cfg.epochs is not None else None
    cfg = with_saved_recipe(cfg, run.saved_settings())
    arch = tokenizer_config(cfg)
    resolved = cfg.resolve(num_samples, dist.world).replace(image_size=arch.image_size)
    session = Session(resolved, arch, dist, run, shards)
    step = session.step
    steps, warmup_steps = resolved.steps, resolved.warmup_steps
    assert steps is not None and warmup_steps is not None  # `resolve` fills every None
    streams = max(1, resolved.workers)
    if dist.main:
        session.write_run_record(shards, val_shards, num_samples)
    if step >= steps:
        return _already_done(session, run)
    loader = train_loader(
        session.stream_spec(rank_shards(shards, dist.rank, dist.world)),
        session.stream_positions(streams),
        first_stream=step % streams,
        workers=resolved.workers,
        pin_memory=dist.device.type == "cuda",
    )
    batches = iter(loader)
    fixed = None
    if dist.main:
        fixed = first_images(val_shards or shards, arch.image_size, SAMPLE_IMAGES)
    session.restore_rng()
    result = TrainResult(
        rank=dist.rank,
        run_dir=run.root,
        step=step,
        steps=steps,
        resumed_from=session.resumed_from,
        stopped=None,
        images_per_s=0.0,
        skipped=session.skipped,
        lpips=session.lpips_used,
    )
    images_per_step = resolved.batch_size * dist.world
    cpu = dist.device.type == "cpu"
    progress = TrainProgress(steps, step, dist.main, images_per_step, cpu)
    started, start_step = time.perf_counter(), step
    batch = next(batches)
    window = _Window()  # after the first batch: the first line's rate is the steps' own
    unusable = dist.any(batch.error is not None)  # later batches: checked with each step
    with _StopFlag() as stop, progress:
        while step < steps:
            if unusable:
                errors = [e for e in dist.gather(batch.error) if e]
                raise GtokError(f"Training stopped at step {step}: {errors[0]}.")
            session.note_skipped(batch.skipped, step + 1)
            images = to_model_input(batch.pixels, dist.device)
            lr = lr_at(step, resolved.lr, warmup_steps, steps)
            session.stepper.set_lr(lr)
            upcoming = next(batches) if step + 1 < steps else None
            output = session.stepper(images, step, partial(_stop_flags, stop, upcoming))
            stopping, unusable = output.flags
            if not output.finite:
                session.diverged(step + 1, output.values)
            session.ema.update(session.model)
            session.advance(batch.stream, batch.position)
            step += 1
            window.add(output.values, images.shape[0] * dist.world)
            if step == start_step + 1 or _due(step, resolved.log_every, steps):
                progress.show(step, session.log_train(step, lr, window.flush(dist)))
            else:
                progress.advance(step)
            saved = _periodic(session, step, val_shards, fixed, result, progress)
            batch = upcoming
            if stopping and step < steps:
                if not saved:
                    session.save(step)
                result.stopped = "terminated" if stop.terminated else "interrupted"
                break
    trained = (step - start_step) * resolved.batch_size * dist.world
    result.step = step
    result.images_per_s = trained / max(time.perf_counter() - started, 1e-9)
    result.skipped = session.skipped
    result.best = run.checkpoints.best() if dist.main else None
    return result


def _stop_flags(stop: _StopFlag, upcoming: TrainBatch | None) -> tuple[bool, bool]:
    """(a stop was requested, the next batch says its stream cannot give images); the
    next batch is None after the last step."""
    return stop.requested, upcoming is not None and upcoming.error is not None


def _already_done(session: Session, run: RunDir) -> TrainResult:
    """The result of rerunning a finished run: nothing to train."""
    if session.dist.main and not is_quiet():
        console.print(f"{run.root} already finished its {session.cfg.steps} steps.")
    assert session.cfg.steps is not None  # `resolve` fills every None
    return TrainResult(
        rank=session.dist.rank,
        run_dir=run.root,
        step=session.step,
        steps=session.cfg.steps,
        resumed_from=session.resumed_from,
        stopped=None,
        images_per_s=0.0,
        skipped=session.skipped,
        lpips=session.lpips_used,
        best=run.checkpoints.best() if session.dist.main else None,
    )


def _due(step: int, every: int, steps: int) -> bool:
    """Whether something done every `every` steps (and at the end) is due after `step`."""
    return step % every == 0 or step == steps


def _periodic(
    session: Session,
    step: int,
    val_shards: list,
    fixed: torch.Tensor | None,
    result: TrainResult,
    progress: TrainProgress,
) -> bool:
    """Checkpoint, validation and sample grid when due after `step`; whether it saved.
    The state is written before validating, so a failure there loses no training."""
    cfg, run = session.cfg, session.run
    assert cfg.steps is not None  # `resolve` fills every None
    evaluate_now = bool(val_shards) and _due(step, cfg.eval_every, cfg.steps)
    saved = _due(step, cfg.checkpoint_every, cfg.steps) or evaluate_now
    if saved:
        session.save(step)
    if evaluate_now:
        _validate(session, val_shards, step, result, progress)
    if fixed is not None and _due(step, cfg.sample_every, cfg.steps):
        save_samples(session.ema.module, fixed, session.dist.device, run.sample_path(step))
    return saved


def _validate(
    session: Session, val_shards, step: int, result: TrainResult, progress: TrainProgress
) -> None:
    """Evaluate the EMA model, log and show it, and mark the state of `step` as the best
    when its PSNR beats every earlier validation."""
    cfg = session.cfg
    assert cfg.image_size is not None  # `resolve` fills every None
    metrics, skipped = evaluate(
        session.ema.module,
        val_shards,
        cfg.image_size,
        cfg.batch_size,
        cfg.val_images,
        session.dist,
        session.lpips,
    )
    session.note_val_skipped(skipped, step)
    if not metrics:
        return
    result.val = metrics
    session.log_val(step, metrics)
    shown = f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}"
    if "lpips" in metrics:
        shown += f"  LPIPS {metrics['lpips']:.4f}"
    progress.note(f"step {step}: validation ({metrics['images']} images) {shown}")
    if session.best_psnr is None or metrics["psnr"] > session.best_psnr:
        session.best_psnr = metrics["psnr"]
        session.mark_best(step, metrics["psnr"])


class _Window:
    """Sums of the step values since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.images = 0
        self.since = time.perf_counter()
        self.cpu_since = time.process_time()

    def add(self, values: dict[str, torch.Tensor], images: int) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images

    def flush(self, dist: Dist) -> dict[str, float]:
        """Means over the window and the ranks, images/s of the whole job, and the CPU
        seconds this process (all its threads, not its data workers) used in the window."""
        keys = sorted(self.sums)
        totals = dist.sum([float(self.sums[k]) for k in keys])
        means = {k: t / (self.steps * dist.world) for k, t in zip(keys, totals, strict=True)}
        now, cpu = time.perf_counter(), time.process_time()
        means["img_per_s"] = self.images / max(now - self.since, 1e-9)
        means["process_cpu_s"] = cpu - self.cpu_since
        self.sums, self.steps, self.images, self.since, self.cpu_since = {}, 0, 0, now, cpu
        return means
