"""Regression tests that keep the shipped model's geometry honest (docs/design.md section 1).

On the demo photographs (shipped in the repository), with the trained default model:
- the geometry carries information: replacing every image's geometry by the per-Gaussian
  mean over the images costs more than 2 dB of PSNR (5.3 dB when this test was written; a
  future `detach` of the geometry in training would make it about 0);
- the gradients the decoder's loss sends into means, scales and rotations through the Taichi
  rasterizer match those through the dense `gtok.kernels.reference` within 1e-5 relative;
- encode-time refinement gains PSNR on these photographs.
"""

from __future__ import annotations

import copy

import pytest
import torch

import gtok
from gtok.data import center_crop, decode_rgb, to_tensor
from gtok.demo import DEMO_PHOTOS
from gtok.kernels import rasterize, reference
from gtok.model.default import SHIPPED_MODEL_DIR
from gtok.model.tokenizer import Tokens

pytestmark = pytest.mark.skipif(
    not (SHIPPED_MODEL_DIR / "model.safetensors").is_file(),
    reason=f"the trained default model is not in this checkout ({SHIPPED_MODEL_DIR})",
)


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return gtok.load_tokenizer(SHIPPED_MODEL_DIR).eval()


@pytest.fixture(scope="module")
def photos(tok) -> torch.Tensor:
    """The 36 demo photographs, centre-cropped to the model's size: [36, 3, S, S] in [-1, 1]."""
    size = tok.config.image_size
    paths = sorted(DEMO_PHOTOS.glob("*.jpg"))
    assert len(paths) == 36
    return torch.stack([to_tensor(center_crop(decode_rgb(p.read_bytes()), size)[0]) for p in paths])


def _psnr(tok: torch.nn.Module, tokens: Tokens, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of the decoded tokens, on [0, 1] pixels."""
    with torch.inference_mode():
        decoded = tok.decode(tokens).clamp(-1, 1)
    mse = ((decoded - images) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


def test_mean_geometry_costs_more_than_2_db(tok, photos):
    with torch.inference_mode():
        tokens = tok.encode(photos)
    mean = tokens.geometry.mean(dim=0, keepdim=True).expand_as(tokens.geometry)
    own, averaged = _psnr(tok, tokens, photos), _psnr(tok, Tokens(tokens.indices, mean), photos)
    assert own - averaged > 2.0, (own, averaged)


def _geometry_grads(tok, tokens: Tokens, images: torch.Tensor, raster) -> list[torch.Tensor]:
    """Gradients of the mean L1 reconstruction loss w.r.t. means, scales and rotations."""
    g = tokens.geometry.detach()
    leaves = [t.clone().requires_grad_() for t in (g[..., 0:2], g[..., 2:4], g[..., 4])]
    features = tok.quantize.lookup(tokens.indices)
    size = tok.config.map_size
    rendered = raster(*leaves, features, size, size)
    loss = (tok.decoder(rendered) - images).abs().mean()
    return list(torch.autograd.grad(loss, leaves))


def test_model_gradients_match_the_reference(tok, photos):
    """In float64 (a copy of the model), so that what differs is the rasterizer alone: in
    float32 the decoder's backward turns the two rasterizers' rounding (1e-7) into 2e-5."""
    images = photos[:4]
    with torch.inference_mode():
        tokens = tok.encode(images)
    tokens = Tokens(tokens.indices.clone(), tokens.geometry.clone().double())
    model = copy.deepcopy(tok).double()
    got = _geometry_grads(model, tokens, images.double(), rasterize)
    want = _geometry_grads(model, tokens, images.double(), reference.rasterize)
    for name, a, b in zip(("means", "scales", "rotations"), got, want, strict=True):
        assert b.abs().max() > 0, name  # the geometry gets a gradient at all
        rel = float((a - b).norm() / b.norm())
        assert rel <= 1e-5, (name, rel)


def test_refinement_gains_on_the_demo_photos(tok, photos):
    images = photos[::6]  # the six photographs, one crop each
    with torch.inference_mode():
        plain = tok.encode(images)
        refined = tok.encode(images, refine_steps=10)
    assert _psnr(tok, refined, images) > _psnr(tok, plain, images) + 0.5
