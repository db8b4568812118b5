"""Loss terms of the GaussianToken training recipe (docs/design.md section 1, training).

Logits are the discriminator's patch logits, [B, 1, h, w]; images are [B, 3, H, W] in
[-1, 1]. Every function returns a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["LeCam", "generator_loss", "hinge_d_loss", "l1_loss"]


def l1_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every pixel and channel (units of [-1, 1] intensities)."""
    return (reconstruction - target).abs().mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss: softplus(-mean of each image's patch logits), averaged over B."""
    per_image = logits_fake.flatten(1).mean(dim=1)  # [B]
    return F.softplus(-per_image).mean()


class LeCam(nn.Module):
    """LeCam regularizer (Tseng et al. 2021) with EMAs of the mean real and fake logits.

    The EMAs (decay 0.999) start at 0 and are updated with the current batch *before*
    the penalty is computed: mean relu(real - ema_fake)^2 + mean relu(ema_real - fake)^2.
    They live in buffers, so they are saved with the discriminator's training state.
    """

    ema_real: torch.Tensor
    ema_fake: torch.Tensor

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"LeCam EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        """Fold the batch means into the EMAs (in fp32). Under torch.distributed the means
        are averaged over ranks first, so every rank keeps the same EMAs."""
        means = torch.stack([logits_real.float().mean(), logits_fake.float().mean()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(means)
            means /= dist.get_world_size()
        self.ema_real.lerp_(means[0], 1.0 - self.decay)
        self.ema_fake.lerp_(means[1], 1.0 - self.decay)

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """Update the EMAs with this batch, then return the penalty."""
        self.update(logits_real, logits_fake)
        return (
            F.relu(logits_real - self.ema_fake).pow(2).mean()
            + F.relu(self.ema_real - logits_fake).pow(2).mean()
        )
