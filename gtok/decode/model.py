"""Which tokenizer decodes a token store: the one recorded in it, or `--model` checked against it.

The store's attributes hold the model's config, the sha256 of its weights and (since the
store recorded it) the model directory. Without `--model` that directory is loaded and must
still hold the same weights. With `--model`, a directory whose weights hash differs from the
store's is refused unless `force` (e.g. a fine-tuned copy one knowingly decodes with); even
then its token layout (kind, tokens per image, codebook size) must match the store's.
"""

from __future__ import annotations

import os

import torch

from gtok.encode.model import EncodingModel, load_encoding_model
from gtok.errors import GtokError
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
        raise GtokError(
            f"{loaded.path} has other weights (sha256 {loaded.weights_sha256[:12]}...) than "
            f"the model that encoded {store.path} ({store.weights_sha256[:12]}...); pass "
            "that model, or --force to decode with this one anyway."
        )
    _check_layout(store, loaded)
    return loaded


def _recorded_model(store: TokenStore) -> str:
    recorded = store.model_path
    if recorded is None:
        raise GtokError(
            f"{store.path} does not record its model's directory (it was encoded by an older "
            "gtok); pass the model with --model."
        )
    if not os.path.isdir(recorded):
        raise GtokError(
            f"{store.path} was encoded with the model at {recorded}, which no longer exists; "
            "pass the model with --model."
        )
    return recorded


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
