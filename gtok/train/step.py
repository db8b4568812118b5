"""One optimizer step of tokenizer and discriminator (docs/design.md section 1, training).

Tokenizer loss: l1 * L1 + lpips * LPIPS + commit * commitment + gan * generator loss (the
last only from `gan_start_step`). Discriminator loss, from step 0: hinge + lecam * LeCam.
Both networks are updated every step with their own optimizer, gradient clipping and (fp16
only) gradient scaler; with a GAN weight of 0 the discriminator is left untrained. Under
torch.distributed both are wrapped in DDP; the discriminator sees real and fake images in one
DDP call (`_RealFake`) so each gets its own BatchNorm statistics, as in taming's VQGAN loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gtok.devices import mixed_precision
from gtok.errors import GtokError
from gtok.train.config import TrainConfig
from gtok.train.distributed import Dist
from gtok.train.losses import LeCam, generator_loss, hinge_d_loss, l1_loss
from gtok.train.recipe import param_groups

__all__ = ["StepOutput", "TrainStep", "make_optimizer", "resolve_precision"]


def resolve_precision(requested: str, device: torch.device) -> str:
    """ "fp32", "bf16" or "fp16" for `requested` on `device` ("auto": bf16 on CUDA when the
    GPU supports it, else fp32). bf16 also runs on the CPU (slower there than fp32; it is
    how the mixed-precision path is tested without a GPU); fp16 needs CUDA (its gradient
    scaler is for GPUs)."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise GtokError(f"Precision fp16 needs a CUDA device; use bf16 or fp32 on {device.type}.")
    return requested


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The resolved config's optimizer (Adam or AdamW) over parameter `groups` (fp32, on CPU
    or CUDA; each with an "lr_scale": its rate is the run's times that), in its fused
    implementation (one kernel for all tensors, not the default per-tensor loop)."""
    assert cfg.betas is not None and cfg.weight_decay is not None  # `resolve` fills every None
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    groups = [{**g, "lr": cfg.lr * g["lr_scale"]} for g in groups]
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


class _RealFake(nn.Module):
    """Discriminator on real and fake batches in one forward: -> (logits_real, logits_fake)."""

    def __init__(self, disc: nn.Module) -> None:
        super().__init__()
        self.disc = disc

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.disc(real), self.disc(fake)


@dataclass
class StepOutput:
    """Detached scalars of one step (this rank), whether everything stayed finite on every
    rank, and the caller's flags reduced over the ranks. Losses are the unweighted terms;
    `loss` is the tokenizer's weighted total."""

    values: dict[str, torch.Tensor]
    reconstruction: torch.Tensor  # [B, 3, H, W], detached
    finite: bool
    flags: list[bool] = field(default_factory=list)  # the caller's flags, true on any rank


class TrainStep:
    """Owns the optimizers, scalers and DDP wrappers; `__call__` trains one step."""

    def __init__(
        self,
        model: nn.Module,
        disc: nn.Module,
        lecam: LeCam,
        lpips: nn.Module | None,
        cfg: TrainConfig,
        dist: Dist,
        precision: str,
    ) -> None:
        self.model, self.disc, self.lecam, self.lpips = model, disc, lecam, lpips
        self.cfg, self.dist = cfg, dist
        device = dist.device
        self.precision = precision
        if dist.active:
            ids = [device.index] if device.type == "cuda" else None
            self.g: nn.Module = DistributedDataParallel(model, device_ids=ids)
            self.d: nn.Module = DistributedDataParallel(_RealFake(disc), device_ids=ids)
        else:
            self.g, self.d = model, _RealFake(disc)
        self.opt_g = make_optimizer(param_groups(model, cfg.embed_lr_scale or 1.0), cfg)
        self.opt_d = make_optimizer(param_groups(disc, 1.0), cfg)
        fp16 = precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)

    def _autocast(self):
        return mixed_precision(self.dist.device, self.precision)

    def set_lr(self, lr: float) -> None:
        """Set the run's rate `lr` (each group gets lr * its "lr_scale")."""
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]

    def _clip(self, params, scaler: torch.amp.GradScaler, opt) -> torch.Tensor:
        scaler.unscale_(opt)
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(params, limit)

    def __call__(
        self,
        images: torch.Tensor,
        step: int,
        flags: Callable[[], Sequence[bool]] = tuple,
    ) -> StepOutput:
        """Train on images [B, 3, S, S] in [-1, 1]; `step` is the 0-based step index.

        flags: this process's other reasons to stop (e.g. a signal), read after the
        backward pass and reduced over the ranks together with the finite check, in the one
        collective of the step; `StepOutput.flags` holds the results.

        The discriminator is trained only when the GAN loss has a weight: with
        `gan_weight` 0 it would never be used. Nothing is updated when a loss or (outside
        fp16, where the scaler handles it) a gradient norm is not finite on some rank: the
        caller stops the run.
        """
        train_disc = self.cfg.gan_weight > 0
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        values, recon = self._generator_backward(images, step)
        if train_disc:
            values.update(self._discriminator_backward(images, recon))
        values = {k: v.detach().float() for k, v in values.items()}
        checked = [k for k in ("loss", "d_loss", "g_grad_norm", "d_grad_norm") if k in values]
        if self.scaler_g.is_enabled():  # fp16: the scalers skip steps whose gradients overflow
            checked = [k for k in checked if not k.endswith("grad_norm")]
        nonfinite = ~torch.isfinite(torch.stack([values[k] for k in checked])).all()  # on device
        bad, *others = self.dist.any_of(nonfinite, *flags())  # the step's one sync with the host
        if bad:
            return StepOutput(values, recon, finite=False, flags=others)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        if train_disc:
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        return StepOutput(values, recon, finite=True, flags=others)

    def _generator_backward(
        self, images: torch.Tensor, step: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Tokenizer loss and gradients (clipped) -> (values, detached reconstruction)."""
        cfg = self.cfg
        assert cfg.gan_start_step is not None  # `resolve` fills every None
        use_gan = step >= cfg.gan_start_step and cfg.gan_weight > 0
        self.disc.requires_grad_(False)
        with self._autocast():
            out = self.g(images)
            recon = out.reconstruction
            l1 = l1_loss(recon, images)
            loss = cfg.l1_weight * l1 + cfg.commit_weight * out.commit_loss
            values = {"l1": l1, "commit": out.commit_loss}
            if self.lpips is not None:
                perceptual = self.lpips(recon, images).mean()
                loss = loss + cfg.lpips_weight * perceptual
                values["lpips"] = perceptual
            if use_gan:
                gen = generator_loss(self.disc(recon))
                loss = loss + cfg.gan_weight * gen
                values["gen"] = gen
        self.scaler_g.scale(loss).backward()
        g_norm = self._clip(self.model.parameters(), self.scaler_g, self.opt_g)
        self.disc.requires_grad_(True)
        values.update(loss=loss, usage=out.usage, perplexity=out.perplexity, g_grad_norm=g_norm)
        return values, recon.detach()

    def _discriminator_backward(
        self, images: torch.Tensor, recon: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Discriminator loss (hinge + LeCam) on real images and detached reconstructions,
        and its gradients (clipped) -> values."""
        with self._autocast():
            logits_real, logits_fake = self.d(images, recon)
            hinge = hinge_d_loss(logits_real, logits_fake)
            lecam = self.lecam(logits_real, logits_fake)
            d_loss = hinge + self.cfg.lecam_weight * lecam
        self.scaler_d.scale(d_loss).backward()
        d_norm = self._clip(self.disc.parameters(), self.scaler_d, self.opt_d)
        return {
            "d_loss": d_loss,
            "lecam": lecam,
            "logits_real": logits_real.float().mean(),
            "logits_fake": logits_fake.float().mean(),
            "d_grad_norm": d_norm,
        }

    def state_dict(self) -> dict:
        return {
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
