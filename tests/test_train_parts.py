"""The pieces of `gtok train` that need no model: discriminator, losses, EMA, schedule,
settings, atomic writes, checkpoint rotation and the Gaussian ellipse drawing."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from gtok.errors import GtokError
from gtok.outputs import AtomicFile, is_temporary
from gtok.train.checkpoints import CheckpointDir
from gtok.train.config import TrainConfig, resume_conflicts, tokenizer_config
from gtok.train.discriminator import PatchDiscriminator
from gtok.train.ema import ModelEMA
from gtok.train.losses import LeCam, generator_loss, hinge_d_loss, l1_loss
from gtok.train.schedule import WARMUP_START_LR, lr_at
from gtok.viz import comparison_rows, ellipse_points


def test_discriminator_has_the_authors_parameter_count():
    disc = PatchDiscriminator()
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert all(abs(c.weight.std().item() - 0.02) < 0.004 for c in convs[1:])


def test_hinge_and_generator_losses_match_their_formulas():
    real = torch.tensor([[[[2.0, 0.5]]], [[[-1.0, 0.0]]]])  # [2, 1, 1, 2]
    fake = torch.tensor([[[[-3.0, 0.5]]], [[[1.0, -0.5]]]])
    # relu(1 - real) = [0, .5, 2, 1] -> mean .875; relu(1 + fake) = [0, 1.5, 2, .5] -> 1.0
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.0))
    # per-image means -1.25 and 0.25; softplus(x) = log(1 + e^x)
    expected = (math.log1p(math.exp(1.25)) + math.log1p(math.exp(-0.25))) / 2
    assert generator_loss(fake).item() == pytest.approx(expected)
    assert l1_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0


def test_lecam_updates_its_averages_before_the_penalty():
    lecam = LeCam(decay=0.999)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    penalty = lecam(real, fake)
    ema_real, ema_fake = 0.001 * 2.0, 0.001 * -1.0  # from 0, after this batch
    assert lecam.ema_real.item() == pytest.approx(ema_real)
    assert lecam.ema_fake.item() == pytest.approx(ema_fake)
    by_hand = np.mean(np.maximum(np.array([1.0, 3.0]) - ema_fake, 0) ** 2) + np.mean(
        np.maximum(ema_real - np.array([-2.0, 0.0]), 0) ** 2
    )
    assert penalty.item() == pytest.approx(by_hand)
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}


def test_ema_averages_parameters_from_step_one_and_copies_buffers():
    model = nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 3.0))
    assert torch.equal(ema.module.running_mean, torch.full((3,), 5.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_schedule_warms_up_linearly_then_decays_to_zero():
    base, warmup, total = 2e-4, 10, 110
    assert lr_at(0, base, warmup, total) == WARMUP_START_LR
    assert lr_at(5, base, warmup, total) == pytest.approx(WARMUP_START_LR + (base - 1e-6) / 2)
    assert lr_at(10, base, warmup, total) == pytest.approx(base)
    assert lr_at(60, base, warmup, total) == pytest.approx(base / 2)
    assert lr_at(110, base, warmup, total) == pytest.approx(0.0, abs=1e-15)
    decay = [lr_at(s, base, warmup, total) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert lr_at(0, base, 0, total) == base  # no warm-up


def test_settings_resolve_per_preset():
    cifar = TrainConfig(preset="cifar", shards=("x",), steps=300).resolve(None, 1)
    assert (cifar.optimizer, cifar.betas, cifar.weight_decay) == ("adamw", (0.9, 0.999), 0.01)
    assert (cifar.warmup_steps, cifar.gan_start_step, cifar.augment) == (10, 50, False)
    imagenet = TrainConfig(preset="imagenet", shards=("x",), steps=300).resolve(None, 1)
    assert (imagenet.optimizer, imagenet.betas, imagenet.weight_decay) == ("adam", (0.5, 0.9), 0)
    assert imagenet.augment is True
    by_epochs = TrainConfig(preset="tiny", shards=("x",), epochs=2, batch_size=8)
    assert by_epochs.resolve(100, world_size=2).steps == math.ceil(2 * 100 / 16)
    assert by_epochs.resolve(100, world_size=2).epochs is None
    with pytest.raises(GtokError, match="exactly one of steps and epochs"):
        TrainConfig(preset="tiny", shards=("x",))
    with pytest.raises(GtokError, match="lr must be positive"):
        TrainConfig(preset="tiny", shards=("x",), steps=1, lr=0)


def test_image_size_scales_the_map_and_bad_overrides_are_errors():
    arch = tokenizer_config(TrainConfig(preset="tiny", shards=("x",), steps=1, image_size=32))
    assert (arch.image_size, arch.map_size) == (32, 8)
    with pytest.raises(GtokError, match="not a multiple of 4"):
        tokenizer_config(TrainConfig(preset="tiny", shards=("x",), steps=1, image_size=30))
    with pytest.raises(GtokError, match="Unknown preset"):
        tokenizer_config(TrainConfig(preset="huge", shards=("x",), steps=1))


def test_resume_conflicts_name_what_changed_and_ignore_how_it_runs():
    a = TrainConfig(preset="tiny", shards=("x",), steps=10).to_dict()
    b = TrainConfig(preset="tiny", shards=("x",), steps=10, lr=1e-3, workers=7).to_dict()
    assert resume_conflicts(a, b) == ["lr: 0.0002 -> 0.001"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = CheckpointDir(tmp_path / "checkpoints")
    folder.save({"w": torch.ones(3)}, 1, keep_last=2)

    def dies_halfway(obj, handle):
        handle.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # what a kill mid-write would leave behind, plus an exception

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        folder.save({"w": torch.zeros(3)}, 2, keep_last=2)
    monkeypatch.undo()
    assert folder.steps() == [1]
    assert torch.equal(folder.load_latest()["w"], torch.ones(3))
    assert list(folder.folder.iterdir()) == [folder.path(1)]


@pytest.mark.subprocess
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """A writer that saves ~8 MB states in a loop is killed at several moments; every time
    the newest complete state loads and leftovers are cleaned."""
    script = textwrap.dedent(
        f"""
        import torch
        from gtok.train.checkpoints import CheckpointDir
        folder = CheckpointDir({str(tmp_path / "ck")!r})
        step = 0
        while True:
            step += 1
            folder.save({{"step": step, "w": torch.full((2_000_000,), float(step))}}, step, 2)
            print(step, flush=True)
        """
    )
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # at least one state is complete
        assert first.strip()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        folder = CheckpointDir(tmp_path / "ck")
        state = folder.load_latest()
        assert state is not None
        assert torch.equal(state["w"], torch.full((2_000_000,), float(state["step"])))
        for step in folder.steps():  # no half-written file under a final name
            assert torch.load(folder.path(step), weights_only=True)["step"] == step
        folder.remove_stale()
        assert not [p for p in (tmp_path / "ck").iterdir() if is_temporary(p.name)]


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path):
    folder = CheckpointDir(tmp_path)
    for step in (1, 2, 3, 4, 5):
        folder.save({"step": step}, step, keep_last=2)
        if step == 2:
            folder.mark_best(2, 30.0)
    assert folder.steps() == [2, 4, 5]
    assert folder.best() == {"step": 2, "psnr": 30.0}
    assert torch.load(folder.path(5), weights_only=True) == {"step": 5}
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 2


def test_atomic_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "state.pt"
    for value in (1, 2):
        with AtomicFile(path, durable=True) as handle:
            torch.save({"a": value}, handle)
    assert torch.load(path, weights_only=True) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def _covariance(sx: float, sy: float, theta: float) -> np.ndarray:
    """docs/design.md section 1, step 5, written out: Sigma_xx, Sigma_yy, Sigma_xy."""
    c, s = math.cos(theta), math.sin(theta)
    xx = c * c * sx * sx + s * s * sy * sy
    yy = s * s * sx * sx + c * c * sy * sy
    xy = c * s * (sy * sy - sx * sx)
    return np.array([[xx, xy], [xy, yy]])


@pytest.mark.parametrize("theta", [0.0, 0.4, 1.3, 2.9])
def test_ellipse_outline_is_the_two_sigma_contour_of_the_rasterized_gaussian(theta):
    means = torch.tensor([[0.25, -0.5]])
    scales = torch.tensor([[2.0, 0.5]])
    points = ellipse_points(means, scales, torch.tensor([theta]), (16, 16), (64, 64), sigmas=2)
    # back to map pixels: u = (p + 0.5) / 4 - 0.5; centre ((x + 1) / 2 * W, (y + 1) / 2 * H)
    map_points = (points[0] + 0.5) / 4 - 0.5
    d = map_points - np.array([(0.25 + 1) / 2 * 16, (-0.5 + 1) / 2 * 16])
    inv = np.linalg.inv(_covariance(2.0, 0.5, theta))
    mahalanobis_sq = np.einsum("pi,ij,pj->p", d, inv, d)
    assert np.allclose(mahalanobis_sq, 4.0)


def test_comparison_rows_enlarge_and_draw():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    geometry = (torch.zeros(2, 3, 2), torch.ones(2, 3, 2), torch.zeros(2, 3))
    rows = comparison_rows(images, images, geometry, torch.zeros(2, 3), (4, 4), 64)
    assert len(rows) == 2 and [im.size for im in rows[0]] == [(64, 64)] * 3
    assert rows[0][2].tobytes() != rows[0][1].tobytes()  # ellipses were drawn


def test_validation_and_sample_grid_report_the_geometry(tmp_path):
    from PIL import Image
    from shardmaker import write_clean_shards

    import gtok
    from gtok.data import expand_shards
    from gtok.metrics.geometry import GEOMETRY_KEYS, geometry_stats, training_summary
    from gtok.train.distributed import Dist
    from gtok.train.validate import evaluate, first_images, save_samples

    torch.manual_seed(0)
    small = {"num_gaussians": 8, "codebook_size": 64, "num_rounds": 1, "ffn_dim": 64}
    model = gtok.build_tokenizer("tiny", image_size=32, map_size=8, **small).eval()
    shards = expand_shards(write_clean_shards(tmp_path, 1, 6))
    dist = Dist(0, 1, torch.device("cpu"))
    metrics, _ = evaluate(model, shards, 32, 4, 6, dist)
    assert metrics["images"] == 6 and set(GEOMETRY_KEYS) <= set(metrics)
    pixels = first_images(shards, 32, 6)
    with torch.no_grad():
        geometry = model.encode(pixels.permute(0, 3, 1, 2).float() / 127.5 - 1).geometry
    expected = training_summary(geometry_stats(geometry), 8)
    assert all(metrics[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6) for k in expected)
    assert metrics["geo_movement_px"] > 0
    save_samples(model, pixels[:2], dist.device, tmp_path / "grid.png")
    grid = Image.open(tmp_path / "grid.png")
    x = pixels[:2].permute(0, 3, 1, 2).float() / 127.5 - 1
    height = comparison_rows(x, x)[0][0].height
    assert grid.height == 2 * (height + 2) + 2 + 16  # the caption strip
