"""Building blocks of the CNN encoder and decoder (Open-MAGVIT2 style, docs/design.md section 1,
steps 1 and 6).

All maps are [B, C, H, W]. GroupNorm has 32 groups (the authors') unless the config's
`norm_groups` says otherwise; every channel count is a multiple of the groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveGroupNorm", "ResBlock", "Upsampler", "depth_to_space", "group_norm", "swish"]

NUM_GROUPS = 32
NORM_EPS = 1e-6


def group_norm(channels: int, affine: bool = True, groups: int = NUM_GROUPS) -> nn.GroupNorm:
    """GroupNorm(`groups` groups, eps 1e-6) over `channels` channels."""
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=affine)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) (SiLU)."""
    return F.silu(x)


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Rearrange [B, block^2 * C, H, W] into [B, C, block * H, block * W] in DCR order.

    out[:, c, block * h + i, block * w + j] = x[:, (block * i + j) * C + c, h, w]: the
    channel blocks are outermost. `nn.PixelShuffle` uses the other order
    (x[:, c * block^2 + block * i + j]); the released weights expect this one.
    """
    b, c, h, w = x.shape
    if c % (block * block):
        raise ValueError(f"depth_to_space needs channels divisible by {block * block}, got {c}")
    x = x.view(b, block, block, c // (block * block), h, w)  # [B, i, j, C, H, W]
    x = x.permute(0, 3, 4, 1, 5, 2)  # [B, C, H, i, W, j]
    return x.reshape(b, c // (block * block), h * block, w * block)


class ResBlock(nn.Module):
    """GroupNorm - swish - conv3x3 (no bias), twice, plus the input (1x1 no-bias conv when
    the channel count changes). [B, in_ch, H, W] -> [B, out_ch, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = NUM_GROUPS) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups=groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_ch, groups=groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        residual = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h + residual


class Upsampler(nn.Module):
    """conv3x3 C -> 4C (with bias), then DCR depth-to-space: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, then scaled and shifted by the statistics of a style map.

    x: [B, C, H, W]; style: [B, z, h, w] (the rendered or quantized map). gamma and beta
    are Linear(z -> C) applied to the style's per-channel std (unbiased variance + 1e-6,
    then sqrt) and mean: out = gamma(std) * GN(x) + beta(mean) (no "1 +").
    """

    def __init__(self, z_dim: int, channels: int, groups: int = NUM_GROUPS) -> None:
        super().__init__()
        self.gn = group_norm(channels, affine=False, groups=groups)
        self.gamma = nn.Linear(z_dim, channels)
        self.beta = nn.Linear(z_dim, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        flat = style.flatten(2)  # [B, z, h*w]
        std = (flat.var(dim=-1) + NORM_EPS).sqrt()  # [B, z]
        mean = flat.mean(dim=-1)  # [B, z]
        scale = self.gamma(std)[:, :, None, None]  # [B, C, 1, 1]
        shift = self.beta(mean)[:, :, None, None]
        return scale * self.gn(x) + shift
