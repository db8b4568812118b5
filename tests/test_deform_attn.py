"""DeformableAttention against a naive per-point loop with hand-written bilinear sampling."""

import math

import pytest
import torch

from gtok.model.deform_attn import DeformableAttention


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
