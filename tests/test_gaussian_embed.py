"""GaussianEmbed: parameter counts, shapes and ranges, gradients, the scale-range scheduler."""

import dataclasses
import math
import re

import pytest
import torch

from gtok.model.gaussian_embed import (
    GaussianEmbed,
    GaussianEmbedConfig,
    Refine,
    ScaleRange,
    pixel_centres,
    sine_position_embedding,
)

CIFAR = GaussianEmbedConfig(num_gaussians=64, z_dim=3)  # 16x16 map
IMAGENET = GaussianEmbedConfig(num_gaussians=256, z_dim=8)  # 32x32 map


def build(config: GaussianEmbedConfig, seed: int = 0) -> GaussianEmbed:
    torch.manual_seed(seed)
    return GaussianEmbed(config)


@pytest.mark.parametrize(
    ("name", "config", "total", "trainable"),
    [("cifar", CIFAR, 760_084, 755_972), ("imagenet", IMAGENET, 785_950, 769_550)],
)
def test_parameter_counts_equal_the_authors(name, config, total, trainable):
    """The authors' GaussianEmbed as used in the forward pass (their unused template ops and
    unused feature heads left out), counting the frozen instance features and fixed offsets."""
    model = build(config)
    got_total = sum(p.numel() for p in model.parameters())
    got_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{name}: GaussianEmbed {got_total} (authors {total}), trainable {got_trainable} "
          f"(authors {trainable})")  # fmt: skip
    assert (got_total, got_trainable) == (total, trainable)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "gaussian_lifter.instance_feature" in frozen
    assert all(n.endswith("fixed_offsets") or "instance_feature" in n for n in frozen)
    assert len(frozen) == 1 + 8  # 2 encoder + 3 rounds x 2 decoder deformable attentions


@pytest.mark.parametrize(("config", "size", "batch"), [(CIFAR, 16, 2), (IMAGENET, 32, 1)])
def test_shapes_and_ranges(config, size, batch):
    model = build(config).eval()
    feature_map = torch.randn(batch, 64, size, size)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        g = model(feature_map.bfloat16())
    num, z = config.num_gaussians, config.z_dim
    assert g.means.shape == (batch, num, 2) and g.scales.shape == (batch, num, 2)
    assert g.rotations.shape == (batch, num) and g.features.shape == (batch, num, z)
    assert all(t.dtype == torch.float32 for t in g)
    assert g.means.abs().max() <= 1.0
    assert g.scales.min() >= 0.1 and g.scales.max() <= 4.0
    assert g.rotations.min() >= 0.0 and g.rotations.max() <= math.pi
    # every part of the output depends on the image
    g2 = model(torch.randn(batch, 64, size, size))
    for a, b in zip(g, g2, strict=True):
        assert not torch.allclose(a, b)


def test_gradients_reach_every_trainable_parameter():
    """At the exact init point the first decoder layer of round 0 attends among all-zero
    instance features with all-zero biases, so its self-attention weights and norm1 get an
    exactly zero gradient (so do the authors'); a few optimizer steps make the biases nonzero.
    We test at such a point: every trainable parameter perturbed a little."""
    model = build(CIFAR).train()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    g = model(torch.randn(2, 64, 16, 16, requires_grad=True))
    loss = sum((t * torch.randn_like(t)).sum() for t in g)
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or torch.count_nonzero(p.grad) == 0)
    ]
    assert missing == []
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_determinism_with_a_seed():
    a, b = build(CIFAR, seed=3), build(CIFAR, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.randn(2, 64, 16, 16)
    outs = []
    for model in (a, b):
        torch.manual_seed(11)  # dropout masks
        outs.append(model.train()(x))
    for ta, tb in zip(*outs, strict=True):
        assert torch.equal(ta, tb)
    assert not torch.equal(build(CIFAR, seed=4).gaussian_lifter.anchor, a.gaussian_lifter.anchor)


def test_anchor_init_quirk_and_frozen_instance_features():
    anchor = build(CIFAR).gaussian_lifter.anchor.detach()
    assert anchor.shape == (64, 69)
    assert torch.count_nonzero(anchor[:, 4]) == 0  # scale_y logit
    limit = math.log(0.9999 / 1e-4) + 1e-4
    for col in range(4):  # xy, rotation, scale_x: logit(U(0, 1)), spread out
        assert anchor[:, col].abs().max() <= limit and anchor[:, col].std() > 0.5
    assert abs(anchor[:, 5:].std().item() - 1.0) < 0.1
    inst = build(CIFAR).gaussian_lifter.instance_feature
    assert not inst.requires_grad and torch.count_nonzero(inst) == 0


def test_sine_position_embedding_formula():
    h, w, dim = 3, 5, 64
    pos = sine_position_embedding(h, w, dim)
    assert pos.shape == (1, h * w, dim)
    for i, j, c in [(0, 0, 0), (2, 4, 7), (1, 3, 30), (2, 1, 33), (1, 4, 62), (0, 2, 45)]:
        axis_len, k, ch = (h, i + 1, c) if c < 32 else (w, j + 1, c - 32)  # y channels first
        t = (k - 0.5) / (axis_len + 1e-6) * 2 * math.pi
        angle = t / 10000 ** (2 * (ch // 2) / 32)
        want = math.sin(angle) if ch % 2 == 0 else math.cos(angle)
        assert pos[0, i * w + j, c].item() == pytest.approx(want, abs=1e-6)


def test_pixel_centres():
    ref = pixel_centres(2, 4)
    torch.testing.assert_close(ref[0, 0], torch.tensor([0.125, 0.25]))  # (x, y) of (0, 0)
    torch.testing.assert_close(ref[0, 6], torch.tensor([0.625, 0.75]))  # row 1, column 2


def test_refine_adds_xy_and_replaces_the_rest():
    refine = Refine(CIFAR)
    with torch.no_grad():
        refine.layers[-1].scale.zero_()  # the MLP now outputs zeros
    anchor = torch.randn(2, 5, 69)
    out = refine(torch.randn(2, 5, 64), torch.randn(2, 5, 64), anchor)
    torch.testing.assert_close(out[..., :2], anchor[..., :2])
    assert torch.count_nonzero(out[..., 2:]) == 0


def scheduler_by_hand(r_max: float, ema: float, mean_scale: float) -> tuple[float, float]:
    ema = 0.01 * mean_scale + 0.99 * ema
    if r_max > 3.0:
        r_max = max(r_max - 1e-3 * max(ema - (r_max + 0.1) / 2, 0.01), 3.0)
    return r_max, ema


def test_scale_range_scheduler_matches_hand_computation():
    config = GaussianEmbedConfig(num_gaussians=64, z_dim=3, dropout=0.0)
    model = build(config)
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        before = model.eval()(x)
    r_max, ema = 4.0, 2.05
    assert model.scale_range.r_max.item() == r_max
    assert model.scale_range.ema.item() == pytest.approx(ema)
    model.train()
    with torch.no_grad():
        for step in range(3):
            g = model(x)
            if step == 0:  # scales come from r_max before this step's update
                torch.testing.assert_close(g.scales, before.scales)
            r_max, ema = scheduler_by_hand(r_max, ema, g.scales.double().mean().item())
            assert model.scale_range.ema.item() == pytest.approx(ema, abs=1e-6)
            assert model.scale_range.r_max.item() == pytest.approx(r_max, abs=1e-6)
    assert r_max < 4.0


def test_scale_range_floor_and_small_steps():
    sr = ScaleRange(0.1, 4.0, 3.0)
    sr.r_max.fill_(3.0004)
    sr.step(torch.tensor(3.9))  # ema 2.0685, midpoint 1.5502: shrink 5.2e-4 > 4e-4 to the floor
    assert sr.r_max.item() == 3.0
    sr.step(torch.tensor(3.9))
    assert sr.r_max.item() == 3.0  # stays at the floor
    assert sr.ema.item() == pytest.approx(0.99 * (0.99 * 2.05 + 0.039) + 0.039, abs=1e-6)
    sr = ScaleRange(0.1, 4.0, 3.0)
    sr.step(torch.tensor(0.1))  # ema far below the midpoint: the minimum step 1e-3 * 0.01
    assert sr.r_max.item() == pytest.approx(4.0 - 1e-5, abs=1e-7)
    torch.testing.assert_close(sr(torch.tensor([-100.0, 0.0, 100.0])),
                               torch.tensor([0.1 + 1e-4 * (3.99999 - 0.1), 2.049995,
                                             0.1 + 0.9999 * (3.99999 - 0.1)]))  # fmt: skip


def test_eval_does_not_change_r_max_and_state_round_trip():
    model = build(CIFAR).train()
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        model(x)
        state = model.scheduler_state()
        model.eval()
        model(x)
    assert all(torch.equal(v, state[k]) for k, v in model.scheduler_state().items())
    assert state["r_max"].item() < 4.0 and state["ema"].item() != pytest.approx(2.05)
    # r_max is saved with the weights, the ema only through scheduler_state
    keys = model.state_dict().keys()
    assert "layers.8.range_scheduler.current_range_max" in keys
    assert "layers.8.range_scheduler.ema" not in keys
    other = build(CIFAR, seed=1)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.scale_range.r_max, state["r_max"])
    assert other.scale_range.ema.item() == pytest.approx(2.05)
    other.load_scheduler_state(state)
    assert torch.equal(other.scale_range.ema, state["ema"])
    with pytest.raises(ValueError, match="r_max and ema"):
        other.load_scheduler_state({"r_max": state["r_max"]})


def test_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match="dim"):
        GaussianEmbedConfig(num_gaussians=8, z_dim=3, dim=48, num_heads=4)
    with pytest.raises(ValueError, match="scale_min"):
        GaussianEmbedConfig(num_gaussians=8, z_dim=3, scale_max_floor=5.0)
    with pytest.raises(ValueError, match="num_gaussians"):
        GaussianEmbedConfig(num_gaussians=0, z_dim=3)
    model = build(GaussianEmbedConfig(num_gaussians=4, z_dim=3))
    with pytest.raises(ValueError, match="feature map"):
        model(torch.randn(1, 32, 8, 8))


@pytest.mark.parametrize("preset", ["cifar", "imagenet", "tiny"])
def test_embed_config_from_the_model_config_takes_every_setting(preset):
    from gtok.model.config import EMBED_NAMES, PRESETS

    model = PRESETS[preset].replace(rotation_param="direction", anisotropic_init=True)
    embed = GaussianEmbedConfig.from_model(model)
    for field in dataclasses.fields(embed):
        assert getattr(embed, field.name) == getattr(model, EMBED_NAMES.get(field.name, field.name))
    assert (embed.in_dim, embed.dim) == (model.embed_dim, model.gaussian_dim)


@pytest.mark.parametrize(
    ("embed_changes", "model_changes", "problem"),
    [
        ({"dim": 36}, {"gaussian_dim": 36}, "of num_heads and of 4 (sine position embedding)"),
        ({"dim": 6, "norm_groups": 2}, {"gaussian_dim": 6}, "got {dim}=6, num_heads=4"),
        ({"num_rounds": 0}, {"num_rounds": 0}, "num_rounds must be an integer in [1, 16], got 0"),
        ({"scale_min": 5.0}, {"scale_min": 5.0}, "need 0 < scale_min < scale_max_floor"),
        ({"rotation_param": "x"}, {"rotation_param": "x"}, "rotation_param must be one of"),
    ],
)
def test_one_check_refuses_a_bad_embed_in_either_config(embed_changes, model_changes, problem):
    """The tokenizer config is refused for what its GaussianEmbed would refuse (it used to
    accept a width that only building the model refused), naming its own fields."""
    from gtok.model.config import PRESETS

    with pytest.raises(ValueError, match=re.escape(problem.format(dim="dim"))):
        dataclasses.replace(CIFAR, **embed_changes)
    small_groups = {"norm_groups": 2, "ch": 32} if "norm_groups" in embed_changes else {}
    with pytest.raises(ValueError, match=re.escape(problem.format(dim="gaussian_dim"))):
        PRESETS["cifar"].replace(**small_groups, **model_changes)
