"""gtok: GaussianToken image tokenizers.

An image becomes G 2D Gaussians; a token is a codebook index plus the Gaussian's geometry.
"""

from gtok._lazy import lazy_names
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

# the model API and the store reader (it imports Zarr) are imported on first use, so that
# `import gtok` stays fast and starts nothing
_HOMES = {
    "PRESETS": "gtok.model",
    "Tokens": "gtok.model",
    "build_tokenizer": "gtok.model",
    "load_tokenizer": "gtok.model",
    "TokenStore": "gtok.store",
    "collate": "gtok.store",
}
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
