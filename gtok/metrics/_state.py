"""Reading weight files and checking state dicts against an expected layout.

Weight files are plain PyTorch state dicts (torchvision, lpips, pytorch-fid layouts), read
with `weights_only=True` (nothing is unpickled beyond tensors). A file that cannot be read or
does not have the expected keys and shapes is a `GtokError` naming the file and the keys.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from gtok.errors import GtokError

__all__ = ["expected_layout", "load_checked", "read_state_dict"]

_LISTED = 4  # keys named per kind of problem in an error message


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict of tensors from a .pth file on the CPU (memory-mapped when possible)."""
    path = Path(path)
    try:
        mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be mapped
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # any failure to read is the same user problem
        raise GtokError(f"Could not read {path} as a PyTorch state dict: {err}") from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise GtokError(f"{path} is not a state dict of tensors (a mapping from names to tensors).")
    return dict(state)


def expected_layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every persistent parameter and buffer of `module`."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def load_checked(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    layout: str,
    prefix: str = "",
    ignore: tuple[str, ...] = (),
    skip_suffixes: tuple[str, ...] = (),
) -> None:
    """Copy `state` into `module` after checking every key and shape.

    state: the file's tensors; its key `prefix + k` fills the module's key k.
    source: what to name in errors (a file path, or a description).
    layout: the name of the expected layout, e.g. "torchvision VGG16".
    ignore: key prefixes (after `prefix`) of parts of the file the metric does not use (a
        classifier head); they are neither checked nor loaded.
    skip_suffixes: key suffixes the file may or may not carry and that are not used
        (BatchNorm's `num_batches_tracked`).
    Raises GtokError naming missing keys, unexpected keys and wrong shapes.
    """
    wanted = expected_layout(module)
    given: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state.items():
        local = key[len(prefix) :] if key.startswith(prefix) else None
        if local is not None and ignore and local.startswith(ignore):
            continue
        if skip_suffixes and key.endswith(skip_suffixes):
            continue
        if local is None or local not in wanted:
            unexpected.append(key)
        else:
            given[local] = value
    missing = [prefix + k for k in wanted if k not in given]
    wrong = [
        f"{prefix + k} {list(v.shape)} (expected {list(wanted[k])})"
        for k, v in given.items()
        if tuple(v.shape) != wanted[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listed(wrong)}")
    if problems:
        raise GtokError(
            f"{source} does not have the {layout} layout ({'; '.join(problems)}); "
            "use the standard weight file."
        )
    module.load_state_dict(given, strict=True)
