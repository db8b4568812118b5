"""`TrainConfig`: every setting of a training run, its per-preset defaults, and resume rules.

A config as the user gives it may leave some fields `None` ("choose for me"); `resolve()`
fills them from the preset and the run's size, and the resolved config is what a run
records (`RUN_DIR/train.json`) and what a resume is compared against.

Per-preset choices (docs/design.md section 1, training):

- optimizer: AdamW lr 2e-4, betas (0.9, 0.999), weight decay 0.01 for the CIFAR-like
  presets (`cifar`, `vq-cifar`, and `tiny`, `vq-tiny`, which are the CIFAR family scaled to
  64x64); Adam lr 2e-4, betas (0.5, 0.9), no decay for `imagenet`, `vq-imagenet`. The
  discriminator gets the same optimizer.
- training augmentation: none for CIFAR (the authors train CIFAR without it),
  random-resized-crop + horizontal flip for every other preset. Colour jitter (hue,
  saturation, grayscale) is off for every preset; a user switches it on.
- warm-up: one epoch of 30 in the paper, so 1/30 of the steps; GAN loss from epoch 5 of 30,
  so from 1/6 of the steps.
- recipe (`gtok.train.recipe`): "small" for `tiny` and `vq-tiny` (GaussianEmbed without
  dropout, the quantizer never restarts a code its batch used), "authors" for the others.
  A run directory written before recipes existed resumes with "authors" (its behaviour).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from gtok.errors import ArgumentError, GtokError
from gtok.model.config import ADDED_FIELDS, PRESETS, TokenizerConfig, preset_config
from gtok.train.colour import ColourJitter
from gtok.train.recipe import RECIPES, default_recipe

__all__ = [
    "ADAM_PRESETS",
    "FREE_ON_RESUME",
    "NO_AUGMENT_PRESETS",
    "OPTIMIZERS",
    "PRECISIONS",
    "TrainConfig",
    "resume_conflicts",
    "tokenizer_config",
    "with_saved_recipe",
]

ADAM_PRESETS = frozenset({"imagenet", "vq-imagenet"})
NO_AUGMENT_PRESETS = frozenset({"cifar", "vq-cifar"})
OPTIMIZERS = ("adamw", "adam")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on CUDA, else fp32
# Fields a resumed run may change: how it runs and reports, not what it computes.
FREE_ON_RESUME = frozenset(
    {
        "device",
        "workers",
        "precision",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "sample_every",
        "keep_last",
        "shards",  # the paths may move; the shard file names are compared instead
        "val_shards",
        "val_images",
        "lpips_weights",
        "vgg_weights",
        "init_from",  # the path may move; train.json compares the weights' sha256 instead
    }
)

# Settings added after the first train.json format, with the value that reproduces what a
# run saved without them did.
ADDED_SETTINGS: dict[str, Any] = {"recipe": "authors", "embed_lr_scale": 1.0, "image_column": None}

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Sizes in pixels, rates per optimizer step.

    `batch_size` is per process: a torchrun job of N processes trains on N * batch_size
    images per step. Exactly one of `steps` and `epochs` must be given.
    """

    preset: str
    shards: tuple[str, ...]
    val_shards: tuple[str, ...] = ()
    image_column: str | None = None  # Parquet inputs' image column; None: found by type
    steps: int | None = None  # optimizer steps in the whole run
    epochs: float | None = None  # alternative to steps: passes over the training samples
    batch_size: int = 16  # images per process and step
    lr: float = 2e-4  # peak learning rate of tokenizer and discriminator
    image_size: int | None = None  # None: the preset's; else map_size scales with it
    seed: int = 0
    device: str = "auto"  # "auto": cuda (cuda:LOCAL_RANK under torchrun) when present, else cpu
    workers: int = 2  # DataLoader worker processes per process (spawn); 0 loads inline
    precision: Precision = "auto"  # "auto": bf16 on CUDA when supported, else fp32
    optimizer: Literal["adamw", "adam"] | None = None  # None: per preset
    betas: tuple[float, float] | None = None  # None: per optimizer
    weight_decay: float | None = None  # None: per optimizer
    grad_clip: float = 1.0  # max global gradient norm per network; 0 disables clipping
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    commit_weight: float = 0.25
    gan_weight: float = 0.1
    lecam_weight: float = 0.05
    gan_start_step: int | None = None  # None: steps // 6 (epoch 5 of 30)
    warmup_steps: int | None = None  # None: steps // 30 (1 epoch of 30)
    ema_decay: float = 0.999
    recipe: str | None = None  # "authors" or "small" (gtok.train.recipe); None: per preset
    embed_lr_scale: float | None = None  # GaussianEmbed lr / lr; None: the recipe's
    augment: bool | None = None  # None: per preset (see module docstring)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    hue_jitter: float = 0.0  # max hue rotation in turns (0..0.5); 0: off
    saturation_jitter: float = 0.0  # saturation factor in [1 - s, 1 + s]; 0: off
    grayscale_p: float = 0.0  # probability of a grayscale training crop; 0: off
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    sample_every: int = 500
    keep_last: int = 3  # training states kept besides the best
    val_images: int = 1000  # validation images per evaluation (at most)
    lpips_weights: str | None = None  # LPIPS head file; None: looked up (gtok.weights)
    vgg_weights: str | None = None  # VGG16 backbone file; None: looked up
    model: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig overrides
    init_from: str | None = None  # model or run directory whose weights start the run

    def __post_init__(self) -> None:
        for name in ("shards", "val_shards", "crop_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(self.betas))
        if problems := self._problems():
            raise GtokError(f"Invalid training settings: {'; '.join(problems)}.")

    def _problems(self) -> list[str]:
        out = []
        if (self.steps is None) == (self.epochs is None):
            out.append("give exactly one of steps and epochs")
        if self.steps is not None and self.steps < 1:
            out.append(f"steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            out.append(f"epochs must be positive, got {self.epochs}")
        if not self.shards:
            out.append("no training shards given")
        positive = ("batch_size", "log_every", "eval_every", "checkpoint_every", "sample_every")
        for name in (*positive, "keep_last", "val_images"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            out.append(f"workers must be 0 or more, got {self.workers}")
        if not self.lr > 0:
            out.append(f"lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            out.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.recipe is not None and self.recipe not in RECIPES:
            out.append(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.embed_lr_scale is not None and not self.embed_lr_scale > 0:
            out.append(f"embed_lr_scale must be positive, got {self.embed_lr_scale}")
        if self.grad_clip < 0:
            out.append(f"grad_clip must be 0 (off) or positive, got {self.grad_clip}")
        for name in ("l1_weight", "lpips_weight", "commit_weight", "gan_weight", "lecam_weight"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer not in (None, *OPTIMIZERS):
            out.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            out.append(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.image_size is not None and self.image_size < 1:
            out.append(f"image_size must be positive, got {self.image_size}")
        return out + self.colour_jitter().problems()

    def colour_jitter(self) -> ColourJitter:
        """The colour augmentation of the training crops (`gtok.train.colour`)."""
        return ColourJitter(self.hue_jitter, self.saturation_jitter, self.grayscale_p)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def recipe_name(self) -> str:
        """The recipe this run trains with: the chosen one or the preset's default."""
        return self.recipe or default_recipe(self.preset)

    def resolve(self, num_samples: int | None, world_size: int) -> TrainConfig:
        """Fill every `None` choice and turn `epochs` into `steps`. `num_samples` (training
        samples, for `epochs`) may be None when `steps` is given; `world_size` is the number
        of processes."""
        steps = self.steps
        if steps is None:
            if not num_samples:
                raise GtokError("Cannot train for a number of epochs: the shards hold no samples.")
            assert self.epochs is not None  # exactly one of steps and epochs (`_problems`)
            steps = max(1, math.ceil(self.epochs * num_samples / (self.batch_size * world_size)))
        optimizer = self.optimizer or ("adam" if self.preset in ADAM_PRESETS else "adamw")
        betas = self.betas or ((0.5, 0.9) if optimizer == "adam" else (0.9, 0.999))
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = 0.0 if optimizer == "adam" else 0.01
        warmup = self.warmup_steps if self.warmup_steps is not None else steps // 30
        gan_start = self.gan_start_step if self.gan_start_step is not None else steps // 6
        recipe = self.recipe_name()
        embed_lr_scale = self.embed_lr_scale or RECIPES[recipe].embed_lr_scale
        augment = self.augment
        if augment is None:
            augment = self.preset not in NO_AUGMENT_PRESETS
        if warmup > steps:
            raise ArgumentError(
                f"warmup_steps={warmup} is more than the run's {steps} steps.", "warmup_steps"
            )
        return self.replace(
            steps=steps,
            epochs=None,  # now expressed as steps (train.json records the sample count)
            optimizer=optimizer,
            betas=betas,
            weight_decay=weight_decay,
            warmup_steps=warmup,
            gan_start_step=gan_start,
            augment=augment,
            recipe=recipe,
            embed_lr_scale=embed_lr_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        data = dataclasses.asdict(self)
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise GtokError(f"Unknown training settings: {', '.join(unknown)}.")
        return cls(**data)


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Descriptions `name: saved -> current` of every field that may not change on resume.

    Both are resolved configs as `to_dict` gives them, extended with any run facts the
    caller compares as well (the tokenizer architecture, the world size). A setting that a
    run saved by an older gtok lacks counts as what that gtok did (`ADDED_SETTINGS`, e.g. the
    authors' recipe; `ADDED_FIELDS` of the architecture), else as its default (e.g. colour
    jitter off).
    """
    fields = dataclasses.fields(TrainConfig)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    defaults.update(ADDED_SETTINGS)
    saved = dict(saved)
    if isinstance(saved.get("architecture"), dict):
        saved["architecture"] = {**ADDED_FIELDS, **saved["architecture"]}
    out = []
    for name in sorted(set(saved) | set(current)):
        if name in FREE_ON_RESUME:
            continue
        before, after = saved.get(name, defaults.get(name)), current.get(name)
        if before != after:
            out.append(f"{name}: {before!r} -> {after!r}")
    return out


def with_saved_recipe(cfg: TrainConfig, saved: dict[str, Any] | None) -> TrainConfig:
    """`cfg` with the authors' recipe when it leaves the recipe to the preset and resumes a
    run (saved settings `saved`, None for a new run) written before recipes existed."""
    if cfg.recipe is None and saved is not None and "recipe" not in saved:
        return cfg.replace(recipe=ADDED_SETTINGS["recipe"])
    return cfg


def tokenizer_config(cfg: TrainConfig) -> TokenizerConfig:
    """The architecture a run trains: the preset, the recipe's model settings, `cfg.model`
    overrides (which win), and `image_size` (which scales `map_size` with it, keeping the
    preset's downsampling factor)."""
    if cfg.preset not in PRESETS:
        raise GtokError(f"Unknown preset {cfg.preset!r}; choose one of: {', '.join(PRESETS)}.")
    base = PRESETS[cfg.preset]
    recipe = RECIPES.get(cfg.recipe_name(), RECIPES["authors"])
    overrides = {**recipe.model_overrides(base.kind), **cfg.model}
    if cfg.image_size is not None and cfg.image_size != base.image_size:
        factor = 2 ** (len(overrides.get("ch_mult", base.ch_mult)) - 1)
        if cfg.image_size % factor:
            raise GtokError(
                f"image_size {cfg.image_size} is not a multiple of {factor}, the downsampling "
                f"factor of preset {cfg.preset}."
            )
        overrides["image_size"] = cfg.image_size
        overrides.setdefault("map_size", cfg.image_size // factor)
    try:
        return preset_config(cfg.preset, **overrides)
    except (ValueError, TypeError) as exc:
        raise GtokError(f"The model settings do not make a valid tokenizer: {exc}.") from exc
