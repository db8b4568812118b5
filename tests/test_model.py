"""The tokenizer model: blocks, encoder/decoder fidelity to the authors' modules, presets,
shapes, gradients, encode/decode vs forward, determinism."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import gtok
import gtok.model
from gtok.model.blocks import AdaptiveGroupNorm, depth_to_space
from gtok.model.config import PRESETS, TokenizerConfig, preset_config
from gtok.model.convert import official_keys
from gtok.model.decoder import Decoder
from gtok.model.encoder import Encoder

# The authors' module sizes (docs/design.md section 1).
AUTHORS_PARAMS = {
    "cifar": {"encoder": 10_532_672, "decoder": 13_182_851},
    "imagenet": {"encoder": 48_445_760, "decoder": 63_522_691},
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cnn(config: TokenizerConfig, out_channels: int) -> tuple[Encoder, Decoder]:
    """Encoder and decoder of `config` on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        encoder = Encoder(config.ch, config.ch_mult, config.num_res_blocks, out_channels)
        decoder = Decoder(config.ch, config.ch_mult, config.num_res_blocks, config.z_dim)
    return encoder, decoder


# ---------------------------------------------------------------- blocks


def test_depth_to_space_is_dcr_order_not_pixel_shuffle():
    c, h, w = 3, 2, 5
    x = torch.randn(2, 4 * c, h, w)
    out = depth_to_space(x, 2)
    assert out.shape == (2, c, 2 * h, 2 * w)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                # out[c, 2h+i, 2w+j] = in[(2i + j) * C + c]
                assert torch.equal(out[:, ch, i::2, j::2], x[:, (2 * i + j) * c + ch])
    assert not torch.equal(out, nn.PixelShuffle(2)(x))


def test_adaptive_group_norm_matches_hand_computation():
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(z_dim=3, channels=64)
    x, style = torch.randn(2, 64, 4, 4), torch.randn(2, 3, 5, 5)
    flat = style.flatten(2)
    n = flat.shape[-1]
    mean = flat.mean(-1)
    std = (((flat - mean[..., None]) ** 2).sum(-1) / (n - 1) + 1e-6).sqrt()  # unbiased
    groups = x.view(2, 32, -1)
    normed = (groups - groups.mean(-1, keepdim=True)) / (
        groups.var(-1, unbiased=False, keepdim=True) + 1e-6
    ).sqrt()
    expected = (
        norm.gamma(std)[:, :, None, None] * normed.view_as(x) + norm.beta(mean)[:, :, None, None]
    )
    torch.testing.assert_close(norm(x, style), expected)


# ---------------------------------------------------------------- fidelity to the authors


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_encoder_decoder_parameter_counts_equal_the_authors(preset):
    encoder, decoder = _cnn(PRESETS[preset], PRESETS[preset].embed_dim)
    counts = {"encoder": _count(encoder), "decoder": _count(decoder)}
    print(f"{preset}: {counts} (authors: {AUTHORS_PARAMS[preset]})")
    assert counts == AUTHORS_PARAMS[preset]


@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_encoder_decoder_state_dicts_match_the_authors_key_lists(preset):
    encoder, decoder = _cnn(PRESETS[preset], PRESETS[preset].embed_dim)
    shapes, _ = official_keys(preset)
    ours = {f"img_encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    ours |= {f"img_decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()}
    theirs = {k: v for k, v in shapes.items() if k.startswith(("img_encoder.", "img_decoder."))}
    assert ours == theirs


def test_encoder_and_decoder_sizes():
    config = PRESETS["cifar"]
    encoder = Encoder(32, (1, 2, 2), 1, 64)
    decoder = Decoder(32, (1, 2, 2), 1, config.z_dim)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    assert decoder(torch.randn(2, 3, 8, 8)).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- config


def test_config_round_trips_through_dict():
    for config in PRESETS.values():
        assert TokenizerConfig.from_dict(config.to_dict()) == config


def test_vq_presets_match_the_token_count_and_codebook_of_their_gaussian_preset():
    for name in ("tiny", "cifar", "imagenet"):
        gauss, vq = PRESETS[name], PRESETS[f"vq-{name}"]
        assert vq.kind == "vq" and gauss.kind == "gaussian"
        assert vq.num_tokens == gauss.num_tokens == gauss.num_gaussians
        assert (vq.codebook_size, vq.z_dim, vq.image_size) == (
            gauss.codebook_size,
            gauss.z_dim,
            gauss.image_size,
        )


def test_authors_presets_follow_the_design_table():
    cifar, imagenet = PRESETS["cifar"], PRESETS["imagenet"]
    assert (cifar.image_size, cifar.ch_mult, cifar.map_size, cifar.num_gaussians) == (
        32,
        (1, 2),
        16,
        64,
    )
    assert (cifar.z_dim, cifar.codebook_size) == (3, 1024)
    assert (imagenet.image_size, imagenet.ch_mult, imagenet.map_size) == (256, (1, 2, 2, 4), 32)
    assert (imagenet.num_gaussians, imagenet.z_dim, imagenet.codebook_size) == (256, 8, 1024)
    tiny = PRESETS["tiny"]
    assert (tiny.image_size, tiny.num_gaussians) == (64, 64)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 48}, "image_size 48 must be map_size 16"),
        ({"ch": 48}, "multiples of norm_groups 32"),
        ({"codebook_size": 70000}, "codebook_size must be an integer in [2, 65536], got 70000"),
        ({"kind": "vae"}, "kind must be"),
        ({"num_gaussians": 0}, "num_gaussians must be an integer in [1, 65536], got 0"),
        # bounds that keep a config file from building millions of modules or gigabytes
        ({"num_res_blocks": 100000}, "num_res_blocks must be an integer in [1, 16], got 100000"),
        ({"num_gaussians": 10**9}, "num_gaussians must be an integer in [1, 65536]"),
        ({"num_gaussians": 1e9}, "an integer in [1, 65536], got 1000000000.0"),
        ({"ch_mult": (1, 64)}, "ch * max(ch_mult) be at most 4096, got ch=128, ch_mult=(1, 64)"),
        ({"kmeans_iters": -1}, "kmeans_iters must be an integer in [0, 1000], got -1"),
        ({"num_rounds": 17}, "num_rounds must be an integer in [1, 16], got 17"),
        ({"scale_max_floor": 5.0}, "scale_max_floor <= scale_max_init"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ],
)
def test_config_rejects_bad_values_naming_them(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        preset_config("cifar", **overrides)


def test_unknown_preset_and_field_are_value_errors():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="unknown tokenizer config fields: channels"):
        preset_config("tiny", channels=3)
    with pytest.raises(ValueError, match="unknown tokenizer config fields: extra"):
        TokenizerConfig.from_dict({**PRESETS["tiny"].to_dict(), "extra": 1})


# ---------------------------------------------------------------- tokenizers


def _images(config: TokenizerConfig, batch: int, seed: int = 0) -> torch.Tensor:
    size = config.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


def _trained_once(preset: str) -> gtok.model.BaseTokenizer:
    """A tokenizer after one training forward (k-means has filled the codebook), in eval."""
    model = gtok.build_tokenizer(preset, seed=0)
    model(_images(model.config, 4, seed=1))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_shapes_of_every_preset(preset):
    config = PRESETS[preset]
    model = gtok.build_tokenizer(preset, seed=0)
    small = preset in ("tiny", "vq-tiny")
    batch = 2 if small else 1
    images = _images(config, batch)
    g = config.num_tokens
    if small:  # a training forward; the authors' sizes only run encode/decode, to stay fast
        out = model(images)
        assert out.reconstruction.shape == images.shape
        assert out.indices.shape == (batch, g) and out.indices.dtype == torch.int64
        assert out.commit_loss.shape == out.perplexity.shape == out.usage.shape == ()
        assert (out.gaussians is None) == (config.kind == "vq")
    model.eval()
    tokens = model.encode(images)
    assert tokens.indices.shape == (batch, g) and tokens.indices.dtype == torch.int64
    assert model.decode(tokens).shape == images.shape
    if config.kind == "gaussian":
        geometry = tokens.geometry
        assert geometry.shape == (batch, g, 5) and geometry.dtype == torch.float32
        assert geometry[..., :2].abs().max() <= 1
        assert geometry[..., 2:4].min() >= config.scale_min
        assert geometry[..., 2:4].max() <= config.scale_max_init
        assert geometry[..., 4].min() >= 0 and geometry[..., 4].max() <= torch.pi
    else:
        assert tokens.geometry is None


# The first self-attention of the first round sees the frozen all-zero instance features, so
# its values are just the value bias: the value rows of its in_proj_weight never get a gradient
# (the authors' model has the same dead weights), and while the biases are at their zero init
# neither do the rest of in_proj_weight, the output projection, or the LayerNorm after it.
_FIRST_ATTENTION = "gaussian_embed.layers.0.layers.0."
_NO_GRADIENT_AT_ZERO_BIAS = {
    _FIRST_ATTENTION + name
    for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "norm1.weight")
}


def _params_without_gradient(model: nn.Module, images: torch.Tensor) -> set[str]:
    model.zero_grad(set_to_none=True)
    out = model(images)
    (out.reconstruction.abs().mean() + 0.25 * out.commit_loss).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
def test_gradients_reach_every_trainable_parameter(preset):
    model = gtok.build_tokenizer(preset, seed=0)
    images = _images(model.config, 4)
    model(_images(model.config, 4, seed=1))  # k-means init, so codes differ
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.endswith(("instance_feature", "fixed_offsets")) for n in frozen)
    if preset == "vq-tiny":
        assert _params_without_gradient(model, images) == set()
        return
    assert _params_without_gradient(model, images) == _NO_GRADIENT_AT_ZERO_BIAS
    attention = model.gaussian_embed.layers[0].layers[0].self_attn
    with torch.no_grad():  # as after a first optimizer step
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    assert _params_without_gradient(model, images) == set()
    dim = model.config.gaussian_dim
    assert not attention.in_proj_weight.grad[2 * dim :].any()  # value rows: dead


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
def test_decode_of_encode_equals_the_forward_reconstruction_in_eval(preset):
    model = _trained_once(preset)
    images = _images(model.config, 3, seed=2)
    with torch.no_grad():
        out = model(images)
    tokens = model.encode(images)
    assert torch.equal(tokens.indices, out.indices)
    torch.testing.assert_close(model.decode(tokens), out.reconstruction, rtol=1e-5, atol=1e-5)
    if model.config.kind == "gaussian":
        g = out.gaussians
        expected = torch.cat([g.means, g.scales, g.rotations[..., None]], dim=-1)
        assert torch.equal(tokens.geometry, expected)


def test_decode_takes_stored_token_dtypes():
    """Token stores keep uint16 ids and float16 geometry: decode takes them as they are."""
    model = _trained_once("tiny")
    tokens = model.encode(_images(model.config, 2))
    stored = gtok.Tokens(tokens.indices.to(torch.uint16), tokens.geometry.half())
    expected = model.decode(gtok.Tokens(stored.indices.long(), stored.geometry.float()))
    assert torch.equal(model.decode(stored), expected)


@pytest.mark.parametrize("preset", ["tiny", "vq-tiny"])
def test_a_seed_makes_building_and_training_forwards_deterministic(preset):
    a, b = (gtok.build_tokenizer(preset, seed=3) for _ in range(2))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    outs = []
    for model in (a, b):
        torch.manual_seed(7)  # dropout and the codebook's k-means draw from torch's RNG
        outs.append(model(_images(model.config, 2)))
    assert torch.equal(outs[0].indices, outs[1].indices)
    torch.testing.assert_close(outs[0].reconstruction, outs[1].reconstruction, rtol=0, atol=1e-6)
    c = gtok.build_tokenizer(preset, seed=4)
    assert not torch.equal(c.encoder.conv_in.weight, a.encoder.conv_in.weight)


def test_bad_inputs_are_value_errors_naming_shapes():
    model = gtok.build_tokenizer("tiny", seed=0).eval()
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 64, 64\].*got \[2, 3, 32, 32\]"):
        model.encode(torch.zeros(2, 3, 32, 32))
    for preset in ("tiny", "vq-tiny"):  # an empty batch: one sentence, not a reshape error
        with pytest.raises(ValueError, match=r"empty batch \[0, 3, H, W\]; pass at least one"):
            gtok.build_tokenizer(preset, seed=0).eval().encode(torch.zeros(0, 3, 64, 64))
    indices = torch.zeros(2, 64, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"geometry must be \[2, 64, 5\], got None"):
        model.decode(gtok.Tokens(indices, None))
    with pytest.raises(ValueError, match=r"indices must be \[B, 64\], got \[2, 63\]"):
        model.decode(gtok.Tokens(indices[:, :63], torch.zeros(2, 63, 5)))
    with pytest.raises(
        ValueError, match=r"indices must be in \[0, 1024\), got values in \[0, 1024\]"
    ):
        model.decode(gtok.Tokens(indices.index_fill(1, torch.tensor([5]), 1024), None))
    with pytest.raises(ValueError, match="needs a 'gaussian' config"):
        gtok.model.GaussianTokenizer(PRESETS["vq-tiny"])


def test_build_tokenizer_applies_overrides_and_keeps_the_preset_name():
    model = gtok.build_tokenizer("vq-tiny", codebook_size=256)
    assert model.config.codebook_size == 256 and model.config.preset == "vq-tiny"
    assert model.quantize.embed.shape == (256, 8)
    assert isinstance(gtok.build_tokenizer(PRESETS["tiny"]), gtok.model.GaussianTokenizer)


@pytest.mark.subprocess
def test_importing_gtok_and_its_presets_is_cheap():
    code = (
        "import sys, gtok; gtok.PRESETS['tiny']; "
        "print(sorted(m for m in ('torch', 'taichi') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
