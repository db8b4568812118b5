"""gtok: GaussianToken image tokenizers.

An image becomes G 2D Gaussians; a token is a codebook index plus the Gaussian's geometry.
"""

from typing import Any

from gtok._version import __version__
from gtok.errors import ArgumentError, GtokError

__all__ = [
    "PRESETS",
    "ArgumentError",
    "GtokError",
    "TokenStore",
    "Tokens",
    "__version__",
    "build_tokenizer",
    "collate",
    "load_tokenizer",
]

_MODEL_API = ("PRESETS", "Tokens", "build_tokenizer", "load_tokenizer")


def __getattr__(name: str) -> Any:
    # The model API is imported on first use: `import gtok` stays fast and starts nothing.
    if name in _MODEL_API:
        import gtok.model

        return getattr(gtok.model, name)
    if name in ("TokenStore", "collate"):  # the store reader imports zarr: also on first use
        import gtok.store

        return getattr(gtok.store, name)
    raise AttributeError(f"module 'gtok' has no attribute {name!r}")
