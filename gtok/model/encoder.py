"""The CNN encoder (Open-MAGVIT2 style, docs/design.md section 1, step 1): images -> feature map.

Module names follow the authors' checkpoint layout (`conv_in`, `down.{level}.block.{i}`,
`down.{level}.downsample`, `mid_block.{i}`, `norm_out`, `conv_out`) so conversion is a
prefix change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gtok.model.blocks import NUM_GROUPS, ResBlock, group_norm, swish

__all__ = ["Encoder"]


class _DownLevel(nn.Module):
    """`num_res_blocks` ResBlocks, then a stride-2 conv3x3 (with bias) unless last."""

    def __init__(
        self, in_ch: int, out_ch: int, num_res_blocks: int, downsample: bool, groups: int
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_res_blocks)
        )
        self.downsample = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class Encoder(nn.Module):
    """[B, 3, H, W] in [-1, 1] -> [B, out_channels, H / 2^(L-1), W / 2^(L-1)], L = len(ch_mult).

    conv3x3 in (no bias, `ch` channels) -> per level `num_res_blocks` ResBlocks at
    ch * ch_mult[level] channels and a stride-2 conv except after the last level ->
    `num_res_blocks` mid ResBlocks -> GroupNorm - swish - conv1x1 (with bias) to `out_channels`.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        out_channels: int,
        groups: int = NUM_GROUPS,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        levels = []
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_out = ch * mult
            last = level == len(ch_mult) - 1
            levels.append(_DownLevel(block_in, block_out, num_res_blocks, not last, groups))
            block_in = block_out
        self.down = nn.ModuleList(levels)
        self.mid_block = nn.ModuleList(
            ResBlock(block_in, block_in, groups) for _ in range(num_res_blocks)
        )
        self.norm_out = group_norm(block_in, groups=groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(images)  # [B, ch, H, W]
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))  # [B, out_channels, h, w]
