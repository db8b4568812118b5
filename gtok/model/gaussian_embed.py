"""GaussianEmbed: an encoder feature map becomes G 2D Gaussians (docs/design.md section 1, steps 2
and 3).

Pipeline (B images, an [h, w] feature map of `in_dim` channels, width D = `dim`):

1. lifter: 1x1 conv + GroupNorm(32) -> src [B, hw, D]; sine position embedding pos [1, hw, D];
2. learned anchors [G, 5 + D] (xy logits 0:2, rotation logit 2, scale logits 3:5, feature
   5:) and frozen all-zero instance features [G, D]; the anchor encoder embeds the anchors;
3. attention encoder: deformable self-attention layers over the map -> memory [B, hw, D];
4. `num_rounds` rounds (unshared parameters) of cross-attention into the memory, FFN, and
   refine (only xy is added to the previous anchor; the other parts are replaced), kept in
   one flat list `layers` = [cross_attn, ffn, refine] * num_rounds;
5. Gaussian parameters from the last anchors, computed by the last refine, which also holds
   the feature head `to_features` and the scale range `range_scheduler` (see `Gaussians`).

Module, parameter and buffer names are the authors' (`gs_embed.*` in their checkpoint), so a
checkpoint converts by renaming the prefix; left out are what their forward pass never uses:
`op_module_map.*` and the first refines' `to_features` and `range_scheduler`.

Everything runs in the parameters' dtype, even under autocast: fp32 (float64 or bfloat16
when the model was cast with `.to(dtype)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple, cast

import torch
import torch.distributed as dist
from torch import nn

from gtok.model.config import EMBED_NAMES, TokenizerConfig, gaussian_embed_problems
from gtok.model.deform_attn import DeformableAttention, parameter_dtype

__all__ = [
    "LOGIT_CLAMP",
    "GaussianEmbed",
    "GaussianEmbedConfig",
    "Gaussians",
    "ScaleRange",
    "sine_position_embedding",
]

LOGIT_CLAMP = 9.21024  # logit(0.9999): every sigmoid input is clamped to +-this
GROUPS = 32  # GroupNorm groups of the lifter
# scale-range scheduler (docs/design.md section 1, step 3)
EMA_MOMENTUM = 0.01  # weight of the batch's mean scale in the EMA
SHRINK_RATE = 1e-3  # r_max -= SHRINK_RATE * max(ema - midpoint, MIN_SHRINK)
MIN_SHRINK = 0.01


@dataclass(frozen=True)
class GaussianEmbedConfig:
    """Architecture of GaussianEmbed. Scales are standard deviations in feature-map pixels."""

    num_gaussians: int  # G, Gaussians (tokens) per image
    z_dim: int  # channels of a Gaussian's feature = codebook vector size
    in_dim: int = 64  # channels of the encoder's feature map
    dim: int = 64  # width D of every attention/MLP layer; anchors carry a D-dim feature
    num_heads: int = 4
    num_points: int = 4  # learned deformable sampling points per head (+1 fixed)
    ffn_dim: int = 256  # hidden width of the MLPs and of the round FFN
    num_rounds: int = 3  # rounds of [cross-attention, FFN, refine]
    num_encoder_layers: int = 2  # deformable self-attention layers over the map
    num_decoder_layers: int = 2  # decoder layers per cross-attention
    dropout: float = 0.1
    scale_min: float = 0.1  # smallest standard deviation
    scale_max_init: float = 4.0  # r_max, the largest standard deviation, at the start
    scale_max_floor: float = 3.0  # r_max shrinks during training, not below this
    # opt-in (docs/design.md; defaults are the authors'): "direction" predicts the rotation as a
    # vector (u, v) in two anchor entries, rotation = atan2(v, u) / 2 mod pi (no sigmoid
    # walls at 0 and pi), updated residually like xy (so each Gaussian starts at its own
    # learned anchor's direction, not all at pi/2); anisotropic_init starts each refine
    # head's scale logits at (+1, -1), elongated Gaussians, instead of round ones
    rotation_param: str = "sigmoid"
    anisotropic_init: bool = False
    norm_groups: int = GROUPS  # GroupNorm groups of the map lifter

    @property
    def layout(self) -> AnchorLayout:
        return AnchorLayout(2 if self.rotation_param == "direction" else 1)

    def __post_init__(self) -> None:
        if problems := gaussian_embed_problems(self):
            raise ValueError(f"invalid GaussianEmbed config: {'; '.join(problems)}")

    @classmethod
    def from_model(cls, config: TokenizerConfig) -> GaussianEmbedConfig:
        """The GaussianEmbed settings of a "gaussian" tokenizer config: each field of the
        config's field of that name, or of the name `EMBED_NAMES` gives it."""
        return cls(
            **{f.name: getattr(config, EMBED_NAMES.get(f.name, f.name)) for f in fields(cls)}
        )


class AnchorLayout(NamedTuple):
    """Where each part of an anchor [.., geometry + D] sits: xy logits 0:2, rotation (1 logit,
    or a direction (u, v)), scale logits (2), then the feature."""

    rotation_dims: int  # 1 (the authors' sigmoid logit) or 2 (direction)

    @property
    def rotation(self) -> slice:
        return slice(2, 2 + self.rotation_dims)

    @property
    def scale(self) -> slice:
        return slice(2 + self.rotation_dims, 4 + self.rotation_dims)

    @property
    def geometry(self) -> int:
        """Anchor entries before the feature (5 for the authors' layout)."""
        return 4 + self.rotation_dims


class Gaussians(NamedTuple):
    """G Gaussians per image on an [h, w] feature map.

    means: [B, G, 2] (x, y) in [-1, 1] of the map's extent.
    scales: [B, G, 2] standard deviations (along the rotated x, y axes), feature-map pixels,
        in [scale_min, r_max].
    rotations: [B, G] radians in [0, pi].
    features: [B, G, z] before quantization.
    """

    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    features: torch.Tensor


def safe_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x.clamp(-LOGIT_CLAMP, LOGIT_CLAMP))


def safe_logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1.0 - 1e-4)
    return torch.log(p / (1.0 - p))


def sine_position_embedding(
    height: int, width: int, dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """Deformable-DETR sine embedding of an [H, W] map -> [1, H*W, dim] (row-major).

    Per axis dim/2 channels: coordinate t_k = (k - 0.5) / (N + 1e-6) * 2 pi for k = 1..N,
    channel 2c is sin(t / T^(2c / (dim/2))) and channel 2c+1 is cos of the same angle,
    T = 1e4. The y channels come first, then x.
    """
    n = dim // 2
    freq = 1e4 ** (2 * (torch.arange(n, device=device) // 2) / n)  # [n]

    def axis(length: int) -> torch.Tensor:
        t = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        t = (t - 0.5) / (length + 1e-6) * (2.0 * math.pi)
        angle = t[:, None] / freq  # [N, n]
        return torch.stack([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = axis(height)[:, None, :].expand(height, width, n)  # [H, W, n]
    pos_x = axis(width)[None, :, :].expand(height, width, n)  # [H, W, n]
    return torch.cat([pos_y, pos_x], dim=-1).reshape(1, height * width, dim)  # [1, HW, dim]


def pixel_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """[1, H*W, 2] (x, y) = ((j + 0.5) / W, (i + 0.5) / H), row-major."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    return torch.stack([grid_x, grid_y], dim=-1).reshape(1, height * width, 2)


class FeatureMapLifter(nn.Module):
    """1x1 conv (xavier, zero bias) + GroupNorm(`groups`, eps 1e-5), flattened, plus position."""

    def __init__(self, in_dim: int, dim: int, groups: int = GROUPS) -> None:
        super().__init__()
        conv = nn.Conv2d(in_dim, dim, 1)
        self.input_proj = nn.Sequential(conv, nn.GroupNorm(groups, dim))
        nn.init.xavier_uniform_(conv.weight)
        assert conv.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(conv.bias)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, h, w] -> src [B, h*w, D] and pos [1, h*w, D]."""
        _, _, h, w = feature_map.shape
        src = self.input_proj(feature_map).flatten(2).transpose(1, 2)  # [B, hw, D]
        return src, sine_position_embedding(h, w, src.shape[-1], src.device)


class GaussianLifter(nn.Module):
    """Learned anchors [G, 5 + D] and frozen all-zero instance features [G, D].

    The authors build the anchor in the order (xy, scale, scale, rotation, feature) but read
    it as (xy, rotation, scale_x, scale_y, feature); we keep the resulting init: xy, rotation
    and scale_x logits are logit(U(0, 1)) (U clamped to [1e-4, 0.9999]), scale_y logit 0,
    features N(0, 1).
    """

    def __init__(self, num_gaussians: int, dim: int, layout: AnchorLayout | None = None) -> None:
        super().__init__()
        xy = safe_logit(torch.rand(num_gaussians, 2))
        built_scale = safe_logit(torch.rand(num_gaussians, 2))  # read as rotation, scale_x
        built_rotation = torch.zeros(num_gaussians, 1)  # read as scale_y
        feature = torch.randn(num_gaussians, dim)
        parts = [xy, built_scale, built_rotation, feature]
        if layout is not None and layout.rotation_dims == 2:  # a direction at angle 2 phi
            phi = torch.sigmoid(built_scale[:, :1]) * math.pi
            parts = [xy, torch.cos(2 * phi), torch.sin(2 * phi), built_scale[:, 1:], *parts[2:]]
        self.anchor = nn.Parameter(torch.cat(parts, dim=1))
        self.instance_feature = nn.Parameter(torch.zeros(num_gaussians, dim), requires_grad=False)

    def forward(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> instance features [B, G, D] and anchors [B, G, 5 + D]."""
        instance = self.instance_feature[None].expand(batch, -1, -1)
        return instance, self.anchor[None].expand(batch, -1, -1)


def _linear_relu_ln(in_dim: int, dim: int) -> nn.Sequential:
    """[Linear-ReLU-LayerNorm] x 2."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.ReLU(), nn.LayerNorm(dim),
        nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim),
    )  # fmt: skip


class AnchorEncoder(nn.Module):
    """Embeds raw anchor logits [.., 5 + D] -> [.., D]: one MLP per part, summed, one more."""

    def __init__(self, dim: int, layout: AnchorLayout | None = None) -> None:
        super().__init__()
        self.layout = layout = layout or AnchorLayout(1)
        self.xy_fc = _linear_relu_ln(2, dim)
        self.scale_fc = _linear_relu_ln(2, dim)
        self.rot_fc = _linear_relu_ln(layout.rotation_dims, dim)
        self.feature_fc = _linear_relu_ln(dim, dim)
        self.output_fc = _linear_relu_ln(dim, dim)

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        parts = (
            self.xy_fc(anchor[..., 0:2])
            + self.rot_fc(anchor[..., self.layout.rotation])
            + self.scale_fc(anchor[..., self.layout.scale])
            + self.feature_fc(anchor[..., self.layout.geometry :])
        )
        return self.output_fc(parts)


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, dim), nn.Dropout(dropout),
    )  # fmt: skip


def _reset_attention_layer(layer: nn.Module) -> None:
    """The authors' init: xavier on every matrix, then the MSDA init of deformable attention."""
    for p in layer.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for m in layer.modules():
        if isinstance(m, DeformableAttention):
            m.reset_parameters()


class EncoderLayer(nn.Module):
    """Post-norm deformable self-attention over the map, then an MLP."""

    def __init__(self, cfg: GaussianEmbedConfig) -> None:
        super().__init__()
        self.self_attn = DeformableAttention(cfg.dim, cfg.num_heads, 1, cfg.num_points)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.mlp = _mlp(cfg.dim, cfg.ffn_dim, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        _reset_attention_layer(self)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shape: tuple[int, int]
    ) -> torch.Tensor:
        """src [B, hw, D], pos [1, hw, D], reference [B, hw, 2] -> [B, hw, D]."""
        attended = self.self_attn(src + pos, reference, src, shape)
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.mlp(src))


class AttentionEncoder(nn.Module):
    """Deformable self-attention layers over the map, references at pixel centres."""

    def __init__(self, cfg: GaussianEmbedConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """src [B, hw, D], pos [1, hw, D] -> memory [B, hw, D]."""
        reference = pixel_centres(*shape, device=src.device).expand(src.shape[0], -1, -1)
        for layer in self.layers:
            src = layer(src, pos, reference, shape)
        return src


class DecoderLayer(nn.Module):
    """Post-norm: self-attention among Gaussians, deformable cross-attention, MLP."""

    def __init__(self, cfg: GaussianEmbedConfig) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            cfg.dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True
        )
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.cross_attn = DeformableAttention(cfg.dim, cfg.num_heads, 1, cfg.num_points)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = _mlp(cfg.dim, cfg.ffn_dim, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.dim)
        _reset_attention_layer(self)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        """tgt, query_pos [B, G, D]; reference [B, G, 2] in [0, 1]; memory [B, hw, D]."""
        qk = tgt + query_pos
        attended = self.self_attn(qk, qk, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(tgt + query_pos, reference, memory, shape)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.mlp(tgt))


class CrossAttention(nn.Module):
    """Decoder layers, dropout, then [output, input] concatenated -> [B, G, 2D]."""

    def __init__(self, cfg: GaussianEmbedConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        instance: torch.Tensor,
        anchor_embed: torch.Tensor,
        memory: torch.Tensor,
        reference: torch.Tensor,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        out = instance
        for layer in self.layers:
            out = layer(out, anchor_embed, reference, memory, shape)
        return torch.cat([self.proj_drop(out), instance], dim=-1)  # [B, G, 2D]


class AsymmetricFFN(nn.Module):
    """LayerNorm(2D) -> Linear(2D, F) -> ReLU -> Linear(F, D), plus Linear(2D, D) of the
    normalized input (no dropout)."""

    def __init__(self, in_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.pre_norm_layer = nn.LayerNorm(in_dim)
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU()), nn.Linear(hidden, dim)
        )
        self.identity_fc = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm_layer(x)
        return self.identity_fc(x) + self.layers(x)


class Scale(nn.Module):
    """Learnable per-dimension scale, init 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _refine_mlp(dim: int, out_dim: int) -> nn.Sequential:
    """[Linear-ReLU-Linear-ReLU-LayerNorm] x 2 -> Linear(D, out) -> Scale(out)."""
    return nn.Sequential(
        nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim),
        nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim),
        nn.Linear(dim, out_dim), Scale(out_dim),
    )  # fmt: skip


class ScaleRange(nn.Module):
    """Scale logits -> standard deviations in [scale_min, r_max]; r_max shrinks in training.

    Buffers: `current_range_max` = r_max (persistent: saved with the weights) starts at
    `scale_max_init`; `ema` (NOT persistent: training state, see
    `GaussianEmbed.scheduler_state`) starts at the initial midpoint
    (scale_min + scale_max_init) / 2. Each `step(mean_scale)`:
    ema <- 0.01 * mean_scale + 0.99 * ema; then while r_max > floor,
    r_max -= 1e-3 * max(ema - (r_max + scale_min) / 2, 0.01), floored at `scale_max_floor`.
    """

    current_range_max: torch.Tensor
    ema: torch.Tensor

    def __init__(self, scale_min: float, scale_max_init: float, scale_max_floor: float) -> None:
        super().__init__()
        self.scale_min = scale_min
        self.scale_max_floor = scale_max_floor
        self.register_buffer("current_range_max", torch.tensor(float(scale_max_init)))
        self.register_buffer(
            "ema", torch.tensor((scale_min + scale_max_init) / 2.0), persistent=False
        )

    @property
    def r_max(self) -> torch.Tensor:
        """Scalar tensor: the current largest standard deviation, feature-map pixels."""
        return self.current_range_max

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scale_min + (self.r_max - self.scale_min) * safe_sigmoid(logits)

    @torch.no_grad()
    def step(self, mean_scale: torch.Tensor) -> None:
        """One scheduler update from this batch's mean scale (averaged over ranks, if any)."""
        mean_scale = mean_scale.detach().to(self.ema.dtype).clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(mean_scale)
            mean_scale /= dist.get_world_size()
        self.ema.lerp_(mean_scale, EMA_MOMENTUM)
        midpoint = (self.r_max + self.scale_min) / 2.0
        shrink = SHRINK_RATE * torch.clamp(self.ema - midpoint, min=MIN_SHRINK)
        shrunk = torch.clamp(self.r_max - shrink, min=self.scale_max_floor)
        self.r_max.copy_(torch.where(self.r_max > self.scale_max_floor, shrunk, self.r_max))


class Refine(nn.Module):
    """New anchors from instance features: xy is a residual update, the rest is replaced.

    The last refine also turns anchors into Gaussians (`get_gaussians`): it holds the feature
    head `to_features` and the scale range `range_scheduler`.
    """

    def __init__(self, cfg: GaussianEmbedConfig, last: bool = False) -> None:
        super().__init__()
        self.layout = cfg.layout
        self.layers = _refine_mlp(cfg.dim, self.layout.geometry + cfg.dim)
        if cfg.anisotropic_init:
            with torch.no_grad():
                scale_head = cast(nn.Linear, self.layers[-2])
                scale_head.bias[self.layout.scale] = torch.tensor([1.0, -1.0])
        if last:
            self.range_scheduler = ScaleRange(
                cfg.scale_min, cfg.scale_max_init, cfg.scale_max_floor
            )
            self.to_features = _refine_mlp(cfg.dim, cfg.z_dim)

    def forward(
        self, instance: torch.Tensor, anchor_embed: torch.Tensor, anchor: torch.Tensor
    ) -> torch.Tensor:
        """instance, anchor_embed [B, G, D]; anchor [B, G, 5 + D] -> [B, G, 5 + D]."""
        out = self.layers(instance + anchor_embed)
        kept = 2 if self.layout.rotation_dims == 1 else 4  # a direction is updated like xy
        return torch.cat([out[..., :kept] + anchor[..., :kept], out[..., kept:]], dim=-1)

    def get_gaussians(self, anchor: torch.Tensor) -> Gaussians:
        """anchor [B, G, 5 + D] -> Gaussians; in training mode also steps the scale range."""
        layout = self.layout
        means = 2.0 * safe_sigmoid(anchor[..., 0:2]) - 1.0
        if layout.rotation_dims == 1:
            rotations = safe_sigmoid(anchor[..., 2]) * math.pi
        else:  # direction (u, v) at twice the angle: orientations are pi-periodic
            rotations = torch.remainder(torch.atan2(anchor[..., 3], anchor[..., 2]) / 2, math.pi)
        scales = self.range_scheduler(anchor[..., layout.scale])  # r_max from before this step
        features = self.to_features(anchor[..., layout.geometry :])
        if self.training:
            self.range_scheduler.step(scales.detach().mean())
        return Gaussians(means, scales, rotations, features)


class GaussianEmbed(nn.Module):
    """Feature map [B, in_dim, h, w] -> `Gaussians` (see the module docstring).

    In training mode every forward also steps the scale-range scheduler (`ScaleRange`); under
    `torch.distributed` that step all-reduces the mean scale, so training-mode forwards are
    collective.
    """

    def __init__(self, config: GaussianEmbedConfig) -> None:
        super().__init__()
        self.config = config
        self.fm_lifter = FeatureMapLifter(config.in_dim, config.dim, config.norm_groups)
        self.gaussian_lifter = GaussianLifter(config.num_gaussians, config.dim, config.layout)
        self.anchor_encoder = AnchorEncoder(config.dim, config.layout)
        self.attn_encoder = AttentionEncoder(config)
        self.layers = nn.ModuleList()  # [cross_attn, ffn, refine] * num_rounds
        for r in range(config.num_rounds):
            self.layers.append(CrossAttention(config))
            self.layers.append(AsymmetricFFN(2 * config.dim, config.ffn_dim, config.dim))
            self.layers.append(Refine(config, last=r == config.num_rounds - 1))

    @property
    def last_refine(self) -> Refine:
        """The last `Refine`, which turns anchors into Gaussians."""
        return cast(Refine, self.layers[-1])

    @property
    def scale_range(self) -> ScaleRange:
        """The scale-range scheduler (its buffer `current_range_max` is r_max)."""
        return self.last_refine.range_scheduler

    def forward(self, feature_map: torch.Tensor) -> Gaussians:
        """feature_map [B, in_dim, h, w] -> Gaussians (in the parameters' dtype, fp32 unless
        the model was cast) for an [h, w] render."""
        if feature_map.ndim != 4 or feature_map.shape[1] != self.config.in_dim:
            raise ValueError(
                f"expected a feature map [B, {self.config.in_dim}, h, w], "
                f"got {tuple(feature_map.shape)}"
            )
        with torch.autocast(device_type=feature_map.device.type, enabled=False):
            feature_map = feature_map.to(parameter_dtype(self))
            batch, _, h, w = feature_map.shape
            src, pos = self.fm_lifter(feature_map)  # [B, hw, D], [1, hw, D]
            instance, anchor = self.gaussian_lifter(batch)  # [B, G, D], [B, G, 5 + D]
            anchor_embed = self.anchor_encoder(anchor)  # [B, G, D]
            memory = self.attn_encoder(src, pos, (h, w))  # [B, hw, D]
            rounds = [self.layers[i : i + 3] for i in range(0, len(self.layers), 3)]
            for r, (cross_attn, ffn, refine) in enumerate(rounds):
                reference = safe_sigmoid(anchor[..., :2])  # [B, G, 2] (x, y) in [0, 1]
                instance = cross_attn(instance, anchor_embed, memory, reference, (h, w))
                instance = ffn(instance)  # [B, G, 2D] -> [B, G, D]
                anchor = refine(instance, anchor_embed, anchor)  # [B, G, 5 + D]
                if r < len(rounds) - 1:
                    anchor_embed = self.anchor_encoder(anchor)
            return self.last_refine.get_gaussians(anchor)

    def scheduler_state(self) -> dict[str, torch.Tensor]:
        """Scale-range scheduler state for a training checkpoint: {"r_max", "ema"} scalars.

        `r_max` is also in `state_dict()`; `ema` is only here (it is training state, not part
        of the exported model)."""
        scheduler = self.scale_range
        return {"r_max": scheduler.r_max.clone(), "ema": scheduler.ema.clone()}

    def load_scheduler_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `scheduler_state` returned."""
        if set(state) != {"r_max", "ema"}:
            raise ValueError(f"scheduler state needs keys r_max and ema, got {sorted(state)}")
        self.scale_range.r_max.copy_(torch.as_tensor(state["r_max"]))
        self.scale_range.ema.copy_(torch.as_tensor(state["ema"]))
