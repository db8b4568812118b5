"""The tokenizers: GaussianToken (`GaussianTokenizer`) and its VQGAN baseline (`VQTokenizer`).

Both take images [B, 3, H, W] in [-1, 1] and share one API: `encode` -> `Tokens`,
`decode(Tokens)` -> images, `forward` -> `TokenizerOutput` (what training needs),
`save_pretrained(dir)`, `config`. `encode` and `decode` are the inference path (no
gradients unless `decode(..., grad=True)`; put the model in eval mode first: in training
mode the quantizer and the scale scheduler update their state as in a training step, and
dropout is active). In eval mode `decode(encode(x))` reproduces `forward(x).reconstruction`.

For Python callers (`gtok.model.pixels`): `encode` also takes PIL images and uint8 pixels
(through `preprocess`, the resize and centre crop of `gtok encode`), `decode` takes what a
`TokenStore` yields (numpy or torch, a batch dict, a row, `Tokens` or an (indices,
geometry) pair), and `postprocess` turns images into what `gtok decode` writes. A model
cast with `.to(torch.bfloat16)` or `.half()` computes in that dtype (the kernels in
float32). `set_implementation("reference")` swaps both Taichi kernels for their PyTorch
twins (what ONNX export needs; `gtok.model.export`).

GaussianToken (docs/design.md section 1): encoder -> GaussianEmbed (G Gaussians) -> vector
quantizer on the Gaussian features -> `gtok.kernels.rasterize` of the quantized Gaussians onto
a map_size^2 x z map -> decoder (adaptive GroupNorm styled by the rendered map).
VQ baseline: encoder (z channels) -> quantizer on every map cell (row-major) -> decoder.
GaussianEmbed, the quantizer and the rasterizer run in fp32 even under autocast (in the
model's dtype when it was cast).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from gtok.kernels import rasterize
from gtok.model.config import TokenizerConfig, preset_config
from gtok.model.decoder import Decoder
from gtok.model.deform_attn import IMPLEMENTATIONS, set_implementation
from gtok.model.directory import save_pretrained
from gtok.model.encoder import Encoder
from gtok.model.gaussian_embed import GaussianEmbed, GaussianEmbedConfig, Gaussians
from gtok.model.pixels import from_model_images, to_model_images
from gtok.model.quantizer import QuantizerOutput, VectorQuantizer
from gtok.model.refine import (
    DEFAULT_REFINE_LOSS,
    DEFAULT_REFINE_LR,
    RefineSettings,
    refine_geometry,
)

__all__ = [
    "BaseTokenizer",
    "GaussianTokenizer",
    "TokenizerOutput",
    "Tokens",
    "VQTokenizer",
    "build_from_config",
    "build_tokenizer",
]


class Tokens(NamedTuple):
    """Tokens of a batch of images, in the learned anchor order (vq: row-major map cells).

    indices: [B, G] int64 code ids in [0, codebook_size).
    geometry: [B, G, 5] in the model's dtype, float32 unless it was cast (mean_x, mean_y,
        scale_x, scale_y, rotation): means in [-1, 1] (x right, y down), scales = standard
        deviations in map pixels, rotation in radians in [0, pi]; None for the VQ baseline.
    """

    indices: torch.Tensor
    geometry: torch.Tensor | None


class TokenizerOutput(NamedTuple):
    """What a training step needs from `forward`.

    reconstruction: [B, 3, H, W], unclamped (images are in [-1, 1]).
    commit_loss: scalar, MSE(features, sg(quantized)) (weight it 0.25 in the total loss).
    indices: [B, G] int64 code ids.
    perplexity: scalar, exp(entropy) of this batch's code histogram.
    usage: scalar, share of the codebook used by this batch.
    gaussians: the Gaussians before quantization (features are the continuous ones), or
        None for the VQ baseline.
    """

    reconstruction: torch.Tensor
    commit_loss: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor
    gaussians: Gaussians | None


class BaseTokenizer(nn.Module):
    """What both tokenizers share: config, quantizer and decoder construction, input checks,
    image and token conversions, the kernel implementation, `save_pretrained`. Subclasses
    define `forward`, `encode` and `decode`."""

    quantize: VectorQuantizer  # built by `_build_quantizer_and_decoder`
    decoder: Decoder

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.implementation = "taichi"

    def set_implementation(self, implementation: str) -> None:
        """Run both kernels (rasterizer, deformable attention) as "taichi" (the default) or
        "reference" (their plain PyTorch twins in `gtok.kernels.reference`: any device, and
        traceable into ONNX). The numbers agree to float32 rounding."""
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.implementation = implementation
        set_implementation(self, implementation)

    def preprocess(self, images: Any, *, resize: int | None = None) -> torch.Tensor:
        """Images as the model takes them: [B, 3, S, S] in [-1, 1], on the model's device and
        in its dtype. images: PIL images, uint8 arrays or tensors (HWC or CHW, one image or a
        batch, or a list), resized as `gtok encode --resize` does (shorter side to `resize`,
        default S, pixels) and centre-cropped, or float tensors [B, 3, S, S] already in
        [-1, 1]; floats outside [-1, 1] are refused (see `gtok.model.pixels`)."""
        images = to_model_images(images, self.config.image_size, resize)
        return images.to(self.quantize.embed.device, self.quantize.embed.dtype)

    def postprocess(self, images: torch.Tensor, output: str = "pil") -> Any:
        """Model images [B, 3, H, W] in [-1, 1] (what `decode` returns) -> the pixels
        `gtok decode` writes: a list of RGB PIL images (`output="pil"`) or a uint8 array
        [B, H, W, 3] (`output="numpy"`)."""
        return from_model_images(images, output)

    def encode(self, images: Any) -> Tokens:
        """images [B, 3, H, W] in [-1, 1] (or anything `preprocess` takes) -> `Tokens`."""
        raise NotImplementedError(f"{type(self).__name__} defines no encode")

    def decode(self, tokens: Tokens | Any, *, grad: bool = False) -> torch.Tensor:
        """`Tokens` -> images [B, 3, H, W] (unclamped); grad: keep the autograd graph."""
        raise NotImplementedError(f"{type(self).__name__} defines no decode")

    def _build_quantizer_and_decoder(self) -> None:
        config = self.config
        self.quantize = VectorQuantizer(
            config.codebook_size,
            config.z_dim,
            decay=config.codebook_decay,
            eps=config.codebook_eps,
            kmeans_iters=config.kmeans_iters,
            dead_threshold=config.dead_threshold,
            restart_used=config.restart_used_codes,
        )
        self.decoder = Decoder(
            config.ch, config.ch_mult, config.num_res_blocks, config.z_dim, config.norm_groups
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` into `directory` (see
        `gtok.model.directory`)."""
        save_pretrained(self, directory)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(
                f"images must be [B, 3, {size}, {size}] for this tokenizer, "
                f"got {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch [0, 3, H, W]; pass at least one image")

    def _as_tokens(self, tokens: Any) -> Tokens:
        """What a `TokenStore` yields (a batch dict or one row, numpy or torch), `Tokens` or an
        (indices, geometry) pair -> `Tokens` of tensors with a batch axis."""
        if isinstance(tokens, Mapping):
            if "indices" not in tokens:
                raise ValueError(
                    f"a token dict needs an 'indices' entry (a TokenStore batch), got keys "
                    f"{sorted(tokens)}"
                )
            tokens = (tokens["indices"], tokens.get("geometry"))
        if not isinstance(tokens, tuple) or len(tokens) != 2:
            raise TypeError(
                "tokens must be Tokens, an (indices, geometry) pair or a TokenStore batch, got "
                f"{type(tokens).__name__}"
            )
        indices, geometry = (
            torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
            for t in tokens
        )
        if isinstance(indices, torch.Tensor) and indices.ndim == 1:  # one row of a store
            indices = indices[None]
            geometry = None if geometry is None else geometry[None]
        return Tokens(indices, geometry)

    def _checked_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids of any integer dtype and device -> int64 on the model's device. Their
        range is checked in eager mode (while compiling, a data-dependent check would break
        the graph: compiled callers pass ids they read from a checked store)."""
        count = self.config.num_tokens
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a tensor or array, got {type(indices).__name__}")
        if indices.ndim != 2 or indices.shape[1] != count:
            raise ValueError(f"indices must be [B, {count}], got {list(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        indices = indices.to(self.quantize.embed.device, torch.int64)
        if torch.compiler.is_compiling() or not indices.numel():
            return indices
        if indices.min() < 0 or indices.max() >= self.config.codebook_size:
            raise ValueError(
                f"indices must be in [0, {self.config.codebook_size}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return indices


class GaussianTokenizer(BaseTokenizer):
    """GaussianToken: images -> G Gaussians with quantized features -> rendered map -> images."""

    def __init__(self, config: TokenizerConfig) -> None:
        if config.kind != "gaussian":
            raise ValueError(f"GaussianTokenizer needs a 'gaussian' config, got {config.kind!r}")
        super().__init__(config)
        self.encoder = Encoder(
            config.ch, config.ch_mult, config.num_res_blocks, config.embed_dim, config.norm_groups
        )
        self.gaussian_embed = GaussianEmbed(GaussianEmbedConfig.from_model(config))
        self._build_quantizer_and_decoder()

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """images [B, 3, H, W] in [-1, 1] -> `TokenizerOutput`."""
        self._check_images(images)
        gaussians = self._gaussians(images)
        with torch.autocast(images.device.type, enabled=False):
            q = self.quantize(gaussians.features)  # quantized [B, G, z]
        recon = self._render_decode(
            gaussians.means, gaussians.scales, gaussians.rotations, q.quantized
        )
        return TokenizerOutput(recon, q.commit_loss, q.indices, q.perplexity, q.usage, gaussians)

    @torch.no_grad()
    def encode(
        self,
        images: Any,
        *,
        refine_steps: int = 0,
        refine_lr: float = DEFAULT_REFINE_LR,
        refine_loss: str = DEFAULT_REFINE_LOSS,
    ) -> Tokens:
        """images [B, 3, H, W] in [-1, 1] (or anything `preprocess` takes) ->
        Tokens(indices [B, G] int64, geometry [B, G, 5] in the model's dtype).

        refine_steps > 0: then fit each image's geometry to the image with that many Adam
        steps (peak step size `refine_lr`, loss "psnr", "mse" or "l1"; decoder and codes
        fixed), see `gtok.model.refine`. Deterministic; each image's tokens do not depend on
        the rest of the batch's images."""
        settings = RefineSettings(refine_steps, refine_lr, refine_loss)
        images = self.preprocess(images)
        self._check_images(images)
        gaussians = self._gaussians(images)
        with torch.autocast(images.device.type, enabled=False):
            indices = self.quantize(gaussians.features).indices  # [B, G]
        geometry = torch.cat(
            [gaussians.means, gaussians.scales, gaussians.rotations[..., None]], dim=-1
        )  # [B, G, 5]
        if settings.enabled:
            with torch.autocast(images.device.type, enabled=False):
                geometry = refine_geometry(self, images, geometry, indices, settings)
        return Tokens(indices, geometry)

    def decode(self, tokens: Tokens | Any, *, grad: bool = False) -> torch.Tensor:
        """Tokens(indices [B, G], geometry [B, G, 5]) -> images [B, 3, H, W] (unclamped).

        tokens: `Tokens`, an (indices, geometry) pair or a `TokenStore` batch or row, numpy
        or torch, on any device, geometry in any float dtype (token stores keep float16);
        moved to the model's device and dtype. grad: keep the autograd graph through the
        rasterizer and decoder (to the geometry and the decoder's weights; to code
        features: `decode_gaussians`), e.g. for a loss on the decoded pixels."""
        tokens = self._as_tokens(tokens)
        with contextlib.nullcontext() if grad else torch.no_grad():
            indices = self._checked_indices(tokens.indices)
            geometry = tokens.geometry
            expected = (indices.shape[0], self.config.num_gaussians, 5)
            if not isinstance(geometry, torch.Tensor) or tuple(geometry.shape) != expected:
                got = list(geometry.shape) if isinstance(geometry, torch.Tensor) else geometry
                raise ValueError(f"geometry must be {list(expected)}, got {got}")
            return self.decode_gaussians(geometry, self.quantize.lookup(indices))

    def decode_gaussians(self, geometry: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Differentiable decode of Gaussians: geometry [B, G, 5] (as in `Tokens`) and
        features [B, G, z] (codes, `quantize.lookup(indices)`, or any continuous features)
        -> images [B, 3, H, W] (unclamped); both are moved to the model's device and dtype."""
        embed = self.quantize.embed
        geometry = geometry.to(embed.device, embed.dtype)
        return self._render_decode(
            geometry[..., 0:2], geometry[..., 2:4], geometry[..., 4], features.to(geometry)
        )

    def _gaussians(self, images: torch.Tensor) -> Gaussians:
        feature_map = self.encoder(images)  # [B, embed_dim, map, map]
        with torch.autocast(images.device.type, enabled=False):
            return self.gaussian_embed(feature_map)  # in its parameters' dtype

    def _render_decode(
        self,
        means: torch.Tensor,
        scales: torch.Tensor,
        rotations: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        """Splat Gaussians (means [B,G,2], scales [B,G,2], rotations [B,G], features [B,G,z])
        onto the map and decode it: -> [B, 3, H, W]."""
        size = self.config.map_size
        with torch.autocast(means.device.type, enabled=False):
            rendered = rasterize(
                means,
                scales,
                rotations,
                features.to(means.dtype),
                size,
                size,
                normalize=self.config.normalized_splatting,
                implementation=self.implementation,
            )
        return self.decoder(rendered)  # rendered: [B, z, map, map]


class VQTokenizer(BaseTokenizer):
    """VQGAN baseline: every cell of the encoder's map_size^2 x z map is one token."""

    def __init__(self, config: TokenizerConfig) -> None:
        if config.kind != "vq":
            raise ValueError(f"VQTokenizer needs a 'vq' config, got {config.kind!r}")
        super().__init__(config)
        self.encoder = Encoder(
            config.ch, config.ch_mult, config.num_res_blocks, config.z_dim, config.norm_groups
        )
        self._build_quantizer_and_decoder()

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """images [B, 3, H, W] in [-1, 1] -> `TokenizerOutput` (gaussians None)."""
        self._check_images(images)
        q = self._quantize(images)
        recon = self.decoder(self._to_map(q.quantized))
        return TokenizerOutput(recon, q.commit_loss, q.indices, q.perplexity, q.usage, None)

    @torch.no_grad()
    def encode(self, images: Any) -> Tokens:
        """images [B, 3, H, W] in [-1, 1] (or anything `preprocess` takes) ->
        Tokens(indices [B, map^2] row-major, None)."""
        images = self.preprocess(images)
        self._check_images(images)
        return Tokens(self._quantize(images).indices, None)

    def decode(self, tokens: Tokens | Any, *, grad: bool = False) -> torch.Tensor:
        """Tokens(indices [B, map^2], geometry ignored) -> images [B, 3, H, W] (unclamped).
        tokens: as `GaussianTokenizer.decode` takes them; grad: keep the autograd graph."""
        tokens = self._as_tokens(tokens)
        with contextlib.nullcontext() if grad else torch.no_grad():
            indices = self._checked_indices(tokens.indices)
            return self.decoder(self._to_map(self.quantize.lookup(indices)))

    def _quantize(self, images: torch.Tensor) -> QuantizerOutput:
        z = self.encoder(images)  # [B, z, map, map]
        with torch.autocast(images.device.type, enabled=False):
            return self.quantize(z.flatten(2).transpose(1, 2))  # on [B, map^2, z]

    def _to_map(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, map^2, z] row-major -> [B, z, map, map]."""
        size = self.config.map_size
        return codes.transpose(1, 2).reshape(codes.shape[0], -1, size, size)


def build_from_config(config: TokenizerConfig) -> BaseTokenizer:
    """A freshly initialized tokenizer of `config.kind` (in training mode, as torch builds it)."""
    cls = GaussianTokenizer if config.kind == "gaussian" else VQTokenizer
    return cls(config)


def build_tokenizer(
    preset: str | TokenizerConfig, *, seed: int | None = None, **overrides: Any
) -> BaseTokenizer:
    """A freshly initialized tokenizer (training mode) of a preset name or config.

    preset: a name in `PRESETS` ("tiny", "cifar", "imagenet", "vq-tiny", ...) or a
        `TokenizerConfig`; overrides: config fields to change (validated; ValueError names
        bad ones); seed: makes the initialization reproducible (torch's global RNG is
        reseeded with it).
    Example: `gtok.build_tokenizer("tiny", codebook_size=512, seed=0)`.
    """
    if isinstance(preset, TokenizerConfig):
        config = preset.replace(**overrides)
    else:
        config = preset_config(preset, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return build_from_config(config)
