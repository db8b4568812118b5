"""Which tokenizer decodes a token store: the one recorded in it, or `--model` checked against it.

The store's attributes hold the model's config, the sha256 of its weights and (since the
store recorded it) the model directory. Without `--model` that directory is loaded and must
still hold the same weights. When it no longer exists (a store copied to another machine, or
encoded from a checkout since moved) and the default model (`gtok.model.default`) has the
store's weights sha256, the default model decodes it, as a line on stderr says; otherwise
the error names the sha256 to look for. With `--model`, a directory whose weights hash
differs from the store's is refused unless `force` (e.g. a fine-tuned copy one knowingly
decodes with); even then its token layout (kind, tokens per image, codebook size) must
match the store's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gtok.console import console, is_quiet
from gtok.encode.model import EncodingModel, load_encoding_model
from gtok.errors import ArgumentError, GtokError
from gtok.store import TokenStore

__all__ = ["model_for_store"]


def model_for_store(
    store: TokenStore,
    model: str | os.PathLike | None = None,
    *,
    force: bool = False,
    device: str | torch.device = "auto",
) -> EncodingModel:
    """Load the tokenizer that decodes `store` (eval mode, on `device`); see the module doc."""
    if model is None:
        model = _recorded_model(store)
    loaded = load_encoding_model(model, device)
    if loaded.weights_sha256 != store.weights_sha256 and not force:
        raise ArgumentError(
            f"{loaded.path} has other weights (sha256 {loaded.weights_sha256[:12]}...) than "
            f"the model that encoded {store.path} ({store.weights_sha256[:12]}...); pass "
            "that model, or force=True to decode with this one anyway.",
            "force",
        )
    _check_layout(store, loaded)
    return loaded


def _recorded_model(store: TokenStore) -> str | os.PathLike:
    recorded = store.model_path
    if recorded is not None and os.path.isdir(recorded):
        return recorded
    default = _default_with_weights(store.weights_sha256)
    where = (
        f"was encoded with the model at {recorded}, which no longer exists"
        if recorded is not None
        else "does not record its model's directory (it was encoded by an older gtok)"
    )
    if default is None:
        raise ArgumentError(
            f"{store.path} {where}; pass `model`, the model directory whose "
            f"model.safetensors has sha256 {store.weights_sha256}.",
            "model",
        )
    if not is_quiet():
        console.print(
            f"{store.path} {where}; decoding with the default model {default}, which has the "
            f"same weights (sha256 {store.weights_sha256[:12]}...).",
            soft_wrap=True,
        )
    return default


def _default_with_weights(sha256: str) -> Path | None:
    """The default model's directory when its weights have `sha256`, else None."""
    from gtok.model.default import default_model_dir
    from gtok.model.io import weights_sha256

    try:
        path = default_model_dir()
        return path if weights_sha256(path) == sha256 else None
    except GtokError:  # no default model installed
        return None


def _check_layout(store: TokenStore, loaded: EncodingModel) -> None:
    config = loaded.config
    ours = (config.kind, config.num_tokens, config.codebook_size)
    stored = store.model_config
    theirs = (stored.get("kind"), store.num_tokens, store.codebook_size)
    if ours != theirs:
        raise GtokError(
            f"{loaded.path} makes {ours[0]} tokens of {ours[1]} per image from {ours[2]} codes, "
            f"but {store.path} holds {theirs[0]} tokens of {theirs[1]} from {theirs[2]} codes; "
            "it cannot decode them."
        )
