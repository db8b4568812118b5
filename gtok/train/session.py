"""The state of one training process: its networks, optimizers, EMA, data positions, and
how they are saved to and restored from a training state file.

A training state (`checkpoints/step-NNNNNN.pt`, loadable with `weights_only=True`) holds:

    format, step, settings (resolved TrainConfig + architecture + world size), model
    (tokenizer parameters and buffers: codebook and its EMA statistics, r_max), model_extra
    (training-only state of model parts, e.g. the scale scheduler's running mean), ema,
    disc, lecam, optim (both optimizers and gradient scalers), scheduler (step and the
    schedule), rng (per rank), data (seed and per-rank stream positions), skipped (per-rank
    counts). The best validation PSNR so far is in `checkpoints/best.json`.

Every rank builds the same networks and reads the same state; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from gtok._version import __version__
from gtok.console import console
from gtok.data.shards import ShardRef
from gtok.devices import tf32_settings
from gtok.errors import ArgumentError
from gtok.metrics import Unavailable, try_load
from gtok.model.config import TokenizerConfig
from gtok.model.gaussian_embed import GaussianEmbed
from gtok.model.io import load_tokenizer_with_sha256, read_config, weights_sha256
from gtok.model.tokenizer import build_from_config
from gtok.safeload import parse_json
from gtok.train.config import TrainConfig, resume_conflicts
from gtok.train.data import SkipRecord, StreamSpec
from gtok.train.discriminator import PatchDiscriminator
from gtok.train.distributed import Dist
from gtok.train.ema import ModelEMA
from gtok.train.losses import LeCam
from gtok.train.rng import get_rng_state, seed_everything, set_rng_state
from gtok.train.rundir import RunDir
from gtok.train.step import TrainStep, resolve_precision
from gtok.weights import find_weights

__all__ = ["NONDETERMINISTIC_CUDA_OPS", "STATE_FORMAT", "Session", "determinism"]

STATE_FORMAT = 1
# CUDA operations of a training step whose results vary from run to run (atomic adds in
# an order that varies): a resumed run on CUDA ends close to, not bitwise at, an
# uninterrupted one.
NONDETERMINISTIC_CUDA_OPS = (
    "index_add_ (quantizer codebook sums)",
    "grid_sample backward (deformable attention)",
    "multi-head attention backward (fused attention kernels)",
    "cuDNN convolution weight gradients",
)


class Session:
    """Builds (or restores) everything a training process holds."""

    def __init__(
        self,
        cfg: TrainConfig,
        arch: TokenizerConfig,
        dist: Dist,
        run: RunDir,
        shards: list[ShardRef],
    ) -> None:
        self.cfg, self.arch, self.dist, self.run = cfg, arch, dist, run
        self.precision = resolve_precision(cfg.precision, dist.device)
        self.lpips, self.lpips_status = self._load_lpips()
        self.settings = {
            **cfg.to_dict(),
            "train_shard_names": [s.name for s in shards],  # what resume compares, not paths
            "architecture": arch.to_dict(),
            "world_size": dist.world,
            "lpips_loss": self.lpips is not None,
            # the starting weights are compared on resume by content, not by path; a new
            # run records the sha256 of the bytes it loads them from (below)
            "init_weights_sha256": None,
        }
        saved = run.checkpoints.load_latest()
        if saved is not None:
            if cfg.init_from is not None:
                self.settings["init_weights_sha256"] = weights_sha256(cfg.init_from)
            self._check_compatible(saved)
        seed_everything(cfg.seed)  # identical initial weights on every rank
        device = dist.device
        self.model = build_from_config(arch).to(device).train()
        if saved is None and cfg.init_from is not None:
            sha256 = _load_initial_weights(self.model, arch, cfg.init_from)
            self.settings["init_weights_sha256"] = sha256
        self.disc = PatchDiscriminator().to(device).train()
        self.lecam = LeCam().to(device)
        self.stepper = TrainStep(
            self.model, self.disc, self.lecam, self.lpips, cfg, dist, self.precision
        )
        self.ema = ModelEMA(self.model, cfg.ema_decay)
        seed_everything(int(np.random.SeedSequence([cfg.seed, dist.rank]).generate_state(1)[0]))
        self.step = 0
        self.resumed_from: int | None = None
        self.skipped = 0  # samples passed over by the whole job (as of the last log)
        self._local_skipped = 0  # ... by this rank
        self.best_psnr: float | None = None
        self.data_seed = cfg.seed
        self.positions: list[tuple[int, int]] | None = None
        self._rng: dict | None = None
        self._pending: list[dict[str, Any]] = []
        self._val_skips_logged = False  # rank 0: skipped.jsonl lists the validation skips
        if saved is not None:
            self._restore(saved)

    @property
    def lpips_used(self) -> bool:
        return self.lpips is not None

    # -- building -----------------------------------------------------------------------

    def _load_lpips(self) -> tuple[nn.Module | None, dict[str, Any]]:
        """LPIPS-VGG for the perceptual loss, or None with one warning when its files are
        missing (an explicit path that does not exist is an error)."""
        if self.cfg.lpips_weight == 0:
            return None, {"used": False, "reason": "lpips_weight is 0"}
        explicit = {"vgg16": self.cfg.vgg_weights, "lpips-vgg": self.cfg.lpips_weights}
        for key, path in explicit.items():
            if path is not None:
                find_weights(key, path)  # GtokError when the given file does not exist
        loaded = try_load("lpips-vgg", paths=explicit, device=self.dist.device)
        if isinstance(loaded, Unavailable):
            if self.dist.main:
                console.print(
                    f"[yellow]warning:[/] training without the LPIPS loss: {loaded.reason}",
                    soft_wrap=True,
                )
            return None, {"used": False, "reason": loaded.reason}
        files = {k: str(v) for k, v in loaded.files.items()}
        return loaded.model, {"used": True, "files": files}

    def stream_spec(self, shards: tuple[ShardRef, ...]) -> StreamSpec:
        cfg = self.cfg
        assert cfg.image_size is not None and cfg.augment is not None  # `resolve` fills them
        return StreamSpec(
            shards=shards,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            seed=self.data_seed,
            rank=self.dist.rank,
            augment=cfg.augment,
            crop_scale=cfg.crop_scale,
            colour=cfg.colour_jitter(),
        )

    def stream_positions(self, streams: int) -> list[tuple[int, int]]:
        """Where each of this rank's `streams` data streams starts. A resume with another
        number of workers cannot continue the old streams: it starts new ones (seeded by
        the step), so its data order differs from an uninterrupted run's."""
        if self.positions is not None and len(self.positions) == streams:
            return self.positions
        if self.positions is not None:
            if self.dist.main:
                console.print(
                    f"[yellow]warning:[/] the run was saved with {len(self.positions)} data "
                    f"stream(s) per process and now has {streams} (--workers); new streams "
                    "start here, so the data order differs from an uninterrupted run."
                )
            fresh = np.random.SeedSequence([self.cfg.seed, self.step]).generate_state(1, np.uint64)
            self.data_seed = int(fresh[0] >> 1)
        self.positions = [(0, 0)] * streams
        return self.positions

    # -- resume -------------------------------------------------------------------------

    def _check_compatible(self, saved: dict[str, Any]) -> None:
        before = parse_json(saved["settings"], f"the settings saved in {self.run.root}")
        conflicts = resume_conflicts(before, self.settings)
        if conflicts:
            raise ArgumentError(
                f"{self.run.root} holds a run with other settings ({'; '.join(conflicts)}); "
                "pass the same settings to resume it, or give `out` another directory.",
                "out",
            )

    def _restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        _load_extra(self.model, saved["model_extra"])
        self.ema.load_state_dict(saved["ema"])
        self.disc.load_state_dict(saved["disc"])
        self.lecam.load_state_dict(saved["lecam"])
        self.stepper.load_state_dict(saved["optim"])
        self.step = self.resumed_from = int(saved["step"])
        self._local_skipped = int(saved["skipped"][self.dist.rank])
        self.skipped = sum(int(n) for n in saved["skipped"])
        best = self.run.checkpoints.best()
        self.best_psnr = None if best is None else float(best["psnr"])
        self.data_seed = int(saved["data"]["seed"])
        rank = self.dist.rank
        self.positions = [tuple(p) for p in saved["data"]["positions"][rank]]
        self._rng = saved["rng"][rank]

    def restore_rng(self) -> None:
        """Put back this rank's saved generator states (call after building everything)."""
        if self._rng is not None:
            set_rng_state(self._rng)

    # -- records ------------------------------------------------------------------------

    def write_run_record(
        self, shards: list[ShardRef], val_shards: list[ShardRef], num_samples: int | None
    ) -> None:
        """Create the run directory and write `train.json` (rank 0)."""
        run = self.run
        run.create()
        if self.resumed_from is not None:
            run.truncate_logs(self.resumed_from)
        train_prep = self.stream_spec(()).describe()
        size = self.cfg.image_size
        document = {
            "gtok_version": __version__,
            "settings": self.settings,
            "resolved": {
                "precision": self.precision,
                "device": str(self.dist.device),
                "train_samples": num_samples,
                "tf32": tf32_settings(),
                **determinism(self.dist.device),
            },
            "data": {
                "train_shards": [s.url for s in shards],
                "val_shards": [s.url for s in val_shards],
                "train_preprocess": train_prep,
                "val_preprocess": (
                    f"shorter side resized to {size} (PIL bicubic) + centre crop {size}x{size}"
                ),
                "shard_sampling": "with replacement, seeded by (seed, rank, stream, draw)",
            },
            "lpips": self.lpips_status,
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "host": platform.node(),
            },
        }
        run.write_settings(document)
        self._val_skips_logged = run.has_val_skips()
        event = "resume" if self.resumed_from is not None else "start"
        run.log({"kind": "event", "event": event, "step": self.step, "time": time.time()})

    def note_skipped(self, records: list[SkipRecord], step: int) -> None:
        """Training samples passed over in the batch of step number `step` (1-based, as
        the train records count steps, so a resume drops exactly the later ones)."""
        self._local_skipped += len(records)
        self._pending += [
            {"step": step, "split": "train", "shard": s, "key": k, "reason": r}
            for s, k, r in records
        ]

    def note_val_skipped(self, records: list[SkipRecord], step: int) -> None:
        """Validation samples passed over (the same ones at every evaluation: rank 0 writes
        them once per run)."""
        self._pending += [
            {"step": step, "split": "val", "shard": s, "key": k, "reason": r} for s, k, r in records
        ]

    def _flush_skipped(self) -> list[int]:
        """Gather every rank's skip records to rank 0 and append them to skipped.jsonl;
        update the job's count and return the per-rank counts. Collective."""
        gathered = self.dist.gather((self._pending, self._local_skipped))
        self._pending = []
        if self.dist.main:
            records = [r for pending, _ in gathered for r in pending]
            if self._val_skips_logged:
                records = [r for r in records if r["split"] != "val"]
            self._val_skips_logged |= any(r["split"] == "val" for r in records)
            self.run.log_skipped(records)
        counts = [count for _, count in gathered]
        self.skipped = sum(counts)
        return counts

    def log_train(self, step: int, lr: float, means: dict[str, float]) -> dict[str, Any]:
        self._flush_skipped()
        record = {"kind": "train", "step": step, "lr": lr, **means, "skipped": self.skipped}
        if self.dist.main:
            self.run.log(record)
        return record

    def log_val(self, step: int, metrics: dict[str, float]) -> None:
        if self.dist.main:
            self.run.log({"kind": "val", "step": step, **metrics})

    # -- saving -------------------------------------------------------------------------

    def advance(self, stream: int, position: tuple[int, int]) -> None:
        """Record that a batch of `stream` was consumed, leaving it at `position`."""
        assert self.positions is not None  # set by `stream_positions` before training
        self.positions[stream] = (position[0], position[1])

    def save(self, step: int) -> None:
        """Write the training state of `step` and export the EMA model to `model/`.
        Collective: every rank must call it."""
        skipped = self._flush_skipped()
        self._check_ranks_agree(step)
        rngs = self.dist.gather(get_rng_state())
        assert self.positions is not None  # set by `stream_positions` before training
        positions = self.dist.gather([list(p) for p in self.positions])
        if not self.dist.main:
            return
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "settings": json.dumps(self.settings),
            "model": self.model.state_dict(),
            "model_extra": _extra_state(self.model),
            "ema": self.ema.state_dict(),
            "disc": self.disc.state_dict(),
            "lecam": self.lecam.state_dict(),
            "optim": self.stepper.state_dict(),
            "scheduler": {
                "step": step,
                "base_lr": self.cfg.lr,
                "warmup_steps": self.cfg.warmup_steps,
                "total_steps": self.cfg.steps,
            },
            "rng": rngs,
            "data": {"seed": self.data_seed, "positions": positions},
            "skipped": skipped,
        }
        self.run.checkpoints.save(state, step, self.cfg.keep_last)
        self.ema.module.save_pretrained(self.run.model_dir)

    def mark_best(self, step: int, psnr: float) -> None:
        """The state of `step` (saved) validated best: record it and export `best/`."""
        if self.dist.main:
            self.run.checkpoints.mark_best(step, psnr)
            self.ema.module.save_pretrained(self.run.best_dir)

    def _check_ranks_agree(self, step: int) -> None:
        """Every rank must hold bitwise the same tokenizer (parameters and buffers: codebook,
        r_max), EMA and discriminator parameters. Collective; a no-op in one process."""
        if not self.dist.active:
            return
        digest = hashlib.sha256()
        tensors = [*self.model.state_dict().values(), *self.ema.state_dict().values()]
        for tensor in [*tensors, *self.disc.parameters()]:
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        prints = self.dist.gather(digest.hexdigest())
        if len(set(prints)) > 1:
            raise RuntimeError(
                f"The {self.dist.world} processes hold different weights at step {step} "
                "(a synchronization bug in gtok); the state was not saved."
            )

    def diverged(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Stop the run: a loss or gradient became NaN/inf in step number `step` (1-based)."""
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())
        steps = self.run.checkpoints.steps()
        kept = f"step {steps[-1]} in {self.run.checkpoints.folder}" if steps else "none yet"
        if self.dist.main:
            self.run.log({"kind": "event", "event": "diverged", "step": step, "values": shown})
        raise ArgumentError(
            f"The loss is not finite in step {step} ({shown}); training stopped without "
            f"saving. The last good checkpoint ({kept}) is kept: lower lr or grad_clip "
            "and rerun the same command to resume from it.",
            "lr",
            "grad_clip",
        )


def determinism(device: torch.device) -> dict[str, Any]:
    """Whether a resumed run ends with bitwise the weights of an uninterrupted one on
    `device` (`deterministic`), and when not, which operations make it differ. The ranks of
    one run still agree bitwise (their gradients are all-reduced; `save` checks it)."""
    if device.type == "cpu":
        return {"deterministic": True}
    return {"deterministic": False, "nondeterministic_ops": list(NONDETERMINISTIC_CUDA_OPS)}


def _extra_state(model: nn.Module) -> dict[str, Any]:
    """Training-only state of model parts that keep some outside their state dict (the
    GaussianEmbed scale scheduler's running mean: `scheduler_state()`), by module name."""
    return {
        name: module.scheduler_state()
        for name, module in model.named_modules()
        if isinstance(module, GaussianEmbed)
    }


def _load_extra(model: nn.Module, extra: dict[str, Any]) -> None:
    modules = dict(model.named_modules())
    for name, state in extra.items():
        modules[name].load_scheduler_state(state)


def _load_initial_weights(model: nn.Module, arch: TokenizerConfig, path: str) -> str:
    """Start `model` (architecture `arch`) from the weights of the model at `path` (a model
    or run directory) and return the hex sha256 of the bytes they were loaded from;
    GtokError in one sentence when its architecture differs."""
    theirs, ours = read_config(path).to_dict(), arch.to_dict()
    compared = sorted(set(ours) - {"preset"})  # the preset name is informational
    if differing := [k for k in compared if theirs.get(k) != ours[k]]:
        shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in differing[:4])
        raise ArgumentError(
            f"init_from {path} has another architecture than this run ({shown}); choose the "
            "preset, recipe and `model` overrides it was trained with.",
            "init_from",
            "model",
        )
    device = next(model.parameters()).device
    initial, sha256 = load_tokenizer_with_sha256(path, device=device)
    model.load_state_dict(initial.state_dict())
    return sha256
