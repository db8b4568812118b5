"""Which tokenizer `gtok encode` uses, on which device, and the identity stored with tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gtok.console import console, is_quiet
from gtok.errors import GtokError

__all__ = ["EncodingModel", "load_encoding_model", "pick_device", "resolve_model"]


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


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU; others are checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise GtokError(f"{device!r} is not a torch device; try cpu, cuda or cuda:1.") from exc
    if chosen.type not in ("cpu", "cuda"):
        raise GtokError(f"--device {device}: gtok runs on cpu or cuda; try cpu, cuda or cuda:1.")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise GtokError(f"--device {device}: this torch build or machine has no CUDA device.")
    return chosen


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
    """Resolve, hash and load the model for encoding (eval mode, on `device`)."""
    from gtok.model.io import load_tokenizer, weights_sha256

    path = resolve_model(model)
    chosen = pick_device(device)
    tokenizer = load_tokenizer(path, device=chosen).eval()
    return EncodingModel(tokenizer, path, weights_sha256(path), chosen)
