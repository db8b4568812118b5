"""The training recipes (gtok.train.recipe): what each flag changes, per-preset defaults,
and that runs and models written before recipes existed keep their behaviour."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gtok.errors import GtokError
from gtok.model.blocks import group_norm
from gtok.model.config import PRESETS, TokenizerConfig
from gtok.model.quantizer import VectorQuantizer
from gtok.model.tokenizer import build_from_config
from gtok.train.config import TrainConfig, resume_conflicts, tokenizer_config, with_saved_recipe
from gtok.train.distributed import Dist
from gtok.train.losses import LeCam
from gtok.train.recipe import param_groups
from gtok.train.rundir import RunDir
from gtok.train.step import TrainStep


def _cfg(preset: str, **changes) -> TrainConfig:
    return TrainConfig(preset=preset, shards=("x",), steps=30, **changes)


def _restarted_used_codes(restart_used: bool) -> float:
    """Share of the codes used at a step that the step replaced, on a stationary batch of as
    many vectors as codes (the small presets' batch 16 x 64 for 1024 codes, scaled down)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 4, dead_threshold=2.0, restart_used=restart_used).train()
    x = torch.randn(1, 64, 4)
    shares = []
    for _ in range(6):
        before = vq.embed.clone()
        used = vq(x + 1e-3 * torch.randn_like(x)).indices.unique()
        replaced = (vq.embed[used] - before[used]).norm(dim=1) > 0.1
        shares.append(replaced.float().mean().item())
    return sum(shares[2:]) / 4


def test_used_codes_survive_when_restart_used_is_off():
    assert _restarted_used_codes(restart_used=True) > 0.5  # the authors' rule churns
    assert _restarted_used_codes(restart_used=False) == 0.0


def test_unused_codes_below_the_threshold_are_still_restarted():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, dead_threshold=2.0, restart_used=False).train()
    vq(torch.randn(1, 64, 2))  # k-means init
    vq(torch.full((1, 64, 2), 5.0))  # every vector at one point: 7 codes unused
    assert int((vq.cluster_size < 2.0).sum()) == 0  # the unused ones were restarted


def test_small_presets_default_to_the_small_recipe_and_the_authors_presets_keep_theirs():
    for preset in ("tiny", "vq-tiny"):
        resolved = _cfg(preset).resolve(None, 1)
        assert (resolved.recipe, resolved.embed_lr_scale) == ("small", 1.0)
        arch = tokenizer_config(_cfg(preset))
        assert not arch.restart_used_codes
        assert arch.dropout == (0.0 if preset == "tiny" else PRESETS[preset].dropout)
    for preset in ("cifar", "imagenet", "vq-cifar", "vq-imagenet"):
        assert _cfg(preset).resolve(None, 1).recipe == "authors"
        assert tokenizer_config(_cfg(preset)) == PRESETS[preset]


def test_recipe_can_be_chosen_and_model_overrides_win():
    assert tokenizer_config(_cfg("tiny", recipe="authors")) == PRESETS["tiny"]
    assert tokenizer_config(_cfg("cifar", recipe="small")).dropout == 0.0
    assert tokenizer_config(_cfg("tiny", model={"dropout": 0.2})).dropout == 0.2
    with pytest.raises(GtokError, match="recipe must be one of authors, small"):
        _cfg("tiny", recipe="fast")
    with pytest.raises(GtokError, match="embed_lr_scale must be positive"):
        _cfg("tiny", embed_lr_scale=0.0)


def test_small_recipe_model_has_no_dropout_in_gaussian_embed():
    model = build_from_config(tokenizer_config(_cfg("tiny")))
    drops = [m.p for m in model.gaussian_embed.modules() if isinstance(m, nn.Dropout)]
    drops += [
        m.dropout for m in model.gaussian_embed.modules() if isinstance(m, nn.MultiheadAttention)
    ]
    assert drops and set(drops) == {0.0}
    assert model.quantize.restart_used is False


def test_embed_lr_scale_sets_gaussian_embed_rate_through_the_schedule():
    cfg = _cfg("tiny", embed_lr_scale=0.25).resolve(None, 1)
    model = build_from_config(tokenizer_config(cfg))
    groups = param_groups(model, cfg.embed_lr_scale)
    embed_ids = {id(p) for p in model.gaussian_embed.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == embed_ids
    stepper = TrainStep(
        model, nn.Linear(1, 1), LeCam(), None, cfg, Dist(0, 1, torch.device("cpu")), "fp32"
    )
    stepper.set_lr(1e-3)
    rates = sorted(g["lr"] for g in stepper.opt_g.param_groups)
    assert rates == pytest.approx([2.5e-4, 1e-3])
    assert [g["lr"] for g in stepper.opt_d.param_groups] == pytest.approx([1e-3])
    assert len(param_groups(model, 1.0)) == 1


def test_models_saved_before_the_field_existed_load_with_the_old_rule():
    data = PRESETS["tiny"].to_dict()
    del data["restart_used_codes"], data["norm_groups"]
    old = TokenizerConfig.from_dict(data)
    assert old.restart_used_codes is True and old.norm_groups == 32


def test_one_channel_per_group_erases_the_colour_of_flat_images():
    """Why the small recipe changes `norm_groups`: at the small presets' width of 32
    channels, 32 groups make every GroupNorm an instance norm, and two flat images of
    different colours come out of it identical; with 8 groups (4 channels each) they differ."""
    torch.manual_seed(0)
    lift = nn.Conv2d(3, 32, 1)
    red = torch.tensor([0.8, -0.6, -0.6])[None, :, None, None].expand(1, 3, 8, 8)
    blue = torch.tensor([-0.5, -0.2, 0.6])[None, :, None, None].expand(1, 3, 8, 8)
    with torch.no_grad():
        for groups, erased in ((32, True), (8, False)):
            norm = group_norm(32, groups=groups)
            assert torch.allclose(norm(lift(red)), norm(lift(blue)), atol=1e-4) is erased


def test_small_recipe_uses_8_norm_groups_everywhere_at_the_same_size():
    for preset in ("tiny", "vq-tiny"):
        arch = tokenizer_config(_cfg(preset))
        assert arch.norm_groups == 8
        model, authors = build_from_config(arch), build_from_config(PRESETS[preset])
        assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {8}
        assert {m.num_groups for m in authors.modules() if isinstance(m, nn.GroupNorm)} == {32}
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert shapes == {k: v.shape for k, v in authors.state_dict().items()}


def test_norm_groups_must_divide_every_normalized_width():
    with pytest.raises(ValueError, match="multiples of norm_groups 24"):
        PRESETS["tiny"].replace(norm_groups=24)
    with pytest.raises(ValueError, match="norm_groups must be"):
        PRESETS["tiny"].replace(norm_groups=0)
    assert PRESETS["cifar"].replace(norm_groups=16).norm_groups == 16


def test_runs_saved_before_recipes_resume_with_the_authors_recipe(tmp_path):
    old = _cfg("tiny").resolve(None, 1).to_dict()
    for name in ("recipe", "embed_lr_scale"):
        del old[name]
    old_arch = PRESETS["tiny"].to_dict()
    del old_arch["restart_used_codes"]
    run = RunDir(tmp_path)
    run.settings_path.write_text(json.dumps({"settings": {**old, "architecture": old_arch}}))
    cfg = with_saved_recipe(_cfg("tiny"), run.saved_settings())
    assert cfg.recipe == "authors"
    current = {**cfg.resolve(None, 1).to_dict(), "architecture": tokenizer_config(cfg).to_dict()}
    assert resume_conflicts({**old, "architecture": old_arch}, current) == []
    assert with_saved_recipe(_cfg("tiny"), None).recipe is None  # a new run
    assert with_saved_recipe(_cfg("tiny", recipe="small"), old).recipe == "small"
    fresh = {**_cfg("tiny").resolve(None, 1).to_dict()}
    assert with_saved_recipe(_cfg("tiny"), fresh).recipe is None
