"""The CNN decoder with adaptive GroupNorm (Open-MAGVIT2 style, docs/design.md section 1, step 6):
map -> image.

Module names follow the authors' checkpoint layout (`conv_in`, `mid_block.{i}`,
`adaptive.{level}`, `up.{level}.block.{i}`, `up.{level}.upsample.conv1`, `norm_out`,
`conv_out`); levels are numbered bottom up (level 0 is full resolution) and run top down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gtok.model.blocks import NUM_GROUPS, AdaptiveGroupNorm, ResBlock, Upsampler, group_norm, swish

__all__ = ["Decoder"]


class _UpLevel(nn.Module):
    """`num_res_blocks` ResBlocks, then conv3x3 C -> 4C and DCR depth-to-space unless level 0."""

    def __init__(
        self, in_ch: int, out_ch: int, num_res_blocks: int, upsample: bool, groups: int
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(num_res_blocks)
        )
        self.upsample = Upsampler(out_ch) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Decoder(nn.Module):
    """[B, z_dim, h, w] -> [B, 3, h * 2^(L-1), w * 2^(L-1)] (unclamped), L = len(ch_mult).

    conv3x3 in (with bias) to ch * ch_mult[-1] -> `num_res_blocks` mid ResBlocks -> per level,
    top down: adaptive GroupNorm styled by the input map's per-channel statistics,
    `num_res_blocks` ResBlocks to ch * ch_mult[level], upsampler except at level 0 ->
    GroupNorm - swish - conv3x3 to RGB.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_dim: int,
        groups: int = NUM_GROUPS,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_dim, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(
            ResBlock(block_in, block_in, groups) for _ in range(num_res_blocks)
        )
        up, adaptive = [], []  # built top down, stored bottom up
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            adaptive.append(AdaptiveGroupNorm(z_dim, block_in, groups))
            up.append(_UpLevel(block_in, block_out, num_res_blocks, level > 0, groups))
            block_in = block_out
        self.up = nn.ModuleList(reversed(up))
        self.adaptive = nn.ModuleList(reversed(adaptive))
        self.norm_out = group_norm(block_in, groups=groups)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)  # [B, ch * ch_mult[-1], h, w]
        for block in self.mid_block:
            x = block(x)
        for level in reversed(range(len(self.up))):
            x = self.adaptive[level](x, z)
            x = self.up[level](x)  # doubles H and W unless level 0
        return self.conv_out(swish(self.norm_out(x)))  # [B, 3, H, W]
