"""Pixel metrics, Frechet distance, codebook and geometry statistics, metric availability.

Checked against independent implementations: scikit-image (PSNR, SSIM), scipy's sqrtm (the
Frechet distance as pytorch-fid computes it), numpy (covariances, histograms) and closed forms.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gtok import GtokError
from gtok.metrics import (
    FeatureStats,
    Loaded,
    Unavailable,
    code_counts,
    codebook_stats,
    frechet_distance,
    geometry_stats,
    load_inception,
    load_lpips,
    load_stats,
    metric_availability,
    psnr,
    save_stats,
    ssim,
    to_uint8,
    try_load,
)
from gtok.metrics.geometry import GEOMETRY_KEYS, summary_caption, training_summary

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


# ---------------------------------------------------------------- Frechet distance


def scipy_frechet(mu1, s1, mu2, s2):
    """pytorch-fid's computation (scipy.linalg.sqrtm)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    d = 12
    mu = rng.normal(size=d)
    sigma = random_cov(rng, d)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # same covariance, shifted means: ||mu1 - mu2||^2
    shift = rng.normal(size=d)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    # diagonal covariances: ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = shift @ shift + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu, np.diag(a), mu + shift, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # the same in a rotated basis (commuting, non-diagonal covariances)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = frechet_distance(q @ mu, q @ np.diag(a) @ q.T, q @ (mu + shift), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


@pytest.mark.parametrize(("n", "d"), [(600, 64), (2000, 256), (50, 64)])
def test_frechet_matches_scipy_sqrtm_on_random_features(n, d):
    rng = np.random.default_rng(n + d)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = np.maximum(rng.normal(size=(n, d)) @ mix, 0)  # post-ReLU-like, correlated
    f2 = np.maximum(rng.normal(size=(n, d)) @ mix * 1.1 + 0.05, 0)
    m1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    m2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    ref = scipy_frechet(m1, s1, m2, s2)
    # n < d: singular covariances, where sqrtm itself is only accurate to ~1e-7
    rel = 1e-9 if n > d else 1e-5
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=rel)


def test_frechet_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def test_feature_stats_streams_mean_and_covariance(tmp_path):
    rng = np.random.default_rng(5)
    feats = rng.normal(loc=30.0, scale=2.0, size=(257, 16)) @ rng.normal(size=(16, 16))
    stats = FeatureStats(16)
    for start, stop in ((0, 1), (1, 100), (100, 257)):
        stats.update(torch.from_numpy(feats[start:stop]).float())  # float32 in, float64 inside
    mu, sigma = stats.mean_cov()
    f32 = feats.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-8, atol=1e-8)
    assert stats.n == 257
    # shards merge to the same statistics
    left, right = FeatureStats(16), FeatureStats(16)
    left.update(f32[:120])
    right.update(f32[120:])
    left.merge(right)
    np.testing.assert_allclose(left.mean_cov()[1], sigma, rtol=1e-10, atol=1e-10)
    # pytorch-fid's .npz statistics round-trip
    save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        stats.update(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(16).mean_cov()
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(GtokError, match="not an FID statistics file"):
        load_stats(tmp_path / "bad.npz")


# ---------------------------------------------------------------- codebook


def test_code_counts_match_a_plain_histogram():
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 50, size=(7, 64)).astype(np.uint16)  # the store's dtype
    counts = code_counts(idx, 64)
    plain = Counter(idx.ravel().tolist())
    assert counts.shape == (64,) and counts.dtype == np.int64
    assert counts.tolist() == [plain.get(k, 0) for k in range(64)]
    np.testing.assert_array_equal(code_counts(torch.from_numpy(idx.astype(np.int64)), 64), counts)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        code_counts(idx, 32)
    with pytest.raises(TypeError):
        code_counts(np.array([0.5]), 4)


def test_codebook_stats_closed_forms():
    uniform = codebook_stats(np.full(1024, 3))
    assert uniform.usage == 1.0 and uniform.used == 1024 and uniform.tokens == 3072
    assert uniform.entropy_bits == pytest.approx(10.0, abs=1e-12)
    assert uniform.perplexity == pytest.approx(1024.0, rel=1e-12)
    single = codebook_stats([0, 0, 5, 0])
    assert (single.usage, single.entropy_bits, single.perplexity) == (0.25, 0.0, 1.0)
    mixed = codebook_stats([1, 1, 2, 0])  # p = 1/4, 1/4, 1/2
    assert mixed.entropy_bits == pytest.approx(1.5, abs=1e-12)
    assert mixed.perplexity == pytest.approx(2**1.5, rel=1e-12)
    assert mixed.usage == 0.75
    assert mixed.to_dict()["used"] == 3
    with pytest.raises(ValueError, match="no tokens"):
        codebook_stats([0, 0])


# ---------------------------------------------------------------- geometry


def test_geometry_stats_known_values():
    # two images, two Gaussians each: (mean_x, mean_y, scale_x, scale_y, rotation)
    geometry = np.array(
        [
            [[-0.9, -0.9, 1.0, 2.0, 0.0], [0.9, 0.9, 3.0, 3.0, 1.0]],
            [[-0.9, -0.9, 2.0, 1.0, 2.0], [0.1, -0.6, 0.5, 2.0, 3.0]],
        ],
        dtype=np.float32,
    )
    s = geometry_stats(torch.from_numpy(geometry), grid=4)
    assert (s.images, s.gaussians_per_image, s.grid) == (2, 2, 4)
    assert s.scale_major.mean == pytest.approx((2 + 3 + 2 + 2) / 4)
    assert s.scale_minor.mean == pytest.approx((1 + 3 + 1 + 0.5) / 4)
    assert s.anisotropy.mean == pytest.approx((2 + 1 + 2 + 4) / 4)
    assert s.scale.mean == pytest.approx(14.5 / 8)
    assert s.rotation.p50 == pytest.approx(1.5)
    assert s.mean_x.std == pytest.approx(np.std([-0.9, 0.9, -0.9, 0.1]), rel=1e-6)
    # cells (row, col) of a 4x4 grid: (0,0), (3,3) | (0,0), (0,2): 3 distinct of 16
    assert s.coverage == pytest.approx(3 / 16)
    assert s.coverage_per_image == pytest.approx(2 / 16)
    assert s.to_dict()["scale"]["p50"] == pytest.approx(2.0)
    # Gaussian 0 stays at (-0.9, -0.9); Gaussian 1 moves by (0.8, 1.5): std sqrt(0.4^2 + 0.75^2)
    assert s.centre_movement == pytest.approx((0.0 + 0.85) / 2, rel=1e-6)
    summary = training_summary(s, map_size=16)
    assert summary["geo_movement_px"] == pytest.approx(0.425 * 8, rel=1e-6)
    assert summary["geo_rotation_std"] == pytest.approx(np.std([0.0, 1.0, 2.0, 3.0]), rel=1e-6)
    assert summary["geo_anisotropy_p50"] == pytest.approx(2.0)
    assert summary["geo_coverage"] == pytest.approx(2 / 16)
    assert list(summary) == list(GEOMETRY_KEYS)
    assert "centre movement 3.40 map px" in summary_caption(summary)


def test_geometry_percentiles_and_errors():
    g = np.zeros((1, 101, 5))
    g[0, :, 2] = np.arange(1, 102)
    g[0, :, 3] = np.arange(1, 102)
    s = geometry_stats(g)
    assert (s.scale_major.p1, s.scale_major.p50, s.scale_major.p99) == (2.0, 51.0, 100.0)
    assert s.coverage == pytest.approx(1 / 256)
    with pytest.raises(ValueError, match=r"\[N, G, 5\]"):
        geometry_stats(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="positive"):
        geometry_stats(np.zeros((1, 2, 5)))


# ---------------------------------------------------------------- availability


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GTOK_WEIGHTS", str(tmp_path / "gtok"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in (
        "GTOK_VGG16_WEIGHTS",
        "GTOK_LPIPS_WEIGHTS",
        "GTOK_ALEXNET_WEIGHTS",
        "GTOK_LPIPS_ALEX_WEIGHTS",
        "GTOK_INCEPTION_WEIGHTS",
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_missing_weights_are_reported_with_file_and_place(no_weights):
    hub = str(no_weights / "torch" / "hub" / "checkpoints")
    reasons = metric_availability()
    assert set(reasons) == {"lpips-vgg", "lpips-alex", "fid"}
    assert "vgg16-397923af.pth" in reasons["lpips-vgg"] and "vgg.pth" in reasons["lpips-vgg"]
    assert "alexnet-owt-7be5be79.pth" in reasons["lpips-alex"]
    assert "pt_inception-2015-12-05-6726825d.pth" in reasons["fid"] and hub in reasons["fid"]
    result = try_load("fid")
    assert isinstance(result, Unavailable) and result.reason == reasons["fid"]
    with pytest.raises(GtokError, match=r"vgg16-397923af\.pth"):
        load_lpips("vgg")
    with pytest.raises(GtokError, match="GTOK_INCEPTION_WEIGHTS"):
        load_inception()
    with pytest.raises(ValueError, match="unknown metric"):
        try_load("clip")


def test_one_metric_loads_while_the_others_stay_unavailable(no_weights):
    from test_metrics_nets import ALEX_HEAD, ALEXNET, deterministic_state

    folder = no_weights / "gtok"
    folder.mkdir()
    torch.save(deterministic_state(ALEXNET, 1), folder / "alexnet-owt-7be5be79.pth")
    torch.save(deterministic_state(ALEX_HEAD, 2), folder / "alex.pth")
    (folder / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not a checkpoint")
    reasons = metric_availability()
    assert reasons["lpips-alex"] is None and reasons["fid"] is None  # files exist
    loaded = try_load("lpips-alex")
    assert isinstance(loaded, Loaded)
    assert loaded.files["alexnet"] == folder / "alexnet-owt-7be5be79.pth"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loaded.model(x, x.flip(-1)).shape == (2,)
    broken = try_load("fid")
    assert isinstance(broken, Unavailable) and "Could not read" in broken.reason
    assert isinstance(try_load("lpips-vgg"), Unavailable)
    explicit = try_load("lpips-alex", paths={"lpips-alex": no_weights / "nowhere.pth"})
    assert isinstance(explicit, Unavailable) and "was not found" in explicit.reason
