"""DeformableAttention against a naive per-point loop with hand-written bilinear sampling."""

import copy
import math

import pytest
import torch

import gtok
from gtok.model.deform_attn import DeformableAttention, set_implementation
from gtok.model.gaussian_embed import GaussianEmbed, GaussianEmbedConfig


def bilinear_zero_pad(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample image [C, H, W] at (x, y) in [0, 1] of its extent; zeros outside.

    Pixel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H), so the continuous pixel
    coordinate is x * W - 0.5; each of the 4 neighbours outside the map contributes zero.
    """
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                out += wy * wx * image[:, yi, xi]
    return out


def naive_deformable_attention(
    attn: DeformableAttention,
    query: torch.Tensor,
    reference: torch.Tensor,
    value: torch.Tensor,
    shape: tuple[int, int],
) -> torch.Tensor:
    """One query, head and point at a time, straight from the MSDA definition (float64)."""
    h, w = shape
    m, p, d = attn.num_heads, attn.num_points, attn.dim
    dh = d // m
    params = {k: v.double() for k, v in attn.state_dict().items()}
    query, reference, value = query.double(), reference.double(), value.double()
    v = value @ params["value_proj.weight"].T + params["value_proj.bias"]  # [B, HW, D]
    out = torch.zeros(query.shape[0], query.shape[1], d, dtype=torch.float64)
    for b in range(query.shape[0]):
        for q in range(query.shape[1]):
            off = query[b, q] @ params["sampling_offsets.weight"].T
            off = off + params["sampling_offsets.bias"]
            logit = query[b, q] @ params["attention_weights.weight"].T
            logit = logit + params["attention_weights.bias"]
            for head in range(m):
                image = v[b, :, head * dh : (head + 1) * dh].T.reshape(dh, h, w)
                # point 0 is the fixed zero offset, points 1..P the learned ones
                offsets = [(0.0, 0.0)] + [
                    (off[(head * p + k) * 2].item(), off[(head * p + k) * 2 + 1].item())
                    for k in range(p)
                ]
                weights = torch.softmax(logit[head * (p + 1) : (head + 1) * (p + 1)], dim=0)
                acc = torch.zeros(dh, dtype=torch.float64)
                for k, (dx, dy) in enumerate(offsets):
                    x = reference[b, q, 0].item() + dx / w
                    y = reference[b, q, 1].item() + dy / h
                    acc += weights[k] * bilinear_zero_pad(image, x, y)
                out[b, q, head * dh : (head + 1) * dh] = acc
    return out @ params["output_proj.weight"].T + params["output_proj.bias"]


def _randomized(dim: int, heads: int, points: int, seed: int) -> DeformableAttention:
    torch.manual_seed(seed)
    attn = DeformableAttention(dim=dim, num_heads=heads, num_points=points)
    with torch.no_grad():
        # offsets of a few pixels so that many points fall between pixels and off the map
        attn.sampling_offsets.weight.normal_(0.0, 1.0)
        attn.sampling_offsets.bias.normal_(0.0, 2.0)
        attn.attention_weights.weight.normal_(0.0, 0.5)
        attn.attention_weights.bias.normal_(0.0, 0.5)
        attn.value_proj.bias.normal_()
        attn.output_proj.bias.normal_()
    return attn


@pytest.mark.parametrize("shape", [(3, 4), (5, 2)])
def test_matches_naive_loop(shape):
    h, w = shape
    attn = _randomized(dim=8, heads=2, points=3, seed=0)
    query = torch.randn(2, 5, 8)
    reference = torch.rand(2, 5, 2) * 1.2 - 0.1  # some references off the map too
    value = torch.randn(2, h * w, 8)
    got = attn(query, reference, value, shape)
    want = naive_deformable_attention(attn, query, reference, value, shape)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_off_map_points_read_zero():
    """All sampling points far off the map: only the projection biases remain."""
    attn = DeformableAttention(dim=8, num_heads=2, num_points=2)
    with torch.no_grad():
        attn.sampling_offsets.bias.fill_(100.0)
        attn.value_proj.bias.normal_()
        attn.output_proj.bias.normal_()
    reference = torch.full((1, 3, 2), 5.0)  # fixed point off the map as well
    out = attn(torch.randn(1, 3, 8), reference, torch.randn(1, 12, 8), (3, 4))
    torch.testing.assert_close(out, attn.output_proj.bias.expand(1, 3, 8))


def test_fixed_point_is_first():
    """A huge logit on point 0 of every head returns the value at the reference itself."""
    attn = DeformableAttention(dim=4, num_heads=2, num_points=2)
    with torch.no_grad():
        attn.attention_weights.bias.view(2, 3)[:, 0] = 50.0  # (head, point), point 0 fixed
        attn.value_proj.weight.copy_(torch.eye(4))
        attn.output_proj.weight.copy_(torch.eye(4))
    value = torch.randn(1, 3 * 4, 4)
    reference = torch.tensor([[[(2 + 0.5) / 4, (1 + 0.5) / 3]]])  # centre of pixel (1, 2)
    out = attn(torch.randn(1, 1, 4), reference, value, (3, 4))
    torch.testing.assert_close(out[0, 0], value[0, 1 * 4 + 2])


def test_init_and_layout():
    attn = DeformableAttention(dim=64, num_heads=4, num_points=4)
    assert attn.attention_weights.out_features == 20
    assert attn.sampling_offsets.out_features == 32
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert not attn.fixed_offsets.requires_grad and torch.count_nonzero(attn.fixed_offsets) == 0
    # head directions 0, 90, 180, 270 degrees on the unit square, times point index 1..4
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    want = directions[:, None, :] * torch.arange(1.0, 5.0)[None, :, None]  # [M, P, 2]
    torch.testing.assert_close(attn.sampling_offsets.bias.view(4, 4, 2), want, atol=1e-6, rtol=0)
    n_params = sum(p.numel() for p in attn.parameters())
    assert n_params == 2080 + 1300 + 4160 + 4160 + 2  # the authors' MSDA with fixed_offsets


def test_without_fixed_point_matches_plain_msda_softmax():
    attn = DeformableAttention(dim=8, num_heads=2, num_points=3, fixed_point=False)
    assert attn.fixed_offsets is None and attn.attention_weights.out_features == 6
    out = attn(torch.randn(1, 2, 8), torch.rand(1, 2, 2), torch.randn(1, 6, 8), (2, 3))
    assert out.shape == (1, 2, 8)


def test_gradients_and_autocast_fp32():
    attn = _randomized(dim=8, heads=2, points=2, seed=1)
    query = torch.randn(1, 4, 8, requires_grad=True)
    value = torch.randn(1, 9, 8, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = attn(query.bfloat16(), torch.rand(1, 4, 2), value.bfloat16(), (3, 3))
    assert out.dtype == torch.float32
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert attn.fixed_offsets.grad is None


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_levels"):
        DeformableAttention(num_levels=2)
    with pytest.raises(ValueError, match="divisible"):
        DeformableAttention(dim=10, num_heads=4)
    attn = DeformableAttention(dim=8, num_heads=2, num_points=2)
    with pytest.raises(ValueError, match="value"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 2, 2), torch.randn(1, 5, 8), (2, 3))
    with pytest.raises(ValueError, match="reference_points"):
        attn(torch.randn(1, 2, 8), torch.rand(1, 3, 2), torch.randn(1, 6, 8), (2, 3))


# ---- the Taichi kernel path against the PyTorch reference path, whole models ---------


def _perturbed_copies(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(kernel, reference) copies of `model` with every trainable parameter moved off its
    init (whose zero offset weights and attention logits make every query alike)."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    kernel, ref = copy.deepcopy(model), copy.deepcopy(model)
    set_implementation(ref, "reference")
    return kernel, ref


def test_module_outputs_match_the_reference_path_within_1e_5():
    attn = _randomized(dim=64, heads=4, points=4, seed=3)
    kernel, ref = _perturbed_copies(attn)
    query, value = torch.randn(8, 64, 64), torch.randn(8, 256, 64)
    reference = torch.rand(8, 64, 2) * 1.2 - 0.1
    got, want = kernel(query, reference, value, (16, 16)), ref(query, reference, value, (16, 16))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_tokenizer_outputs_match_the_reference_path():
    """Through 8 deformable attentions and their LayerNorms, float32 rounding grows to ~3e-5
    on the Gaussians whichever path runs: the kernel path may differ from the float64 truth
    by no more than twice as much as the reference path does, and the decoded images agree
    within 1e-5."""
    model = gtok.build_tokenizer("tiny", seed=0).eval()
    model.quantize.embed.normal_(generator=torch.Generator().manual_seed(1))
    model.quantize.initted.fill_(1.0)
    kernel, ref = _perturbed_copies(model)
    assert {m.implementation for m in ref.modules() if isinstance(m, DeformableAttention)} == {
        "reference"
    }
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        got, want = kernel(images), ref(images)
        truth = copy.deepcopy(ref.gaussian_embed).double()(ref.encoder(images).double())
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.reconstruction, want.reconstruction, rtol=1e-5, atol=1e-5)
    for name, a, b, c in zip(truth._fields, got.gaussians, want.gaussians, truth, strict=True):
        err_kernel = (a.double() - c).abs().max().item()
        err_reference = (b.double() - c).abs().max().item()
        assert 0 < err_kernel <= 2 * err_reference + 1e-6, name
        assert err_kernel <= 1e-4 * max(c.abs().max().item(), 1.0), name


@pytest.mark.slow
def test_gaussian_embed_gradients_match_the_reference_path():
    """Training mode (the same dropout masks from the same seed), in float64: in float32 a
    rounding difference can flip a ReLU or a bilinear cell somewhere in the 30 layers, which
    moves a parameter's gradient by a few percent whichever path runs. Every parameter's and
    the feature map's gradient agree."""
    config = GaussianEmbedConfig(num_gaussians=64, z_dim=8)
    torch.manual_seed(0)
    kernel, ref = _perturbed_copies(GaussianEmbed(config).double().train())
    feature_map = torch.randn(3, 64, 16, 16, dtype=torch.float64)
    upstream = [torch.randn(3, 64, k, dtype=torch.float64) for k in (2, 2, 1, 8)]
    grads = []
    for model in (kernel, ref):
        x = feature_map.clone().requires_grad_()
        torch.manual_seed(11)
        g = model(x)
        assert g.features.dtype == torch.float64
        loss = sum((t.reshape(up.shape) * up).sum() for t, up in zip(g, upstream, strict=True))
        loss.backward()
        grads.append({"feature_map": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    for name, want in grads[1].items():
        got = grads[0][name]
        if want is None:
            assert got is None, name
            continue
        scale = max(want.abs().max().item(), 1e-6)
        assert (got - want).abs().max().item() <= 1e-9 * scale, name


def test_implementation_is_checked_and_a_trainable_fixed_offset_uses_the_reference():
    with pytest.raises(ValueError, match="implementation"):
        DeformableAttention(implementation="fast")
    with pytest.raises(ValueError, match="implementation"):
        set_implementation(DeformableAttention(), "fast")
    attn = _randomized(dim=8, heads=2, points=2, seed=2)
    attn.fixed_offsets.requires_grad_(True)
    out = attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2), torch.randn(1, 12, 8), (3, 4))
    out.sum().backward()
    assert attn.fixed_offsets.grad is not None
