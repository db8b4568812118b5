"""LPIPS (VGG16, AlexNet) and FID Inception: weight layouts, loading, outputs, gradients.

The layouts below are written out by hand from the public sources (torchvision's
`vgg16`/`alexnet`/`Inception3`, the lpips package's v0.1 heads `lin{k}.model.1.weight`,
pytorch-fid's `fid_inception_v3` with its FIDInceptionA/C/E blocks), independently of the
gtok code. Weight files are not available here, so state dicts of exactly these layouts are
filled with deterministic values and loaded. The golden numbers were computed by the
reference packages themselves (lpips 0.1.4 with torchvision 0.28, pytorch-fid 0.3.0) from
the same deterministic weights and inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from gtok import GtokError
from gtok.metrics import LPIPS, FIDInceptionV3, load_inception, load_lpips

Layout = dict[str, tuple[int, ...]]


def conv_layout(prefix: str, cout: int, cin: int, kh: int, kw: int | None = None) -> Layout:
    return {f"{prefix}.weight": (cout, cin, kh, kw or kh), f"{prefix}.bias": (cout,)}


# torchvision vgg16: features index, out, in (3x3 convs), then the classifier (unused)
VGG16: Layout = {}
for _i, _o, _c in [
    (0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
    (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512),
    (26, 512, 512), (28, 512, 512),
]:  # fmt: skip
    VGG16 |= conv_layout(f"features.{_i}", _o, _c, 3)
VGG16 |= {
    "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}  # fmt: skip

# torchvision alexnet: features index, out, in, kernel
ALEXNET: Layout = {}
for _i, _o, _c, _k in [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3),
                       (10, 256, 256, 3)]:  # fmt: skip
    ALEXNET |= conv_layout(f"features.{_i}", _o, _c, _k)
ALEXNET |= {
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}  # fmt: skip

# lpips v0.1 heads (weights/v0.1/{vgg,alex}.pth): Dropout at model.0, 1x1 conv at model.1
VGG_HEAD: Layout = {
    f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate([64, 128, 256, 512, 512])
}
ALEX_HEAD: Layout = {
    f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate([64, 192, 384, 256, 256])
}


def basic_conv(prefix: str, cout: int, cin: int, kh: int, kw: int | None = None) -> Layout:
    """torchvision BasicConv2d: conv without bias + BatchNorm2d."""
    bn = {f"{prefix}.bn.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")}
    return {f"{prefix}.conv.weight": (cout, cin, kh, kw or kh)} | bn


def inception_a(p: str, cin: int, pool: int) -> Layout:
    return (basic_conv(f"{p}.branch1x1", 64, cin, 1) | basic_conv(f"{p}.branch5x5_1", 48, cin, 1)
            | basic_conv(f"{p}.branch5x5_2", 64, 48, 5)
            | basic_conv(f"{p}.branch3x3dbl_1", 64, cin, 1)
            | basic_conv(f"{p}.branch3x3dbl_2", 96, 64, 3)
            | basic_conv(f"{p}.branch3x3dbl_3", 96, 96, 3)
            | basic_conv(f"{p}.branch_pool", pool, cin, 1))  # fmt: skip


def inception_c(p: str, c7: int) -> Layout:
    return (basic_conv(f"{p}.branch1x1", 192, 768, 1) | basic_conv(f"{p}.branch7x7_1", c7, 768, 1)
            | basic_conv(f"{p}.branch7x7_2", c7, c7, 1, 7)
            | basic_conv(f"{p}.branch7x7_3", 192, c7, 7, 1)
            | basic_conv(f"{p}.branch7x7dbl_1", c7, 768, 1)
            | basic_conv(f"{p}.branch7x7dbl_2", c7, c7, 7, 1)
            | basic_conv(f"{p}.branch7x7dbl_3", c7, c7, 1, 7)
            | basic_conv(f"{p}.branch7x7dbl_4", c7, c7, 7, 1)
            | basic_conv(f"{p}.branch7x7dbl_5", 192, c7, 1, 7)
            | basic_conv(f"{p}.branch_pool", 192, 768, 1))  # fmt: skip


def inception_e(p: str, cin: int) -> Layout:
    return (basic_conv(f"{p}.branch1x1", 320, cin, 1) | basic_conv(f"{p}.branch3x3_1", 384, cin, 1)
            | basic_conv(f"{p}.branch3x3_2a", 384, 384, 1, 3)
            | basic_conv(f"{p}.branch3x3_2b", 384, 384, 3, 1)
            | basic_conv(f"{p}.branch3x3dbl_1", 448, cin, 1)
            | basic_conv(f"{p}.branch3x3dbl_2", 384, 448, 3)
            | basic_conv(f"{p}.branch3x3dbl_3a", 384, 384, 1, 3)
            | basic_conv(f"{p}.branch3x3dbl_3b", 384, 384, 3, 1)
            | basic_conv(f"{p}.branch_pool", 192, cin, 1))  # fmt: skip


# pytorch-fid pt_inception-2015-12-05: Inception3(num_classes=1008, aux_logits=False)
INCEPTION: Layout = (
    basic_conv("Conv2d_1a_3x3", 32, 3, 3) | basic_conv("Conv2d_2a_3x3", 32, 32, 3)
    | basic_conv("Conv2d_2b_3x3", 64, 32, 3) | basic_conv("Conv2d_3b_1x1", 80, 64, 1)
    | basic_conv("Conv2d_4a_3x3", 192, 80, 3)
    | inception_a("Mixed_5b", 192, 32) | inception_a("Mixed_5c", 256, 64)
    | inception_a("Mixed_5d", 288, 64)
    | basic_conv("Mixed_6a.branch3x3", 384, 288, 3)
    | basic_conv("Mixed_6a.branch3x3dbl_1", 64, 288, 1)
    | basic_conv("Mixed_6a.branch3x3dbl_2", 96, 64, 3)
    | basic_conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    | inception_c("Mixed_6b", 128) | inception_c("Mixed_6c", 160)
    | inception_c("Mixed_6d", 160) | inception_c("Mixed_6e", 192)
    | basic_conv("Mixed_7a.branch3x3_1", 192, 768, 1)
    | basic_conv("Mixed_7a.branch3x3_2", 320, 192, 3)
    | basic_conv("Mixed_7a.branch7x7x3_1", 192, 768, 1)
    | basic_conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    | basic_conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    | basic_conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    | inception_e("Mixed_7b", 1280) | inception_e("Mixed_7c", 2048)
    | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
)  # fmt: skip


def deterministic_state(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for `layout` (torch's CPU generator, reproducible): He-scaled
    conv/linear weights, BatchNorm statistics varied per channel, non-negative LPIPS heads.
    Classifier weights (unused by the metrics) are zero-stride views, so the 100M-entry VGG
    classifier costs no memory."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.startswith("classifier."):
            state[key] = torch.zeros(1).expand(*shape)
            continue
        noise = torch.randn(shape, generator=gen)
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("running_mean", ".bias")):
            value = 0.05 * noise
        elif key.endswith("bn.weight"):
            value = 1.0 + 0.1 * noise
        elif len(shape) == 4 and shape[0] == 1:  # lpips heads: non-negative, as trained ones
            value = 0.1 * noise.abs()
        else:  # conv / linear weights
            value = noise * math.sqrt(2.0 / math.prod(shape[1:]))
        state[key] = value
    return state


def test_image(batch: int, height: int, width: int) -> torch.Tensor:
    """Deterministic float image in [0, 1], [B, 3, H, W]."""
    b, c, y, x = torch.meshgrid(
        torch.arange(batch), torch.arange(3), torch.arange(height), torch.arange(width),
        indexing="ij",
    )  # fmt: skip
    v = torch.sin(0.31 * x + 0.17 * y * (c + 1) + b) * torch.cos(0.05 * x * y / (b + 1) + c)
    return (v.double() * 0.5 + 0.5).float()


test_image.__test__ = False  # a helper, not a test


def lpips_model(net: str) -> LPIPS:
    backbone, head = (VGG16, VGG_HEAD) if net == "vgg" else (ALEXNET, ALEX_HEAD)
    return LPIPS(net).load_weights(deterministic_state(backbone, 0), deterministic_state(head, 1))


def lpips_inputs(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return test_image(2, size, size) * 2 - 1, test_image(2, size, size).flip(-1) * 2 - 1


# lpips 0.1.4 (`lpips.LPIPS(net=..., pnet_rand=True)` filled with the same weights), eval mode
LPIPS_REFERENCE = {
    "vgg": [0.11799202114343643, 0.12437047809362411],
    "alex": [0.14827343821525574, 0.14934925734996796],
}


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_the_lpips_package(net):
    model = lpips_model(net)
    x, y = lpips_inputs()
    with torch.no_grad():
        out = model(x, y)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor(LPIPS_REFERENCE[net]), rtol=1e-4, atol=0)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_identical_is_zero_and_gradients_reach_the_images(net):
    model = lpips_model(net)
    x, y = lpips_inputs(32)
    assert model(x, x).abs().max().item() < 1e-7
    assert not any(p.requires_grad for p in model.parameters())
    x = x.clone().requires_grad_(True)
    loss = model(x, y).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # a gradient step on x lowers the distance: the gradient is the loss's, not noise
    with torch.no_grad():
        stepped = x - 0.5 * x.grad / x.grad.abs().max()
        assert model(stepped, y).mean() < loss


def test_lpips_rejects_wrong_layouts_with_the_key_names():
    model = LPIPS("vgg")
    backbone = deterministic_state(VGG16)
    head = deterministic_state(VGG_HEAD)
    missing = {k: v for k, v in backbone.items() if k != "features.28.bias"}
    with pytest.raises(GtokError, match=r"torchvision VGG16 layout \(missing features.28.bias"):
        model.load_weights(missing, head)
    with pytest.raises(GtokError, match=r"unexpected features\.31\.weight"):
        model.load_weights(backbone | {"features.31.weight": torch.zeros(1)}, head)
    bad_head = head | {"lin2.model.1.weight": torch.zeros(1, 128, 1, 1)}
    with pytest.raises(
        GtokError, match=r"lin2.model.1.weight \[1, 128, 1, 1\] \(expected \[1, 256"
    ):
        model.load_weights(backbone, bad_head, head_source="vgg.pth")
    # AlexNet weights offered to the VGG model
    with pytest.raises(GtokError, match="wrong shapes"):
        model.load_weights(deterministic_state(ALEXNET), head)
    with pytest.raises(ValueError, match="'vgg'"):
        LPIPS("squeeze")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))


def test_load_lpips_from_files(tmp_path):
    torch.save(deterministic_state(ALEXNET, 0), tmp_path / "alexnet-owt-7be5be79.pth")
    # the lpips heads in the legacy (pre-zip) serialization, as older downloads are
    torch.save(deterministic_state(ALEX_HEAD, 1), tmp_path / "alex.pth",
               _use_new_zipfile_serialization=False)  # fmt: skip
    model = load_lpips("alex", tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth")
    x, y = lpips_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), lpips_model("alex")(x, y), rtol=0, atol=0)
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(GtokError, match="Could not read"):
        load_lpips("alex", tmp_path / "broken.pth", tmp_path / "alex.pth")


# pytorch-fid 0.3.0 (`InceptionV3([3])` with the same weights) on test_image(2, 32, 48)
INCEPTION_REFERENCE = {
    "first": [
        [0.036477237939834595, 0.10295332223176956, 3.0893714427948, 1.795058250427246,
         2.3178610801696777, 2.78289794921875],
        [0.04018409922719002, 0.11166272312402725, 2.845160484313965, 1.5718631744384766,
         2.142979860305786, 2.7181830406188965],
    ],
    "mean": [0.7231597900390625, 0.6747872829437256],
    "norm": [56.25669479370117, 52.49923324584961],
}  # fmt: skip


def test_inception_matches_pytorch_fid_and_takes_uint8():
    model = FIDInceptionV3()
    state = deterministic_state(INCEPTION)
    # the file layout carries BatchNorm's num_batches_tracked counters; they are accepted
    counters = {
        k.replace("running_var", "num_batches_tracked"): torch.tensor(0)
        for k in state
        if k.endswith("running_var")
    }
    model.load_weights(state | counters)
    images = test_image(2, 32, 48)
    with torch.no_grad():
        features = model(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    ref = INCEPTION_REFERENCE
    torch.testing.assert_close(features[:, :6], torch.tensor(ref["first"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features.mean(1), torch.tensor(ref["mean"]), rtol=1e-4, atol=0)
    torch.testing.assert_close(features.norm(dim=1), torch.tensor(ref["norm"]), rtol=1e-4, atol=0)
    # uint8 input is divided by 255 first (as ToTensor in pytorch-fid)
    as_bytes = torch.round(images[:1] * 255).to(torch.uint8)
    with torch.no_grad():
        from_bytes = model(as_bytes)
        from_floats = model(as_bytes.float() / 255)
    torch.testing.assert_close(from_bytes, from_floats, rtol=0, atol=0)


def test_inception_rejects_other_layouts(tmp_path):
    model = FIDInceptionV3()
    state = deterministic_state(INCEPTION)
    without = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.bn.running_var"}
    with pytest.raises(GtokError, match=r"missing Mixed_7c\.branch_pool\.bn\.running_var"):
        model.load_weights(without)
    # torchvision's ImageNet Inception: 1000 classes and an aux classifier
    torchvision_like = state | {
        "fc.weight": torch.zeros(1000, 2048),
        "fc.bias": torch.zeros(1000),
        "AuxLogits.fc.weight": torch.zeros(1000, 768),
    }
    with pytest.raises(
        GtokError, match=r"unexpected AuxLogits.fc.weight.*fc.weight \[1000, 2048\]"
    ):
        model.load_weights(torchvision_like, source="inception_v3_google.pth")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 1, 32, 32))


def test_load_inception_from_a_file(tmp_path, monkeypatch):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(deterministic_state(INCEPTION), path)
    monkeypatch.setenv("GTOK_INCEPTION_WEIGHTS", str(path))
    model = load_inception()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.fc.weight, deterministic_state(INCEPTION)["fc.weight"])
