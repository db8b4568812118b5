"""Which tokenizer `gtok encode` uses, on which device, and the identity stored with tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from gtok.console import console, is_quiet
from gtok.devices import select_device
from gtok.errors import ArgumentError, GtokError
from gtok.model.refine import DEFAULT_REFINE_LOSS, DEFAULT_REFINE_LR, RefineSettings

if TYPE_CHECKING:
    from gtok.model.tokenizer import BaseTokenizer, GaussianTokenizer

__all__ = ["EncodingModel", "load_encoding_model", "refine_settings", "resolve_model"]


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The model directory for `--model` (a model directory or a training run directory);
    None: the default model (`gtok.model.default_model_dir`), announced on stderr."""
    from gtok.model.default import default_model_dir
    from gtok.model.io import read_config, resolve_model_dir

    if model is not None:
        return resolve_model_dir(model)
    path = default_model_dir()
    if not is_quiet():
        config = read_config(path)
        console.print(
            f"no model given: using the default model {path} ({config.preset}, "
            f"{config.image_size} px, {config.num_tokens} tokens per image)",
            soft_wrap=True,
        )
    return path


@dataclass
class EncodingModel:
    """A loaded tokenizer in eval mode, what identifies it in a token store, and how its
    tokens are refined at encode time (`gtok.model.refine`; default: not at all)."""

    tokenizer: BaseTokenizer
    path: Path
    weights_sha256: str
    device: torch.device
    refine: RefineSettings = field(default_factory=RefineSettings)

    @property
    def config(self):
        return self.tokenizer.config

    def encode(self, images: torch.Tensor):
        """images [B, 3, S, S] in [-1, 1] on the model's device -> `Tokens` (refined when
        `refine` says so)."""
        if not self.refine.enabled:
            return self.tokenizer.encode(images)
        gaussian = cast("GaussianTokenizer", self.tokenizer)  # `load_encoding_model` checked
        return gaussian.encode(
            images,
            refine_steps=self.refine.steps,
            refine_lr=self.refine.lr,
            refine_loss=self.refine.loss,
        )


def load_encoding_model(
    model: str | os.PathLike | None,
    device: str | torch.device = "auto",
    refine: RefineSettings | None = None,
) -> EncodingModel:
    """Resolve, hash and load the model for encoding (eval mode, on `device`: "auto", "cpu",
    "cuda", "cuda:N" or "mps", as `gtok.devices.select_device` places it); `refine`:
    encode-time geometry refinement (GaussianToken models only)."""
    from gtok.model.io import load_tokenizer_with_sha256

    refine = refine or RefineSettings()
    chosen = select_device(device, allow_mps=True)  # first: before anything starts CUDA
    path = resolve_model(model)
    tokenizer, sha256 = load_tokenizer_with_sha256(path, device=chosen)
    if refine.enabled and tokenizer.config.kind != "gaussian":
        raise ArgumentError(
            f"refine_steps refines Gaussian geometry, but {path} is a VQ model without "
            "geometry; drop refine_steps.",
            "refine_steps",
        )
    _check_finite(tokenizer, path)
    return EncodingModel(tokenizer, path, sha256, chosen, refine)


def refine_settings(steps: int, lr: float | None = None, loss: str | None = None) -> RefineSettings:
    """`RefineSettings` from the `refine_steps`, `refine_lr` and `refine_loss` of a command or
    function (lr, loss None: the defaults); bad values are an `ArgumentError`."""
    try:
        lr = DEFAULT_REFINE_LR if lr is None else lr
        return RefineSettings(steps, lr, DEFAULT_REFINE_LOSS if loss is None else loss)
    except ValueError as exc:
        message = f"{str(exc).replace('refine ', 'refine_')}."
        raise ArgumentError(message, "refine_steps", "refine_lr", "refine_loss") from exc


def _check_finite(tokenizer: torch.nn.Module, path: Path) -> None:
    """Refuse a model with NaN or inf weights: every token it made would be garbage (a VQ
    model's NaN distances even pick code 0 and look valid)."""
    tensors = [*tokenizer.named_parameters(), *tokenizer.named_buffers()]
    broken = [
        name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if broken:
        raise GtokError(
            f"the model {path} has NaN or infinite weights ({len(broken)} tensors, e.g. "
            f"{broken[0]}); it cannot encode, so retrain or re-export it."
        )
