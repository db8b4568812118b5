"""The two halves of a tokenizer as plain `nn.Module`s of tensors, for `torch.export`,
`torch.compile` and ONNX.

    encoder = TokenEncoder(tok)    # images [B, 3, S, S] in [-1, 1] -> (indices, geometry)
    decoder = TokenDecoder(tok)    # (indices [B, G] int64, geometry [B, G, 5]) -> images
    torch.export.export(decoder, (indices, geometry))

With the Taichi kernels (`tok.implementation == "taichi"`, the default) the rasterizer and
the deformable attention are the custom ops `gtok::rasterize_forward` and
`gtok::deform_attn_forward`: `torch.compile(fullgraph=True)` and `torch.export` keep them as
opaque ops, so an exported program runs where gtok is imported. ONNX has no such ops:
call `tok.set_implementation("reference")` first (`examples/export_onnx.py`). Token ids are
range-checked only in eager mode (a data-dependent check cannot be traced).
"""

from __future__ import annotations

import torch
from torch import nn

from gtok.model.tokenizer import BaseTokenizer, Tokens

__all__ = ["TokenDecoder", "TokenEncoder"]


class TokenEncoder(nn.Module):
    """`tok.encode` of float images [B, 3, S, S] in [-1, 1] -> (indices [B, G] int64,
    geometry [B, G, 5], or None for a VQ tokenizer). No refinement."""

    def __init__(self, tokenizer: BaseTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.tokenizer.encode(images)
        return tokens.indices, tokens.geometry


class TokenDecoder(nn.Module):
    """`tok.decode` of (indices [B, G] int64, geometry [B, G, 5]) -> images [B, 3, S, S]
    (unclamped, in [-1, 1]); geometry is ignored (pass any [B, G, 5]) for a VQ tokenizer."""

    def __init__(self, tokenizer: BaseTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, indices: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(Tokens(indices, geometry))
