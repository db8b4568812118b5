"""A stand-in for the default model shipped with gtok (fixtures: a plugin of conftest.py).

Tests must not depend on the trained weights in `gtok/default_model/` (a development
checkout may not have them yet): `standin_default` builds the `tiny` preset with random
weights (its codebook k-means-initialized on one batch, so tokens use many codes), saves it
in a temporary folder and points the default-model lookup there with `GTOK_DEFAULT_MODEL`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gtok.model.default import DEFAULT_MODEL_ENV


def save_standin(folder: Path, seed: int = 0) -> Path:
    """The `tiny` preset, random init, k-means codebook, saved as a model directory."""
    import gtok

    tok = gtok.build_tokenizer("tiny", seed=seed)
    size = tok.config.image_size
    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    tok.train()
    with torch.no_grad():
        tok(images)  # k-means initializes the codebook
    tok.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def standin_model(tmp_path_factory) -> Path:
    return save_standin(tmp_path_factory.mktemp("default-model"))


@pytest.fixture
def standin_default(standin_model, monkeypatch) -> Path:
    """The stand-in is the default model for the duration of the test."""
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(standin_model))
    return standin_model
