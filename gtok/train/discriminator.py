"""The PatchGAN discriminator of the GaussianToken (and taming VQGAN) training recipe.

3 strided layers, BatchNorm, 64 base channels, `N(0, 0.02)` conv init and `N(1, 0.02)`
BatchNorm gains (docs/design.md section 1, training): 2,765,633 parameters for RGB input, the
authors' count.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator", "init_weights"]


def init_weights(module: nn.Module) -> None:
    """Conv weights ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0 (taming's init)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator(nn.Module):
    """[B, in_channels, H, W] images in [-1, 1] -> [B, 1, h, w] patch logits.

    conv4x4/2 (bias) - LeakyReLU(0.2), then `num_layers - 1` blocks of conv4x4/2 (no bias) -
    BatchNorm - LeakyReLU doubling the width (capped at 8 * ndf), one conv4x4/1 block at
    the next width, and a conv4x4/1 to one logit per patch. For 64x64 input with 3 layers
    the output is [B, 1, 6, 6]; each logit sees a 70x70 pixel receptive field.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)  # [B, 1, h, w]
