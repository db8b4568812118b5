"""Pixel metrics, checked against an independent implementation (scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gtok.metrics import psnr, ssim, to_uint8

SIZES = [(64, 64), (48, 80), (11, 11), (32, 32), (100, 37)]


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth colour gradients, a bright box and a dark disc (hard edges),
    and sensor-like noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack(
        [110 + 90 * np.sin(2.5 * xx + phase[c]) * np.cos(1.7 * yy - phase[c]) for c in range(3)],
        axis=-1,
    )
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] += 70
    img[(yy - 0.7) ** 2 + (xx - 0.3) ** 2 < 0.04] -= 80
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def distort(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    x = img.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0, 15, x.shape)
    elif kind == "blur":  # 3x3 box blur with edge replication
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(3) for j in range(3)) / 9
    elif kind == "quantize":
        x = np.round(x / 24) * 24
    elif kind == "shift":
        x = np.roll(x, 1, axis=1) * 0.9 + 12
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for h, w in SIZES:
        img = natural_image(rng, h, w)
        for kind in ("noise", "blur", "quantize", "shift"):
            out.append((img, distort(rng, img, kind)))
    return out


# ---------------------------------------------------------------- PSNR


def test_psnr_matches_scikit_image_per_image(pairs):
    for a, b in pairs:
        ours = psnr(as_batch([a]), as_batch([b]))
        assert ours.dtype == torch.float64 and ours.shape == (1,)
        ref = peak_signal_noise_ratio(a, b, data_range=255)
        assert ours.item() == pytest.approx(ref, abs=1e-10)


def test_psnr_is_per_image_in_a_batch(pairs):
    same_size = [p for p in pairs if p[0].shape == (64, 64, 3)]
    a = as_batch([p[0] for p in same_size])
    b = as_batch([p[1] for p in same_size])
    expected = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in same_size]
    np.testing.assert_allclose(psnr(a, b).numpy(), expected, rtol=0, atol=1e-10)
    # per-image average, not the PSNR of the pooled MSE
    pooled = 10 * math.log10(255**2 / np.mean((a.double() - b.double()).numpy() ** 2))
    assert psnr(a, b).mean().item() != pytest.approx(pooled, abs=1e-3)


def test_psnr_identical_images_policy():
    rng = np.random.default_rng(1)
    a = as_batch([natural_image(rng, 16, 16)])
    assert psnr(a, a).item() == 100.0
    assert psnr(a, a, max_db=None).item() == math.inf
    assert psnr(a, a, max_db=60.0).item() == 60.0
    # one value off by one level in 16x16x3: 10 log10(255^2 * 768) = 76.95 dB, below the cap
    b = a.clone()
    b[0, 0, 0, 0] ^= 1
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 * 768), abs=1e-12)


def test_psnr_rejects_floats_and_mismatched_shapes():
    a = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="to_uint8"):
        psnr(a.float(), a.float())
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:, :, :4])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        psnr(a[0], a[0])


def test_to_uint8_matches_png_quantization():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, -0.5, 0.2, 1 / 255 - 1])
    # round(clamp((x + 1) / 2, 0, 1) * 255), half to even: 0 -> 127.5 -> 128
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 64, 153, 0]
    rng = np.random.default_rng(3)
    values = rng.uniform(-1.2, 1.2, size=(2, 3, 9, 9)).astype(np.float32)
    expected = np.round(np.clip((values + 1) / 2, 0, 1) * 255).astype(np.uint8)
    out = to_uint8(torch.from_numpy(values))
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), expected)
    with pytest.raises(TypeError):
        to_uint8(out)


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("sample_covariance", [False, True])
def test_ssim_matches_scikit_image(pairs, sample_covariance):
    for a, b in pairs:
        ref = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=sample_covariance,
            data_range=255,
            channel_axis=-1,
        )
        exact = ssim(
            as_batch([a]), as_batch([b]), sample_covariance=sample_covariance, dtype=torch.float64
        )
        assert exact.shape == (1,) and exact.dtype == torch.float64
        assert exact.item() == pytest.approx(ref, abs=1e-9), a.shape
        fast = ssim(as_batch([a]), as_batch([b]), sample_covariance=sample_covariance)
        assert fast.dtype == torch.float32
        assert fast.item() == pytest.approx(ref, abs=1e-5), a.shape


def test_ssim_batched_equals_one_by_one(pairs):
    same_size = [p for p in pairs if p[0].shape == (48, 80, 3)]
    a = as_batch([p[0] for p in same_size])
    b = as_batch([p[1] for p in same_size])
    together = ssim(a, b)
    alone = torch.cat([ssim(a[i : i + 1], b[i : i + 1]) for i in range(len(same_size))])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    assert len(set(together.tolist())) == len(same_size)  # distinct distortions, distinct values


def test_ssim_identical_is_one_and_small_images_are_refused():
    rng = np.random.default_rng(2)
    a = as_batch([natural_image(rng, 20, 30)])
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, a, dtype=torch.float64).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :10, :], a[..., :10, :])
