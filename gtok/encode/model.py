"""Which tokenizer `gtok encode` uses, on which device, and the identity stored with tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gtok.console import console, is_quiet
from gtok.devices import select_device
from gtok.errors import GtokError

__all__ = ["EncodingModel", "load_encoding_model", "resolve_model"]


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
            f"no --model given: using the default model {path} ({config.preset}, "
            f"{config.image_size} px, {config.num_tokens} tokens per image)",
            soft_wrap=True,
        )
    return path


@dataclass
class EncodingModel:
    """A loaded tokenizer in eval mode and what identifies it in a token store."""

    tokenizer: torch.nn.Module
    path: Path
    weights_sha256: str
    device: torch.device

    @property
    def config(self):
        return self.tokenizer.config


def load_encoding_model(
    model: str | os.PathLike | None, device: str | torch.device = "auto"
) -> EncodingModel:
    """Resolve, hash and load the model for encoding (eval mode, on `device`: "auto", "cpu",
    "cuda" or "cuda:N", as `gtok.devices.select_device` places it)."""
    from gtok.model.io import load_tokenizer, weights_sha256

    chosen = select_device(device)  # first: before anything starts CUDA
    path = resolve_model(model)
    tokenizer = load_tokenizer(path, device=chosen).eval()
    _check_finite(tokenizer, path)
    return EncodingModel(tokenizer, path, weights_sha256(path), chosen)


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
