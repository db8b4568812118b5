"""Training data streams: reproducible, resumable from a position, split over ranks and
workers, and bad samples recorded instead of raised."""

import itertools

import numpy as np
import pytest
import torch
from shardmaker import clean_samples, jpeg, write_tar

from gtok.data.shards import expand_shards
from gtok.train.data import (
    StreamSpec,
    count_samples,
    rank_shards,
    stream_batches,
    train_loader,
    val_batches,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    for s in range(3):
        write_tar(folder / f"train-{s}.tar", clean_samples(7, start=10 * s, size=(40, 36)))
    return expand_shards([folder])


def _spec(shards, **kw):
    args = dict(shards=tuple(shards), image_size=16, batch_size=4, seed=3, rank=0, augment=True)
    return StreamSpec(**{**args, **kw})


def test_a_stream_resumed_from_a_position_continues_identically(shards):
    spec = _spec(shards, shuffle_buffer=5)
    first = list(itertools.islice(stream_batches(spec, stream=1), 8))
    assert all(b.pixels.shape == (4, 16, 16, 3) and b.pixels.dtype == torch.uint8 for b in first)
    again = list(itertools.islice(stream_batches(spec, stream=1), 8))
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(first, again, strict=True))
    resumed = list(itertools.islice(stream_batches(spec, 1, *first[2].position), 5))
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(first[3:], resumed, strict=True))
    other = next(stream_batches(spec, stream=0))
    assert not torch.equal(other.pixels, first[0].pixels)  # streams differ


def test_bad_samples_are_recorded_with_shard_key_and_reason(tmp_path):
    good = clean_samples(6, size=(20, 20))
    bad = [("broken", {"jpg": b"not a jpeg"}), ("nothing", {"txt": b"caption"})]
    write_tar(tmp_path / "mixed.tar", good[:3] + bad + good[3:])
    mixed = expand_shards([tmp_path / "mixed.tar"])
    spec = _spec(mixed, batch_size=3, augment=False, shuffle_buffer=1)  # tar order
    first, second = itertools.islice(stream_batches(spec, 0), 2)
    assert first.skipped == []  # the bad samples travel with the batch after them
    records = second.skipped
    assert sorted((shard, key) for shard, key, _ in records) == [
        ("mixed.tar", "broken"),
        ("mixed.tar", "nothing"),
    ]
    reasons = {key: reason for _, key, reason in records}
    assert "not an image" in reasons["broken"] and "no image member" in reasons["nothing"]


def test_a_stream_of_only_bad_samples_reports_an_error_instead_of_spinning(tmp_path):
    write_tar(tmp_path / "bad.tar", [("x", {"jpg": b"junk"})])
    spec = _spec(expand_shards([tmp_path / "bad.tar"]))
    batch = next(stream_batches(spec, 0))
    assert batch.pixels is None and "no usable image" in batch.error
    assert len(batch.skipped) == 8  # one per draw, all recorded


def test_ranks_split_shards_when_there_are_enough(shards):
    assert [s.name for s in rank_shards(shards, 1, 2)] == ["train-1.tar"]
    assert rank_shards(shards, 3, 5) == tuple(shards)


@pytest.mark.subprocess
def test_spawn_workers_serve_stream_t_mod_workers_from_the_given_step(shards):
    spec = _spec(shards, batch_size=2)
    direct = {s: list(itertools.islice(stream_batches(spec, s), 3)) for s in (0, 1)}
    loader = train_loader(spec, [(0, 0), direct[1][0].position], first_stream=1, workers=2)
    got = list(itertools.islice(iter(loader), 4))  # steps 1, 2, 3, 4 of a resumed run
    assert [b.stream for b in got] == [1, 0, 1, 0]
    assert torch.equal(got[0].pixels, direct[1][1].pixels)
    assert torch.equal(got[1].pixels, direct[0][0].pixels)
    assert torch.equal(got[2].pixels, direct[1][2].pixels)


def test_validation_reads_the_first_images_in_order_split_over_ranks(shards):
    whole = torch.cat([p for p, _ in val_batches(shards, 16, 4, limit=10)])
    assert whole.shape == (10, 16, 16, 3)
    halves = [torch.cat([p for p, _ in val_batches(shards, 16, 4, 10, r, 2)]) for r in (0, 1)]
    assert torch.equal(halves[0], whole[0::2]) and torch.equal(halves[1], whole[1::2])


def test_count_samples_reads_tar_headers(shards, tmp_path):
    assert count_samples(shards) == 21
    write_tar(tmp_path / "one.tar", [("a", {"jpg": jpeg(1), "cls": b"1"}), ("b", {"jpg": b""})])
    assert count_samples(expand_shards([tmp_path / "one.tar"])) == 2


def test_augmentation_is_seeded_by_position_not_by_seed_alone(shards):
    a = next(stream_batches(_spec(shards, seed=1), 0)).pixels
    b = next(stream_batches(_spec(shards, seed=2), 0)).pixels
    assert not np.array_equal(a.numpy(), b.numpy())
