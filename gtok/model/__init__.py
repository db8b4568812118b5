"""The tokenizer models: config and presets, CNN encoder/decoder, GaussianEmbed, quantizer,
the two tokenizers, the model directory format, the shipped default model and the
official-checkpoint converter.

Names are imported on first use, so `gtok.model.config` (and `gtok.PRESETS`) stay cheap to
import: nothing here imports torch until a model name is asked for.
"""

from __future__ import annotations

from gtok._lazy import lazy_names

__all__ = [
    "PRESETS",
    "BaseTokenizer",
    "DeformableAttention",
    "GaussianEmbed",
    "GaussianEmbedConfig",
    "GaussianTokenizer",
    "Gaussians",
    "QuantizerOutput",
    "TokenizerConfig",
    "TokenizerOutput",
    "Tokens",
    "VQTokenizer",
    "VectorQuantizer",
    "build_tokenizer",
    "default_model_dir",
    "load_tokenizer",
    "load_tokenizer_with_sha256",
    "save_pretrained",
    "weights_sha256",
]

_HOMES = {
    "PRESETS": "gtok.model.config",
    "TokenizerConfig": "gtok.model.config",
    "BaseTokenizer": "gtok.model.tokenizer",
    "GaussianTokenizer": "gtok.model.tokenizer",
    "TokenizerOutput": "gtok.model.tokenizer",
    "Tokens": "gtok.model.tokenizer",
    "VQTokenizer": "gtok.model.tokenizer",
    "build_tokenizer": "gtok.model.tokenizer",
    "DeformableAttention": "gtok.model.deform_attn",
    "GaussianEmbed": "gtok.model.gaussian_embed",
    "GaussianEmbedConfig": "gtok.model.gaussian_embed",
    "Gaussians": "gtok.model.gaussian_embed",
    "QuantizerOutput": "gtok.model.quantizer",
    "VectorQuantizer": "gtok.model.quantizer",
    "default_model_dir": "gtok.model.default",
    "load_tokenizer": "gtok.model.io",
    "load_tokenizer_with_sha256": "gtok.model.io",
    "save_pretrained": "gtok.model.io",
    "weights_sha256": "gtok.model.io",
}

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
