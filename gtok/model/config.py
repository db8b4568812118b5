"""`TokenizerConfig`: every architecture field of a tokenizer, and the named presets.

Importing this module is cheap (no torch): `gtok.PRESETS` and `config.json` parsing use it.

Presets:

- `cifar`, `imagenet`: the authors' released GaussianToken models (docs/design.md section 1 and
  its table): 32x32 -> 16x16 map, 64 Gaussians, z = 3; 256x256 -> 32x32 map,
  256 Gaussians, z = 8; codebook 1024; ch 128, 4 ResBlocks per level.
- `tiny`: 64x64 input, 64 Gaussians on a 16x16 map (the cifar preset's render size, so
  GaussianEmbed and the rasterizer run unchanged at the authors' cifar scale), z = 8,
  codebook 1024; small enough to train on a 2-core CPU (target: 25 images/s
  forward+backward at batch 32, `bench/model.py`). GaussianEmbed costs about 20 ms of CPU
  per image there whatever the CNN, so the CNN is cut to fit the rest: base width 32 (the
  least with 32 GroupNorm groups) at every level (ch_mult (1, 1, 1)) and one ResBlock per
  level. Forward+backward on one core of the 2-core machine takes 42 ms of CPU per image
  (ch_mult (1, 1, 2): 47; (1, 2, 2): 70), 24 images/s, so two cores need to add only 5%.
- `vq-tiny`, `vq-cifar`, `vq-imagenet`: plain VQGAN baselines from the same encoder/decoder
  family that quantize every cell of a feature map with as many cells as the matching
  preset has Gaussians (8x8 = 64, 8x8 = 64, 16x16 = 256), with the same codebook and z. The
  map is one level smaller, so the baselines have one more level (`vq-imagenet` is the
  authors' own baseline config, ch_mult (1, 1, 2, 2, 4)).

Opt-in geometry options (docs/design.md; every preset keeps them off): `normalized_splatting`
divides the rendered map by the sum of the Gaussians' weights plus `kernels.NORMALIZE_EPS`
at each pixel, so a Gaussian that moves leaves no hole; `rotation_param="direction"`
predicts the rotation as a direction (u, v) (rotation = atan2(v, u) / 2 mod pi), without
the sigmoid's walls at 0 and pi and its fixed start at pi/2; `anisotropic_init` starts the
refine heads' scale logits at (+1, -1) instead of (0, 0) (elongated, not round, Gaussians).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "EMBED_NAMES",
    "LIMITS",
    "MAX_CHANNELS",
    "MAX_CODEBOOK_SIZE",
    "PRESETS",
    "REFINE_LOSSES",
    "TokenizerConfig",
    "gaussian_embed_problems",
    "preset_config",
]

# the losses of encode-time geometry refinement (`gtok.model.refine`): here, so that the CLI
# lists them without importing torch
REFINE_LOSSES = ("psnr", "mse", "l1")

# the opt-in geometry options (docs/design.md section 1), off in every preset
OPTIONAL_FIELDS = ("normalized_splatting", "rotation_param", "anisotropic_init")
# Fields added after the first config.json format, with the value that reproduces what a
# model saved without them did: an older config.json loads with these.
ADDED_FIELDS: dict[str, Any] = {
    "restart_used_codes": True,
    "normalized_splatting": False,
    "rotation_param": "sigmoid",
    "anisotropic_init": False,
    "norm_groups": 32,
}
MAX_CODEBOOK_SIZE = 65536  # token ids are stored as uint16
ROTATION_PARAMS = ("sigmoid", "direction")
GROUPS = 32  # the authors' GroupNorm groups (`norm_groups`' default)
MAX_CHANNELS = 4096  # widest CNN level, ch * max(ch_mult) (the presets reach 512)
MAX_LEVELS = 8  # len(ch_mult): 2^7 = 128x downsampling (the presets use 2 to 5)
# GaussianEmbedConfig's fields that TokenizerConfig names otherwise; every other field of
# GaussianEmbedConfig has a TokenizerConfig field of its name (`GaussianEmbedConfig.from_model`)
EMBED_NAMES = {"in_dim": "embed_dim", "dim": "gaussian_dim"}
# GaussianEmbed's integer settings, each in [1, LIMITS of its TokenizerConfig name]
_EMBED_COUNTS = (
    "num_gaussians",
    "z_dim",
    "in_dim",
    "dim",
    "num_heads",
    "num_points",
    "ffn_dim",
    "num_rounds",
    "num_encoder_layers",
    "num_decoder_layers",
    "norm_groups",
)

# Upper bounds of the integer fields, far above any published tokenizer (the presets' values
# in brackets) but low enough that a config file cannot make gtok build millions of modules
# or allocate gigabytes before its weights are compared with it (`gtok.model.io`).
LIMITS: dict[str, int] = {
    "image_size": 8192,  # [32, 64, 256]
    "ch": 1024,  # [32, 128]
    "num_res_blocks": 16,  # [1, 4]
    "embed_dim": 4096,  # [3, 8, 64]
    "map_size": 1024,  # [8, 16, 32]
    "z_dim": 1024,  # [3, 8]
    "codebook_size": MAX_CODEBOOK_SIZE,  # [1024]
    "num_gaussians": 65536,  # [64, 256]
    "gaussian_dim": 1024,  # [64]
    "num_heads": 64,  # [4]
    "num_points": 64,  # [4]
    "ffn_dim": 16384,  # [256]
    "num_rounds": 16,  # [3]
    "num_encoder_layers": 16,  # [2]
    "num_decoder_layers": 16,  # [2]
    "kmeans_iters": 1000,  # [10]
    "norm_groups": 1024,  # [8, 32]
}


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of a GaussianToken tokenizer (kind "gaussian") or its VQGAN baseline ("vq").

    Units: sizes in pixels (image) or cells (map); scales in feature-map pixels.
    """

    kind: Literal["gaussian", "vq"] = "gaussian"
    preset: str = "custom"  # the preset this config was built from (informational)
    image_size: int = 32  # input and output side, pixels (square images)
    # CNN encoder/decoder (Open-MAGVIT2 family)
    ch: int = 128  # base channels
    ch_mult: tuple[int, ...] = (1, 2)  # channels per level = ch * mult; 2^(levels-1) down
    num_res_blocks: int = 4  # ResBlocks per level and in the middle
    # GroupNorm groups of the CNN and of GaussianEmbed's map lifter. The authors' 32 at a
    # width of 32 channels is one channel per group: an instance norm, which erases each
    # channel's mean, i.e. the colour of flat regions (the small presets' recipe uses 8)
    norm_groups: int = GROUPS
    embed_dim: int = 64  # encoder output channels (vq: equal to z_dim, it is quantized as is)
    map_size: int = 16  # side of the encoder map and of the rendered map, cells
    # tokens and codebook
    z_dim: int = 3  # code (and rendered map) channels
    codebook_size: int = 1024
    num_gaussians: int | None = 64  # gaussian: tokens per image; vq: None (map_size^2 tokens)
    # GaussianEmbed (docs/design.md section 1, steps 2-3)
    gaussian_dim: int = 64  # width D of its attention/MLP layers and of the anchor features
    num_heads: int = 4
    num_points: int = 4  # learned sampling points per head (plus one fixed zero offset)
    ffn_dim: int = 256
    num_rounds: int = 3  # rounds of [cross-attention, FFN, refine]
    num_encoder_layers: int = 2  # deformable self-attention layers over the map
    num_decoder_layers: int = 2  # decoder layers per cross-attention module
    dropout: float = 0.1
    scale_min: float = 0.1  # smallest Gaussian standard deviation, map pixels
    scale_max_init: float = 4.0  # r_max at the start of training, map pixels
    scale_max_floor: float = 3.0  # r_max shrinks towards this during training
    # opt-in changes to the geometry (docs/design.md; off = the authors' model, and what model
    # directories written before these fields existed load with):
    normalized_splatting: bool = False  # rendered map / (sum of weights + eps), not a sum
    rotation_param: Literal["sigmoid", "direction"] = "sigmoid"  # see GaussianEmbedConfig
    anisotropic_init: bool = False  # refine heads start with scale logits (+1, -1)
    # vector quantizer (docs/design.md section 1, step 4)
    codebook_decay: float = 0.8  # EMA decay of the codebook
    codebook_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    kmeans_iters: int = 10  # k-means iterations of the first-batch initialization
    dead_threshold: float = 2.0  # codes with EMA cluster size below this are restarted
    # False: a code used in the step's batch is never restarted (small presets' recipe)
    restart_used_codes: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        problems = self._problems()
        if problems:
            raise ValueError(f"invalid tokenizer config: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        out: list[str] = []
        if self.kind not in ("gaussian", "vq"):
            out.append(f"kind must be 'gaussian' or 'vq', got {self.kind!r}")
        names = ("image_size", "ch", "num_res_blocks", "embed_dim", "map_size", "z_dim")
        out.extend(filter(None, (_count_problem(name, getattr(self, name)) for name in names)))
        out.extend(filter(None, (_real_problem(f.name, getattr(self, f.name)) for f in _REALS)))
        if out:
            return out
        if not self.ch_mult or any(not _is_int(m) or m < 1 for m in self.ch_mult):
            out.append(f"ch_mult must be positive integers, got {self.ch_mult!r}")
            return out
        if len(self.ch_mult) > MAX_LEVELS or self.ch * max(self.ch_mult) > MAX_CHANNELS:
            out.append(
                f"ch_mult must have at most {MAX_LEVELS} levels and ch * max(ch_mult) be at "
                f"most {MAX_CHANNELS}, got ch={self.ch}, ch_mult={self.ch_mult}"
            )
            return out
        if problem := _count_problem("norm_groups", self.norm_groups):
            return [*out, problem]
        if any(self.ch * m % self.norm_groups for m in self.ch_mult):
            out.append(
                f"ch * ch_mult must be multiples of norm_groups {self.norm_groups} (GroupNorm "
                f"groups), got ch={self.ch}, ch_mult={self.ch_mult}"
            )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size != self.map_size * factor:
            out.append(
                f"image_size {self.image_size} must be map_size {self.map_size} * "
                f"2^(len(ch_mult) - 1) = {self.map_size * factor}"
            )
        if not _is_int(self.codebook_size) or not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            out.append(
                f"codebook_size must be an integer in [2, {MAX_CODEBOOK_SIZE}], "
                f"got {self.codebook_size!r}"
            )
        if self.kind == "vq":
            if self.num_gaussians is not None:
                out.append(f"a vq config has no Gaussians, got num_gaussians={self.num_gaussians}")
            if self.embed_dim != self.z_dim:
                out.append(
                    f"a vq encoder outputs the codes: embed_dim {self.embed_dim} "
                    f"must equal z_dim {self.z_dim}"
                )
        else:
            out.extend(gaussian_embed_problems(self, EMBED_NAMES))
            if not isinstance(self.normalized_splatting, bool):
                out.append(
                    f"normalized_splatting must be true or false, got {self.normalized_splatting!r}"
                )
        if not 0 < self.codebook_decay < 1:
            out.append(f"codebook_decay must be in (0, 1), got {self.codebook_decay}")
        if self.codebook_eps <= 0 or self.dead_threshold < 0:
            out.append(
                f"codebook_eps must be > 0 and dead_threshold >= 0, got "
                f"{self.codebook_eps}, {self.dead_threshold}"
            )
        out.extend(filter(None, [_count_problem("kmeans_iters", self.kmeans_iters, low=0)]))
        return out

    @property
    def num_tokens(self) -> int:
        """Tokens per image: the Gaussian count, or the map's cell count for vq."""
        return self.map_size**2 if self.num_gaussians is None else self.num_gaussians

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (ch_mult as a list)."""
        data = dataclasses.asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        """Inverse of `to_dict`; unknown or missing fields are a ValueError naming them (a
        field of `ADDED_FIELDS` that an older config lacks takes its old-behaviour value)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise ValueError(f"unknown tokenizer config fields: {', '.join(unknown)}")
        data = {**ADDED_FIELDS, **data}
        if missing := sorted(names - set(data)):
            raise ValueError(f"tokenizer config fields missing: {', '.join(missing)}")
        return cls(**data)

    def replace(self, **overrides: Any) -> TokenizerConfig:
        """A copy with some fields changed (validated); unknown names are a ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        if unknown := sorted(set(overrides) - names):
            raise ValueError(
                f"unknown tokenizer config fields: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(names))})"
            )
        return dataclasses.replace(self, **overrides)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a finite number (JSON's Infinity and NaN are not), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    return None


def _count_problem(name: str, value: Any, low: int = 1, high: int | None = None) -> str | None:
    """Why `value` is not an integer in [low, high] (None: LIMITS[name]), or None when it is."""
    high = LIMITS[name] if high is None else high
    if not _is_int(value) or not low <= value <= high:
        return f"{name} must be an integer in [{low}, {high}], got {value!r}"
    return None


def gaussian_embed_problems(settings: Any, names: Mapping[str, str] | None = None) -> list[str]:
    """Why the GaussianEmbed settings of `settings` do not make a GaussianEmbed ([] when they
    do): the one check of them, for a `GaussianEmbedConfig` and for a "gaussian"
    `TokenizerConfig` (`names`: `EMBED_NAMES`, its names of GaussianEmbedConfig's fields).
    Each problem names a field as `settings` calls it."""
    names = names or {}

    def name(field: str) -> str:
        return names.get(field, field)

    def value(field: str) -> Any:
        return getattr(settings, name(field))

    out = [
        problem
        for field in _EMBED_COUNTS
        if (
            problem := _count_problem(
                name(field), value(field), high=LIMITS[EMBED_NAMES.get(field, field)]
            )
        )
    ]
    if out:
        return out
    dim, heads, groups = value("dim"), value("num_heads"), value("norm_groups")
    if dim % groups or dim % heads or dim % 4:
        out.append(
            f"{name('dim')} must be a multiple of norm_groups ({groups}), of num_heads and of 4 "
            f"(sine position embedding), got {name('dim')}={dim}, num_heads={heads}"
        )
    if not 0 <= value("dropout") < 1:
        out.append(f"dropout must be in [0, 1), got {value('dropout')}")
    if value("rotation_param") not in ROTATION_PARAMS:
        out.append(
            f"rotation_param must be one of {', '.join(ROTATION_PARAMS)}, "
            f"got {value('rotation_param')!r}"
        )
    if not isinstance(value("anisotropic_init"), bool):
        out.append(f"anisotropic_init must be true or false, got {value('anisotropic_init')!r}")
    low, floor, start = value("scale_min"), value("scale_max_floor"), value("scale_max_init")
    if not 0 < low < floor <= start:
        out.append(
            f"need 0 < scale_min < scale_max_floor <= scale_max_init, got {low}, {floor}, {start}"
        )
    return out


# the float fields, each checked to be a finite number before any is compared with a bound
_REALS = tuple(f for f in dataclasses.fields(TokenizerConfig) if f.type == "float")

PRESETS: dict[str, TokenizerConfig] = {
    c.preset: c
    for c in (
        TokenizerConfig(preset="cifar"),
        TokenizerConfig(
            preset="imagenet",
            image_size=256,
            ch_mult=(1, 2, 2, 4),
            map_size=32,
            z_dim=8,
            num_gaussians=256,
        ),
        TokenizerConfig(
            preset="tiny",
            image_size=64,
            ch=32,
            ch_mult=(1, 1, 1),
            num_res_blocks=1,
            map_size=16,
            z_dim=8,
        ),
        TokenizerConfig(
            kind="vq",
            preset="vq-cifar",
            ch_mult=(1, 2, 2),
            embed_dim=3,
            map_size=8,
            num_gaussians=None,
        ),
        TokenizerConfig(
            kind="vq",
            preset="vq-imagenet",
            image_size=256,
            ch_mult=(1, 1, 2, 2, 4),
            embed_dim=8,
            map_size=16,
            z_dim=8,
            num_gaussians=None,
        ),
        TokenizerConfig(
            kind="vq",
            preset="vq-tiny",
            image_size=64,
            ch=32,
            ch_mult=(1, 1, 1, 1),
            num_res_blocks=1,
            embed_dim=8,
            map_size=8,
            z_dim=8,
            num_gaussians=None,
        ),
    )
}


def preset_config(name: str, **overrides: Any) -> TokenizerConfig:
    """The config of preset `name` with `overrides` applied; an unknown name is a ValueError."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
