"""LPIPS v0.1 (Zhang et al. 2018) with VGG16 or AlexNet, written without torchvision.

Follows the lpips package (`lpips.LPIPS(net=..., version="0.1")` in eval mode):

1. inputs in [-1, 1] go through the scaling layer (x - shift) / scale with
   shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450);
2. the backbone gives five activations (see `gtok.metrics.backbones`);
3. each is unit-normalized over channels, f / (||f||_2 + 1e-10);
4. squared differences go through the layer's linear head (a 1x1 conv C -> 1 without
   bias, weight `lin{k}.model.1.weight` [1, C, 1, 1]; the lpips package's dropout before
   it is identity in eval mode and is left out), are averaged over space and summed over
   the five layers.

Weights: the torchvision backbone file and the lpips head file (see `gtok.weights`:
`vgg16` + `lpips-vgg`, or `alexnet` + `lpips-alex`). All weights are frozen
(requires_grad False) and the module has no train-time behaviour, so it can serve as a
training loss: gradients flow to the input images. The channel norm uses
`torch.linalg.vector_norm`, whose gradient is 0 (not NaN) where a feature vector is all
zero.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor, nn

from gtok.metrics._state import load_checked, read_state_dict
from gtok.metrics.backbones import AlexNetFeatures, VGG16Features
from gtok.weights import require_weights

__all__ = ["LPIPS", "LPIPS_WEIGHTS", "load_lpips"]

Net = Literal["vgg", "alex"]

# net -> (backbone weight key, head weight key) in gtok.weights.KNOWN_WEIGHTS
LPIPS_WEIGHTS: dict[str, tuple[str, str]] = {
    "vgg": ("vgg16", "lpips-vgg"),
    "alex": ("alexnet", "lpips-alex"),
}

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


class _LinearHead(nn.Module):
    """lpips' NetLinLayer in eval mode: `model.1` is the 1x1 conv C -> 1 (no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS distance between image pairs.

    Build with `load_lpips` (weights from files) or construct and call `load_weights`.
    Forward: x, y float [B, 3, H, W] in [-1, 1] (H, W >= 16 for VGG, >= 31 for AlexNet)
    -> [B] distances (0 for identical images), differentiable in x and y.
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, net: Net = "vgg") -> None:
        super().__init__()
        if net not in LPIPS_WEIGHTS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_WEIGHTS)}, got {net!r}")
        self.net_name = net
        self.net = VGG16Features() if net == "vgg" else AlexNetFeatures()
        for k, channels in enumerate(self.net.channels):
            self.add_module(f"lin{k}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def heads(self) -> list[nn.Conv2d]:
        """The five 1x1 linear heads, in layer order."""
        return [getattr(self, f"lin{k}").model[1] for k in range(len(self.net.channels))]

    def load_weights(
        self,
        backbone: dict[str, Tensor],
        head: dict[str, Tensor],
        *,
        backbone_source: str = "the backbone state dict",
        head_source: str = "the LPIPS head state dict",
    ) -> LPIPS:
        """Fill the backbone from a torchvision state dict (`features.N.*`; `classifier.*`
        ignored) and the heads from an lpips v0.1 state dict (`lin{k}.model.1.weight`).
        Raises GtokError naming missing, unexpected or mis-shaped keys."""
        name = "VGG16" if self.net_name == "vgg" else "AlexNet"
        load_checked(
            self.net,
            backbone,
            source=backbone_source,
            layout=f"torchvision {name}",
            ignore=("classifier.",),
        )
        lin = nn.ModuleDict({f"lin{k}": getattr(self, f"lin{k}") for k in range(5)})
        load_checked(lin, head, source=head_source, layout=f"lpips v0.1 {name} head")
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two [B, 3, H, W] images of one shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if not (x.is_floating_point() and y.is_floating_point()):
            raise TypeError(f"LPIPS expects float images in [-1, 1], got {x.dtype}, {y.dtype}")
        batch = x.shape[0]
        both = torch.cat([x, y]).to(self.shift.dtype)  # one backbone pass for both: [2B, 3, H, W]
        features = self.net((both - self.shift) / self.scale)
        total = both.new_zeros(batch)
        for feature, head in zip(features, self.heads(), strict=True):
            norm = torch.linalg.vector_norm(feature, dim=1, keepdim=True)
            unit = feature / (norm + _EPS)
            diff = (unit[:batch] - unit[batch:]).square()  # [B, C, h, w]
            # head (1x1 conv) then spatial mean == spatial mean then head (both linear)
            total = total + diff.mean(dim=(2, 3)) @ head.weight.view(-1)
        return total


def load_lpips(
    net: Net = "vgg",
    backbone_path: str | os.PathLike | None = None,
    head_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
) -> LPIPS:
    """LPIPS with weights from local files, frozen, in eval mode, on `device`.

    backbone_path / head_path: explicit files; when None they are looked up by their
    standard names (`gtok.weights`: vgg16-397923af.pth + vgg.pth, or
    alexnet-owt-7be5be79.pth + alex.pth). Raises GtokError when a file is missing (naming it
    and where to put it) or does not have the standard layout.
    """
    if net not in LPIPS_WEIGHTS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_WEIGHTS)}, got {net!r}")
    backbone_key, head_key = LPIPS_WEIGHTS[net]
    backbone_file = require_weights(backbone_key, backbone_path)
    head_file = require_weights(head_key, head_path)
    model = LPIPS(net)
    model.load_weights(
        read_state_dict(backbone_file),
        read_state_dict(head_file),
        backbone_source=str(backbone_file),
        head_source=str(head_file),
    )
    return model.to(device)
