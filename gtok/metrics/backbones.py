"""VGG16 and AlexNet feature extractors in torchvision's `features` layout, for LPIPS.

Written without torchvision: `features` is an `nn.Sequential` whose indices match
torchvision's `vgg16().features` and `alexnet().features`, so their weight files
(`vgg16-397923af.pth`, `alexnet-owt-7be5be79.pth`) load key for key
(`features.N.weight` [out, in, k, k], `features.N.bias` [out]). The classifier part of those
files is not used.

Each network returns the five activations LPIPS v0.1 compares (the lpips package's slices):
VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (outputs of `features` indices 3, 8, 15,
22, 29); AlexNet relu1..relu5 (indices 1, 4, 7, 9, 11).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["AlexNetFeatures", "VGG16Features"]

# torchvision's configuration "D": conv widths, "M" = 2x2 max pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class _Tapped(nn.Module):
    """A `features` sequence that returns the outputs of chosen indices."""

    taps: tuple[int, ...]
    channels: tuple[int, ...]
    features: nn.Sequential

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] (already shifted and scaled). Returns the tapped activations."""
        outputs = []
        last = self.taps[-1]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
            if index == last:  # later layers (the final pool) are not needed
                break
        return outputs


class VGG16Features(_Tapped):
    """torchvision VGG16 `features`: 3x3 convs (padding 1) + ReLU, 2x2 max pools.

    Forward: [B, 3, H, W] -> five maps [B, C_k, H / 2^k, W / 2^k], C = 64, 128, 256, 512, 512.
    """

    taps = (3, 8, 15, 22, 29)
    channels = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for value in _VGG16_CFG:
            if value == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                width = int(value)
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = width
        self.features = nn.Sequential(*layers)


class AlexNetFeatures(_Tapped):
    """torchvision AlexNet `features` (the "one weird trick" variant torchvision ships).

    Forward: [B, 3, H, W] -> five maps with C = 64, 192, 384, 256, 256 (strides about 4, 8,
    16, 16, 16); H and W must be at least 31.
    """

    taps = (1, 4, 7, 9, 11)
    channels = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),  # 1  relu1
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),  # 4  relu2
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),  # 7  relu3
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),  # 9  relu4
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),  # 11 relu5
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
