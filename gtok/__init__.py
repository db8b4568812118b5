"""gtok: GaussianToken image tokenizers.

An image becomes G 2D Gaussians; a token is a codebook index plus the Gaussian's geometry.
"""

from gtok._version import __version__
from gtok.errors import GtokError

__all__ = ["GtokError", "__version__"]
