"""Colour augmentation of training crops (`gtok.train.colour`): off by default and then
bit-for-bit the crop-only pipeline; each augmentation does what it says (checked against
Python's `colorsys` YIQ and plain luma arithmetic); seeded by the sample's place."""

import colorsys
import itertools

import numpy as np
import pytest
import torch
from shardmaker import clean_samples, write_tar

from gtok.cli.main import app
from gtok.data.images import decode_rgb
from gtok.data.samples import image_member
from gtok.data.shards import expand_shards
from gtok.data.tario import RawSample, read_tar
from gtok.data.transforms import random_resized_crop
from gtok.errors import GtokError
from gtok.train.colour import ColourJitter
from gtok.train.config import TrainConfig, resume_conflicts
from gtok.train.data import StreamSpec, stream_batches

LUMA = np.array([0.299, 0.587, 0.114])
COLOUR_FIELDS = ("hue_jitter", "saturation_jitter", "grayscale_p")


def _photo(seed: int = 0, size: int = 24) -> np.ndarray:
    """uint8 [size, size, 3]: random colours with mid-range values (few clip when jittered)."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 226, (size, size, 3), dtype=np.uint8)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64) @ LUMA


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_tar(folder / "train-0.tar", clean_samples(6, size=(40, 36)))
    return expand_shards([folder])


def _spec(shards, **kw) -> StreamSpec:
    args = dict(shards=tuple(shards), image_size=16, batch_size=3, seed=5, rank=0, augment=True)
    return StreamSpec(**{**args, "shuffle_buffer": 1, **kw})  # buffer 1: tar order


def _batches(spec, count=2, stream=0):
    return [b.pixels for b in itertools.islice(stream_batches(spec, stream), count)]


def test_by_default_batches_are_exactly_the_seeded_crops_and_flips(shards):
    """What the pipeline gave before colour jitter existed: decode, then the crop seeded by
    (seed, rank, stream, draw, 2, index), nothing else."""
    spec = _spec(shards)
    assert spec.colour == ColourJitter() and not spec.colour.active
    got = torch.cat(_batches(spec))
    raws = [r for r in read_tar(shards[0].url) if isinstance(r, RawSample)][:6]
    expected = [
        np.asarray(
            random_resized_crop(
                decode_rgb(image_member(raw)), 16, np.random.default_rng([5, 0, 0, 0, 2, i])
            )
        )
        for i, raw in enumerate(raws)
    ]
    assert torch.equal(got, torch.from_numpy(np.stack(expected)))
    assert "hue" not in spec.describe() and "grayscale" not in spec.describe()


def test_grayscale_p1_gives_r_eq_g_eq_b_the_luma_of_the_same_crops(shards):
    plain = torch.cat(_batches(_spec(shards))).numpy()
    gray = torch.cat(_batches(_spec(shards, colour=ColourJitter(grayscale=1.0)))).numpy()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(gray[..., 0] - _luma(plain)).max() <= 0.5 + 1e-3  # same crop, rounded luma


def test_colour_jitter_is_seeded_by_the_sample_place(shards):
    colour = ColourJitter(hue=0.3, saturation=0.8, grayscale=0.3)
    spec = _spec(shards, colour=colour)
    first, again = _batches(spec, 4), _batches(spec, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    resumed = [b.pixels for b in itertools.islice(stream_batches(spec, 0, 0, 3), 1)]
    assert torch.equal(resumed[0], first[1])  # from position (draw 0, offset 3)
    other = _batches(_spec(shards, colour=colour, seed=6), 1)[0]
    assert not torch.equal(other, first[0])
    assert "hue rotation" in spec.describe() and "grayscale p=0.3" in spec.describe()


def test_saturation_factor_zero_is_gray_and_one_is_unchanged():
    img = _photo()
    gray = ColourJitter(saturation=1.0)  # factor 2u: u = 0 -> 0
    out = gray(img, _FixedDraws([0.5, 0.0, 0.9]))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0] - _luma(img)).max() <= 0.5 + 1e-3
    same = gray(img, _FixedDraws([0.5, 0.5, 0.9]))  # factor 1
    assert np.abs(same.astype(int) - img).max() <= 1


def test_hue_rotation_keeps_luma_and_matches_colorsys_yiq():
    img = _photo(1)
    turns = 0.2
    out = ColourJitter(hue=turns)(img, _FixedDraws([1.0, 0.5, 0.9]))  # u = 1: +turns
    inside = ~((out == 0) | (out == 255)).any(axis=-1)  # pixels not clipped
    assert inside.mean() > 0.5
    assert np.abs(_luma(out) - _luma(img))[inside].max() <= 1.0
    assert np.abs(out.astype(int) - img).mean() > 10  # the colours did change
    angle = 2 * np.pi * turns
    reference = np.empty(img.shape)
    for index in np.ndindex(img.shape[:2]):
        y, i, q = colorsys.rgb_to_yiq(*(img[index] / 255.0))
        i, q = i * np.cos(angle) - q * np.sin(angle), i * np.sin(angle) + q * np.cos(angle)
        reference[index] = colorsys.yiq_to_rgb(y, i, q)
    reference = np.clip(reference * 255, 0, 255)
    assert np.abs(out - reference)[inside].max() <= 3.0  # colorsys rounds its coefficients


def test_hue_rotation_leaves_gray_pixels_gray():
    gray = np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[:, None, None], 3, axis=2)
    out = ColourJitter(hue=0.5)(gray, _FixedDraws([0.9, 0.5, 0.9]))
    assert np.abs(out.astype(int) - gray).max() <= 1


class _FixedDraws:
    """A stand-in generator whose `random(3)` returns the given numbers."""

    def __init__(self, draws):
        self.draws = np.asarray(draws)

    def random(self, n):
        assert n == len(self.draws)
        return self.draws


@pytest.mark.parametrize(
    ("setting", "value"),
    [("hue_jitter", 0.7), ("hue_jitter", -0.1), ("saturation_jitter", -1), ("grayscale_p", 2)],
)
def test_out_of_range_colour_settings_are_refused(setting, value):
    with pytest.raises(GtokError, match=setting):
        TrainConfig(preset="tiny", shards=("x.tar",), steps=1, **{setting: value})


def test_the_config_records_colour_settings_and_old_runs_resume_with_them_off():
    cfg = TrainConfig(preset="tiny", shards=("x.tar",), steps=1, hue_jitter=0.1, grayscale_p=0.2)
    saved = cfg.to_dict()
    assert (saved["hue_jitter"], saved["saturation_jitter"], saved["grayscale_p"]) == (0.1, 0, 0.2)
    assert cfg.colour_jitter() == ColourJitter(0.1, 0.0, 0.2)
    default = TrainConfig(preset="tiny", shards=("x.tar",), steps=1).to_dict()
    old = {k: v for k, v in default.items() if k not in COLOUR_FIELDS}
    assert resume_conflicts(old, default) == []  # a run saved before these fields existed
    assert resume_conflicts(old, saved) == ["grayscale_p: 0.0 -> 0.2", "hue_jitter: 0.0 -> 0.1"]


def test_cli_refuses_an_out_of_range_hue_jitter(runner, tmp_path):
    write_tar(tmp_path / "a.tar", clean_samples(1, size=(8, 8)))
    args = ["train", str(tmp_path / "a.tar"), "--preset", "tiny", "--steps", "1"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "run"), "--hue-jitter", "0.9"])
    assert result.exit_code == 2 and "--hue-jitter must be in [0, 0.5]" in result.output
