"""The default tokenizer shipped inside the package: what `gtok encode`, `gtok eval` and
`gtok demo` use when no `--model` is given.

It is a model directory (`config.json` + `model.safetensors`, see `gtok.model.io`) at
`gtok/default_model/`, installed as package data. The environment variable
`GTOK_DEFAULT_MODEL` points the lookup at another model directory (or run directory), e.g.
a freshly trained one, or a stand-in in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from gtok.errors import ArgumentError, GtokError
from gtok.model.directory import CONFIG_FILE, WEIGHTS_FILE, resolve_model_dir

__all__ = ["DEFAULT_MODEL_ENV", "SHIPPED_MODEL_DIR", "default_model_dir"]

DEFAULT_MODEL_ENV = "GTOK_DEFAULT_MODEL"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"


def default_model_dir() -> Path:
    """The default model's directory: `$GTOK_DEFAULT_MODEL` when set, else the shipped one.

    Raises `GtokError` when it does not hold both files of a model directory (a development
    checkout before the trained weights are added, or a broken install).
    """
    override = os.environ.get(DEFAULT_MODEL_ENV)
    if override:
        try:
            return resolve_model_dir(override)
        except GtokError as exc:
            raise GtokError(f"{DEFAULT_MODEL_ENV}={override}: {exc}") from None
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (SHIPPED_MODEL_DIR / n).is_file()]
    if missing:
        raise ArgumentError(
            f"the default model is not installed ({SHIPPED_MODEL_DIR} lacks "
            f"{' and '.join(missing)}); pass `model`, a gtok model directory, or set "
            f"{DEFAULT_MODEL_ENV} to one.",
            "model",
        )
    return SHIPPED_MODEL_DIR
