"""Encode-time geometry refinement: fit each image's Gaussians to the image itself.

The encoder predicts geometry in one forward pass; trained models settle on a near-regular
lattice of round Gaussians (docs/design.md). With the decoder and the codes fixed, a few Adam
steps on each image's geometry alone lower its reconstruction loss a lot. `refine_geometry`
does that for a batch:

- parameters (per image, per Gaussian) in an unconstrained form that maps back into the
  model's valid ranges: mean = 2 sigmoid(xy logit) - 1 and scale = scale_min +
  (r_max - scale_min) sigmoid(scale logit), both with the model's logit clamp (the model's
  own parametrization); rotation as a free angle wrapped into [0, pi) (the rasterizer is
  pi-periodic in the rotation, so this is the same Gaussian without the sigmoid's walls at
  0 and pi);
- loss, per image, of the decoded image clamped to [-1, 1] (as it becomes pixels: what
  PSNR scores) against the input (in [-1, 1]): the log of the mean squared error
  (`loss="psnr"`, the default: minimizing it maximizes the image's PSNR, whose mean over
  images is what `gtok eval` reports), the mean squared error (`"mse"`) or the mean
  absolute error (`"l1"`, the models' training loss); summed over the batch, so each
  image's gradient (and, Adam being elementwise, its whole trajectory) is independent of
  the other images in the batch;
- Adam with betas (0.9, 0.9) (the short second-moment memory follows the gradients as they
  shrink) for `steps` steps: the step size rises linearly to `lr` over the first fifth of
  the steps, then falls linearly to `FINAL_FRACTION` of it (docs/results.md measures each
  choice); no randomness anywhere, so the result is a function of the inputs;
- gradients flow only to the geometry (`torch.autograd.grad`): the model's weights get
  none and keep no `.grad`.

The codes stay as the encoder picked them: re-picking them after a joint optimization of
the continuous features with the geometry was measured worse than refining the geometry
alone (docs/results.md), so gtok does not offer it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from gtok.model.config import REFINE_LOSSES
from gtok.model.gaussian_embed import GaussianEmbed, safe_logit, safe_sigmoid
from gtok.model.quantizer import VectorQuantizer

__all__ = [
    "DEFAULT_REFINE_LOSS",
    "DEFAULT_REFINE_LR",
    "REFINE_LOSSES",
    "RefineSettings",
    "refine_geometry",
]

DEFAULT_REFINE_LR = 0.2  # peak Adam step size in logit / radian units
DEFAULT_REFINE_LOSS = "psnr"  # docs/results.md compares the losses
OPTIMIZER = "adam-warmup-linear"  # recorded in stores: tokens depend on it
BETAS = (0.9, 0.9)
WARMUP_FRACTION = 0.2  # of the steps, spent rising to the peak step size
FINAL_FRACTION = 0.25  # of the peak step size, reached at the last step
EPS = 1e-8
LOG_EPS = 1e-12  # the psnr loss is log(mse + this)


@dataclass(frozen=True)
class RefineSettings:
    """How tokens were refined: Adam `steps` (0: off) at peak step size `lr` on `loss`
    ("psnr", "mse" or "l1").

    Stored in a token store's header (`to_dict`), so a resumed or parallel encode with other
    settings is refused.
    """

    steps: int = 0
    lr: float = DEFAULT_REFINE_LR
    loss: str = DEFAULT_REFINE_LOSS

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"refine steps must be a non-negative integer, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"refine lr must be a positive finite number, got {self.lr!r}")
        if self.loss not in REFINE_LOSSES:
            raise ValueError(
                f"refine loss must be one of {', '.join(REFINE_LOSSES)}, got {self.loss!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "optimizer": OPTIMIZER}


class _Unconstrained:
    """Geometry <-> unconstrained parameters, with the model's ranges (see module doc)."""

    def __init__(self, scale_min: float, r_max: float) -> None:
        self.scale_min = scale_min
        self.span = r_max - scale_min

    def to_free(
        self, means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor
    ) -> list[torch.Tensor]:
        """means [B,G,2], scales [B,G,2], rotations [B,G] -> leaf tensors requiring grad."""
        xy = safe_logit((means + 1.0) / 2.0)
        sc = safe_logit((scales - self.scale_min) / self.span)
        return [t.detach().clone().requires_grad_(True) for t in (xy, sc, rotations)]

    def to_geometry(
        self, xy: torch.Tensor, sc: torch.Tensor, angle: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        means = 2.0 * safe_sigmoid(xy) - 1.0
        scales = self.scale_min + self.span * safe_sigmoid(sc)
        return means, scales, torch.remainder(angle, math.pi)


def _adam_step(
    params: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    moments: list[list[torch.Tensor]],
    step: int,
    lr: float,
) -> None:
    """One in-place Adam update (elementwise, so images never mix)."""
    b1, b2 = BETAS
    for p, g, (m, v) in zip(params, grads, moments, strict=True):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = m / (1 - b1**step)
        v_hat = v / (1 - b2**step)
        p.data.addcdiv_(m_hat, v_hat.sqrt().add_(EPS), value=-lr)


def _step_size(lr: float, step: int, steps: int) -> float:
    """Step size of step `step` (1-based) of `steps`: a linear rise to `lr` over the first
    `WARMUP_FRACTION` of the steps (at least one), then a linear fall to `FINAL_FRACTION`
    of `lr` at the last step."""
    warmup = max(1, round(WARMUP_FRACTION * steps))
    if step <= warmup:
        return lr * step / (warmup + 1)
    fall = (step - 1 - warmup) / max(steps - 1 - warmup, 1)  # 0 at the peak, 1 at the end
    return lr * (1.0 - (1.0 - FINAL_FRACTION) * fall)


def _per_image_loss(recon: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """[B, 3, H, W] twice -> [B]: the refinement loss of each image (module doc)."""
    error = recon.float().clamp(-1.0, 1.0) - target
    if loss == "l1":
        return error.abs().mean(dim=(1, 2, 3))
    mse = error.square().mean(dim=(1, 2, 3))
    return (mse + LOG_EPS).log() if loss == "psnr" else mse


class _Refinable(Protocol):
    """What `refine_geometry` uses of a `GaussianTokenizer` (a module that imports this one)."""

    @property
    def gaussian_embed(self) -> GaussianEmbed: ...

    @property
    def quantize(self) -> VectorQuantizer: ...

    def _render_decode(
        self,
        means: torch.Tensor,
        scales: torch.Tensor,
        rotations: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor: ...


def refine_geometry(
    tokenizer: _Refinable,
    images: torch.Tensor,
    geometry: torch.Tensor,
    indices: torch.Tensor,
    settings: RefineSettings,
) -> torch.Tensor:
    """Refine the geometry of `images` [B, 3, H, W] in [-1, 1] (see the module doc).

    geometry [B, G, 5] and indices [B, G] are the model's tokens for them; returns the
    refined geometry [B, G, 5] float32 (the codes do not change). The model should be in
    eval mode; works under `torch.no_grad` or `torch.inference_mode` callers.
    """
    if not settings.enabled or geometry.shape[0] == 0:
        return geometry
    scale_range = tokenizer.gaussian_embed.scale_range
    space = _Unconstrained(scale_range.scale_min, float(scale_range.r_max))
    with torch.inference_mode(False), torch.enable_grad():
        target = images.detach().clone().float()
        geometry = geometry.detach().clone().float()
        params = space.to_free(geometry[..., 0:2], geometry[..., 2:4], geometry[..., 4])
        features = tokenizer.quantize.lookup(indices.clone()).detach()
        moments = [[torch.zeros_like(p), torch.zeros_like(p)] for p in params]
        for step in range(1, settings.steps + 1):
            means, scales, rotations = space.to_geometry(*params)
            recon = tokenizer._render_decode(means, scales, rotations, features)
            loss = _per_image_loss(recon, target, settings.loss).sum()
            grads = torch.autograd.grad(loss, params)
            _adam_step(params, grads, moments, step, _step_size(settings.lr, step, settings.steps))
        with torch.no_grad():
            means, scales, rotations = space.to_geometry(*params)
            refined = torch.cat([means, scales, rotations[..., None]], dim=-1)
    return refined
