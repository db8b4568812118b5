"""Multi-scale deformable attention (Deformable-DETR MSDeformAttn).

GaussianToken's variant (docs/design.md section 1, step 2): besides the `num_points` learned
sampling points, every head also samples one point at a fixed zero offset, i.e. at the reference
point itself. That point comes first (index 0) among a head's points, its offset is a frozen
all-zero parameter `fixed_offsets` [1, 2] (kept as a parameter so the authors' checkpoints and
parameter counts carry over), and the softmax runs over all `num_points + 1` points of a head.

Sampling is bilinear with zero padding as `F.grid_sample(align_corners=False)`: a location
(x, y) in [0, 1] addresses the map's continuous extent, pixel centres sit at
((j + 0.5) / W, (i + 0.5) / H), and samples outside the map read zeros.

Only one feature-map level is used by gtok, so only `num_levels == 1` is supported.
Runs in its parameters' dtype even under autocast: fp32 (float64 or bfloat16 when the
model was cast with `.to(dtype)`; the kernel computes half precision in float32).

The sampling and weighting of all heads and points runs in the Taichi kernel
`gtok.kernels.deform_attn` (implementation "taichi", the default, on cpu and cuda tensors) or in
plain PyTorch with `grid_sample` (`gtok.kernels.reference.deform_attn`, implementation
"reference", also used on other devices and when `fixed_offsets` is made trainable, since
the kernel treats it as a constant). Both give the same numbers up to float rounding;
`set_implementation` switches every layer of a model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gtok import kernels

__all__ = ["IMPLEMENTATIONS", "DeformableAttention", "parameter_dtype", "set_implementation"]

IMPLEMENTATIONS = ("taichi", "reference")
_KERNEL_DEVICES = ("cpu", "cuda", "mps")  # mps: the kernels on Metal, via host memory


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of `module`'s parameters: what its fp32 parts compute in (float32 unless
    the model was cast with `.to(dtype)`, e.g. float64 in tests or bfloat16)."""
    return next(module.parameters()).dtype


def set_implementation(model: nn.Module, implementation: str) -> None:
    """Use `implementation` ("taichi" or "reference") in every DeformableAttention of `model`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    for module in model.modules():
        if isinstance(module, DeformableAttention):
            module.implementation = implementation


class DeformableAttention(nn.Module):
    """Deformable attention of `Nq` queries into one [H, W] value map.

    Args:
        dim: model width D (query, value and output channels); divisible by `num_heads`.
        num_heads: attention heads M.
        num_levels: feature-map levels L; must be 1.
        num_points: learned sampling points P per head and level.
        fixed_point: add the fixed zero-offset point (index 0) to every head and level.
        implementation: "taichi" or "reference" (PyTorch); see the module docstring.
    """

    def __init__(
        self,
        dim: int = 64,
        num_heads: int = 4,
        num_levels: int = 1,
        num_points: int = 4,
        fixed_point: bool = True,
        implementation: str = "taichi",
    ) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.implementation = implementation
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_levels != 1:
            raise ValueError(f"only num_levels=1 is supported, got {num_levels}")
        if num_points < 1:
            raise ValueError(f"num_points must be at least 1, got {num_points}")
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.fixed_point = fixed_point
        total_points = num_points + int(fixed_point)  # softmax size per head and level

        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * total_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        if fixed_point:
            # (dx, dy) of the fixed point in level pixels: zero, never trained.
            self.fixed_offsets = nn.Parameter(torch.zeros(1, 2), requires_grad=False)
        else:
            self.register_parameter("fixed_offsets", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MSDA init: zero attention logits, offsets on a ring of head directions.

        Head h's learned point p starts at (p + 1) * (cos t, sin t) / max(|cos t|, |sin t|)
        level pixels from the reference, t = 2 pi h / M (a square ring of directions).
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        step = 2.0 * math.pi / self.num_heads
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * step  # [M] radians
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # [M, 2]
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)  # [M, L, P, 2]
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[:, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        if self.fixed_offsets is not None:
            nn.init.zeros_(self.fixed_offsets)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shape: tuple[int, int],
    ) -> torch.Tensor:
        """Attend from each query to sampled points of the value map.

        Args:
            query: [B, Nq, D] queries (positional embedding already added).
            reference_points: [B, Nq, 2] (x, y) in [0, 1] of the map's extent.
            value: [B, H*W, D] the map, flattened row-major (row i, column j -> i * W + j).
            spatial_shape: (H, W) of the map.

        Returns:
            [B, Nq, D] in the parameters' dtype (fp32 unless the model was cast).
        """
        height, width = (int(s) for s in spatial_shape)
        batch, num_queries, dim = query.shape
        if dim != self.dim or value.shape != (batch, height * width, self.dim):
            raise ValueError(
                f"expected query [B, Nq, {self.dim}] and value [B, H*W={height * width}, "
                f"{self.dim}], got query {tuple(query.shape)} and value {tuple(value.shape)}"
            )
        if reference_points.shape != (batch, num_queries, 2):
            raise ValueError(
                f"expected reference_points [{batch}, {num_queries}, 2], "
                f"got {tuple(reference_points.shape)}"
            )
        with torch.autocast(device_type=query.device.type, enabled=False):
            dtype = parameter_dtype(self)
            return self._attend(
                query.to(dtype), reference_points.to(dtype), value.to(dtype), height, width
            )

    def _attend(
        self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        b, nq, _ = query.shape
        m, p = self.num_heads, self.num_points
        value = self.value_proj(value).view(b, h * w, m, self.dim // m)  # [B, HW, M, Dh]
        offsets = self.sampling_offsets(query).view(b, nq, m, p, 2)  # level pixels (dx, dy)
        logits = self.attention_weights(query).view(b, nq, m, -1)  # (head, level, point)
        implementation = "taichi" if self._use_kernel(query) else "reference"
        out = kernels.deform_attn(
            value, h, w, reference, offsets, logits, self.fixed_offsets, implementation
        )  # [B, Nq, M, Dh]
        return self.output_proj(out.reshape(b, nq, self.dim))  # heads concatenated

    def _use_kernel(self, query: torch.Tensor) -> bool:
        fixed = self.fixed_offsets
        return (
            self.implementation == "taichi"
            and query.device.type in _KERNEL_DEVICES
            and (fixed is None or not fixed.requires_grad)
        )
