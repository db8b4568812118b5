"""gtok: GaussianToken image tokenizers.

An image becomes G 2D Gaussians; a token is a codebook index plus the Gaussian's geometry.
"""

from typing import Any

from gtok._version import __version__
from gtok.errors import GtokError

__all__ = ["GtokError", "TokenStore", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "TokenStore":  # the token store reader imports zarr and torch: also on first use
        from gtok.store import TokenStore

        return TokenStore
    raise AttributeError(f"module 'gtok' has no attribute {name!r}")
