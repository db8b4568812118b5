"""The model directory format: its file names and version, writing one, and finding one
(`resolve_model_dir`: a model directory, a training run's, or one of their files).

Layout of a model directory:

    MODEL_DIR/config.json        {"format_version": 1, "gtok_version": ..., "preset": ...,
                                  "kind": ..., "image_size": ..., "num_tokens": ...,
                                  "architecture": {every TokenizerConfig field}}
    MODEL_DIR/model.safetensors  every parameter and persistent buffer of the model
                                  (codebook, its EMA statistics, the scale range r_max)

Written here (`save_pretrained`, which any module with a `config` can use, so the tokenizers
import this module and it imports none of them); read by `gtok.model.io`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save

from gtok._version import __version__
from gtok.errors import GtokError
from gtok.model.config import TokenizerConfig
from gtok.outputs import naming, write_atomically

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "RUN_MODEL_SUBDIR",
    "WEIGHTS_FILE",
    "resolve_model_dir",
    "save_pretrained",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class _Saveable(Protocol):
    """A tokenizer as `save_pretrained` sees it."""

    @property
    def config(self) -> TokenizerConfig: ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...


def save_pretrained(model: _Saveable, directory: str | os.PathLike) -> Path:
    """Write `model` (a tokenizer: an `nn.Module` with a `TokenizerConfig` as `config`) as a
    model directory (created if needed); returns its path.

    Each file is written under a temporary name and renamed, so an interrupted save never
    leaves a half-written file under the final name (a failed one removes it; the `OSError`
    names the file, `gtok.outputs`).
    """
    directory = Path(directory)
    with naming(directory):
        directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    document = {
        "format_version": FORMAT_VERSION,
        "gtok_version": __version__,
        "preset": config.preset,
        "kind": config.kind,
        "image_size": config.image_size,
        "num_tokens": config.num_tokens,
        "architecture": config.to_dict(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors writes several in a random order, which would make the
    # bytes (and so `weights_sha256`) differ between two saves of the same weights; serialized
    # in memory, because `save_file`'s write errors carry no errno
    weights = save(tensors, metadata={"format": "pt"})
    for name, data in ((WEIGHTS_FILE, weights), (CONFIG_FILE, _json_bytes(document))):
        write_atomically(directory / name, data)
    return directory


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


RUN_MODEL_SUBDIR = "model"  # a training run directory keeps its exported model here


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory meant by `path`: a model directory, a run directory (its
    `model/` subdirectory), or one of a model directory's two files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GtokError(f"{path} does not exist; give a gtok model directory or training run.")
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    for candidate in (path, path / RUN_MODEL_SUBDIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise GtokError(
        f"{path} is not a gtok model directory (no {CONFIG_FILE}) or training run directory "
        f"(no {RUN_MODEL_SUBDIR}/{CONFIG_FILE}); make one with `save_pretrained` or "
        "`gtok convert-official`."
    )
