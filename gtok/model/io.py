"""Reading model directories: find one, read its config, load its tokenizer, hash its weights.

The format (layout, file names, version), its writer `save_pretrained` and
`resolve_model_dir` are in `gtok.model.directory`, re-exported here. This module builds tokenizers
(`gtok.model.tokenizer`); the tokenizers never import it.

A training run directory holds its exported model (EMA weights) in `RUN_DIR/model/` and its
resumable training state beside it; wherever a model directory is expected, a run directory
(or the path of a model directory's `config.json` / `model.safetensors`) works too and is
resolved by `resolve_model_dir`. Loading never unpickles: weights are safetensors, config is
JSON, and every mismatch is a `GtokError` of one sentence. The weights file is read once, and
its sha256 (`load_tokenizer_with_sha256`) is that of the very bytes the weights come from: a
file replaced meanwhile (a training run re-exporting its model) cannot make them disagree.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load
from torch.overrides import TorchFunctionMode

from gtok.errors import UPGRADE, GtokError, version_refusal
from gtok.model.config import TokenizerConfig
from gtok.model.default import default_model_dir
from gtok.model.directory import (
    CONFIG_FILE,
    FORMAT_VERSION,
    RUN_MODEL_SUBDIR,
    WEIGHTS_FILE,
    resolve_model_dir,
    save_pretrained,
)
from gtok.safeload import SETTINGS_BYTES, Unreadable, load_json

if TYPE_CHECKING:
    from gtok.model.tokenizer import BaseTokenizer

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MODEL",
    "FORMAT_VERSION",
    "RUN_MODEL_SUBDIR",
    "WEIGHTS_FILE",
    "load_tokenizer",
    "load_tokenizer_with_sha256",
    "read_config",
    "resolve_model_dir",
    "save_pretrained",
    "weights_sha256",
]


def read_config(path: str | os.PathLike) -> TokenizerConfig:
    """The `TokenizerConfig` of the model at `path` (any form `resolve_model_dir` takes)."""
    config_path = resolve_model_dir(path) / CONFIG_FILE
    try:
        document = load_json(config_path, SETTINGS_BYTES)
    except Unreadable as exc:
        raise GtokError(f"{config_path} {exc.reason}; re-export the model.") from exc
    if not isinstance(document, dict) or "format_version" not in document:
        raise GtokError(f"{config_path} has no format_version; it is not a gtok model config.")
    version = document["format_version"]
    if version != FORMAT_VERSION:
        raise GtokError(
            version_refusal(
                f"the model config {config_path}",
                version,
                FORMAT_VERSION,
                document.get("gtok_version"),
                newer=f"{UPGRADE} to read it",
                other="read it with the gtok that wrote it",
            )
        )
    try:
        return TokenizerConfig.from_dict(document["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GtokError(f"{config_path} has an invalid architecture: {exc}.") from exc


DEFAULT_MODEL = "default"  # the name `load_tokenizer` takes for the shipped model


def load_tokenizer(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> BaseTokenizer:
    """Load the tokenizer at `path` (model directory, run directory, or one of its files;
    None or "default": the default model, `gtok.model.default`) onto `device`, in `dtype`
    (None: float32 as stored; e.g. torch.bfloat16), in eval mode. Raises `GtokError` for
    anything wrong with the files."""
    return load_tokenizer_with_sha256(path, device, dtype)[0]


def load_tokenizer_with_sha256(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[BaseTokenizer, str]:
    """`load_tokenizer`, and the hex sha256 of the bytes of `model.safetensors` that its
    weights were loaded from (what identifies them in token stores and training runs)."""
    from gtok.model.tokenizer import build_from_config

    if path is None or str(path) == DEFAULT_MODEL:  # a folder named so: pass "./default"
        path = default_model_dir()
    model_dir = resolve_model_dir(path)
    config = read_config(model_dir)  # within `LIMITS`: a bounded number of modules
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise GtokError(f"{model_dir} has {CONFIG_FILE} but no {WEIGHTS_FILE}; re-export it.")
    tensors, sha256 = _read_weights(weights_path)
    # the config is built only as far as the weights file's size allows, and compared with
    # the file's tensors before the model takes any of them
    found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    with _CreationBudget(sum(math.prod(shape) for shape in found.values()), weights_path):
        model = build_from_config(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    _check_state(weights_path, expected, found)
    model.load_state_dict(tensors, strict=True)
    return model.to(device=device, dtype=dtype).eval(), sha256


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a safetensors file (on the CPU) and the hex sha256 of the bytes they
    were read from: the file is read once, into memory (so loading holds its size twice for
    a moment; safetensors checks that the header's offsets cover the bytes exactly)."""
    try:
        data = weights_path.read_bytes()
        return load(data), hashlib.sha256(data).hexdigest()
    except (SafetensorError, OSError) as exc:
        raise _unreadable(weights_path, exc) from exc


# the torch functions that create a tensor from a size: how nn.Module parameters and buffers
# come to be (each dimension is bounded by the config's LIMITS, so one call stays small)
_FACTORIES = frozenset(
    {
        *(torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.eye),
        *(torch.rand, torch.randn, torch.randint, torch.arange, torch.linspace, torch.tensor),
    }
)


class _CreationBudget(TorchFunctionMode):
    """Counts the values of the tensors that torch's factory functions create while a model is
    built; past twice the `held` values of the weights file (plus `SLACK` for the small
    temporaries of initialization) the build stops with a `GtokError`, so a config.json that
    asks for far more weights than its model.safetensors holds never allocates them (the
    header check after the build names the tensors of a smaller mismatch)."""

    SLACK = 1 << 24

    def __init__(self, held: int, weights_path: Path) -> None:
        super().__init__()
        self.held, self.weights_path, self.created = held, weights_path, 0
        self.limit = 2 * held + self.SLACK

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _FACTORIES and isinstance(result, torch.Tensor):
            self.created += result.numel()
            if self.created > self.limit:
                raise GtokError(
                    f"{self.weights_path.parent / CONFIG_FILE} builds a model of more than "
                    f"{self.limit:,} values, but {self.weights_path} holds {self.held:,}; the "
                    "two files do not belong together."
                )
        return result


def _unreadable(weights_path: Path, exc: Exception) -> GtokError:
    return GtokError(f"{weights_path} is not a readable safetensors file ({exc}).")


def _check_state(
    weights_path: Path,
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
) -> None:
    """One sentence for missing, unexpected or wrongly shaped tensors (name -> shape)."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise GtokError(
            f"{weights_path} lacks {len(missing)} tensor(s) that its config.json needs "
            f"({_sample(missing)}); the two files do not belong together."
        )
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise GtokError(
            f"{weights_path} has {len(unexpected)} tensor(s) that its config.json does not "
            f"build ({_sample(unexpected)}); the two files do not belong together."
        )
    wrong = [
        f"{k} {list(found[k])} != {list(expected[k])}"
        for k in sorted(expected)
        if found[k] != expected[k]
    ]
    if wrong:
        raise GtokError(
            f"{weights_path} has {len(wrong)} tensor(s) of the wrong shape for its config.json "
            f"({_sample(wrong)}); the two files do not belong together."
        )


def _sample(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", and {len(names) - limit} more" if len(names) > limit else "")


def weights_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the model's `model.safetensors` as it is now (identifies the weights in
    token stores); the weights of a loaded model: `load_tokenizer_with_sha256`."""
    weights_path = resolve_model_dir(path) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise GtokError(f"{weights_path} does not exist; the model directory is incomplete.")
    digest = hashlib.sha256()
    with weights_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
