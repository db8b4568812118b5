"""gtok.data: shard specs, tar reading, image decoding, preprocessing, datasets."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from shardmaker import (
    clean_samples,
    encode,
    exif_rotated_jpeg,
    huge_pax_header,
    jpeg,
    odd_samples,
    pax_size_member,
    pixels,
    png16_rgb,
    sparse_member,
    tar_member,
    write_clean_shards,
    write_raw_tar,
    write_tar,
)

from gtok.data import (
    EncodeStream,
    ImageDataset,
    ImageRejected,
    Preprocess,
    RawSample,
    ShardEnd,
    Skipped,
    TarProblem,
    brace_expand,
    center_crop,
    decode_rgb,
    decode_shard,
    expand_shards,
    loader,
    random_resized_crop,
    read_tar,
    sample_rng,
    to_tensor,
)
from gtok.data.samples import center_prepare
from gtok.data.tario import escape_name, unescape_name
from gtok.errors import GtokError
from gtok.train.data import count_samples

# ---- shard specs ------------------------------------------------------------------------


def test_brace_expand():
    assert brace_expand("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert brace_expand("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert brace_expand("{8..11}") == ["8", "9", "10", "11"]
    assert brace_expand("plain.tar") == ["plain.tar"]


def test_expand_folder_glob_brace_and_urls(tmp_path):
    folder = tmp_path / "img2dataset"
    write_clean_shards(folder, 3, 2)
    (folder / "shard-0000.parquet").write_bytes(b"PAR1")
    (folder / "shard-0000_stats.json").write_text("{}")
    names = ["shard-0000.tar", "shard-0001.tar", "shard-0002.tar"]
    assert [r.name for r in expand_shards([folder])] == names
    assert [r.name for r in expand_shards([f"{folder}/shard-*.tar"])] == names
    assert [r.name for r in expand_shards([f"{folder}/shard-{{0002..0001}}.tar"])] == names[1:]
    assert [r.name for r in expand_shards([f"file://{folder}"])] == names
    # given twice (folder and one of its files), listed once, in name order
    refs = expand_shards([folder / "shard-0002.tar", folder])
    assert [r.name for r in refs] == names
    assert all(os.path.isabs(r.url) for r in refs)


def test_expand_memory_url_and_read_it(tmp_path):
    import fsspec

    data = write_tar(tmp_path / "m.tar", clean_samples(2)).read_bytes()
    with fsspec.open("memory://gtok-test/m-000.tar", "wb") as f:
        f.write(data)
    (ref,) = expand_shards(["memory://gtok-test/m-{000..000}.tar"])
    assert ref.url.startswith("memory://")
    assert [s.key for s in read_tar(ref.url)] == ["000000", "000001"]


def test_expand_errors(tmp_path):
    with pytest.raises(GtokError, match="does not exist"):
        expand_shards([tmp_path / "nowhere"])
    with pytest.raises(GtokError, match=r"holds no \.tar"):
        expand_shards([tmp_path])
    with pytest.raises(GtokError, match="matches no file"):
        expand_shards([f"{tmp_path}/*.tar"])
    with pytest.raises(GtokError, match="No shards"):
        expand_shards([])
    write_clean_shards(tmp_path / "a", 1, 1)
    write_clean_shards(tmp_path / "b", 1, 1)
    with pytest.raises(GtokError, match="unique"):
        expand_shards([tmp_path / "a", tmp_path / "b"])


# ---- tar reading --------------------------------------------------------------------------


def _tar_bytes(tmp_path, samples) -> bytes:
    return write_tar(tmp_path / "t.tar", samples).read_bytes()


def test_read_tar_groups_members_by_key(tmp_path):
    samples = [
        ("a/x", {"jpg": b"1", "cls": b"2"}),
        ("a/y", {"seg.png": b"3"}),
        ("z", {"jpg": b"4"}),
        ("a/x", {"jpg": b"5"}),
    ]
    got = list(read_tar(str(write_tar(tmp_path / "t.tar", samples))))
    assert [(s.key, sorted(s.files), s.problem) for s in got] == [
        ("a/x", ["cls", "jpg"], None),
        ("a/y", ["seg.png"], None),
        ("z", ["jpg"], None),
        ("a/x", ["jpg"], "duplicate key: it already appeared in this tar"),
    ]


@pytest.mark.parametrize("cut", ["header", "data", "boundary", "no_end_block"])
def test_read_tar_truncated_reports_the_cut_sample_and_the_tar(tmp_path, cut):
    samples = clean_samples(3)
    full = _tar_bytes(tmp_path, samples)
    sizes = [512 + -(-len(d) // 512) * 512 for _, files in samples for d in files.values()]
    third_start = sum(sizes[:6])  # samples have 3 members (jpg, cls, json)
    at = {
        "header": third_start + 100,  # inside the first header of sample 3
        "data": third_start + 700,  # inside the data of sample 3's jpg
        "boundary": third_start + sizes[6],  # after sample 3's jpg, before its cls
        "no_end_block": sum(sizes),  # every member whole, end-of-archive blocks missing
    }[cut]
    path = tmp_path / "cut.tar"
    path.write_bytes(full[:at])
    got = list(read_tar(str(path)))
    assert isinstance(got[-1], TarProblem)
    assert "truncated or corrupt" in got[-1].reason
    found = [s for s in got if isinstance(s, RawSample)]
    if cut == "header":  # the cut hides sample 3 entirely; sample 2 may have been longer
        assert [s.key for s in found] == ["000000", "000001"]
        assert found[0].problem is None and "incomplete" in found[1].problem
    else:
        assert [s.key for s in found] == ["000000", "000001", "000002"]
        assert found[1].problem is None
        assert "incomplete" in found[2].problem


def test_read_tar_empty_garbage_and_missing(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "junk.tar").write_bytes(b"hello" * 300)
    for name, words in [("empty.tar", "empty file"), ("junk.tar", "not a readable tar")]:
        (problem,) = list(read_tar(str(tmp_path / name)))
        assert isinstance(problem, TarProblem) and words in problem.reason
    (problem,) = list(read_tar(str(tmp_path / "gone.tar")))
    assert "cannot read" in problem.reason


def _around(tmp_path, hostile: bytes, *, end: bool = True) -> str:
    """A tar: sample 000 (jpg + cls), the hostile member, sample 002 (jpg)."""
    before = tar_member("000.jpg", jpeg(0)) + tar_member("000.cls", b"0")
    after = tar_member("002.jpg", jpeg(2))
    return str(write_raw_tar(tmp_path / "hostile.tar", [before, hostile, after], end=end))


def test_a_huge_sparse_member_is_skipped_unread_and_reading_goes_on(tmp_path):
    # 300 MiB: over the default limit, yet harmless if a regression read it (tests/
    # test_hostile_inputs.py reads 6 GB ones under a memory limit)
    url = _around(tmp_path, sparse_member("001.jpg", 300 << 20))
    got = list(read_tar(url))
    assert [(s.key, sorted(s.files)) for s in got] == [
        ("000", ["cls", "jpg"]),
        ("001", []),
        ("002", ["jpg"]),
    ]
    assert [s.problem for s in got] == [
        None,
        "member 001.jpg is 314572800 bytes, over the limit of 268435456 bytes per member "
        "(--max-member-bytes)",
        None,
    ]
    # a limit above the member's real size reads it (zeros where the sparse map has holes)
    small = tmp_path / "small"
    url = _around(small, sparse_member("001.jpg", 3000, b"\xff\xd8"))
    middle = list(read_tar(url, max_member_bytes=3000))[1]
    assert middle.problem is None and middle.files["jpg"] == b"\xff\xd8" + bytes(2998)
    assert "over the limit of 2999 bytes" in list(read_tar(url, max_member_bytes=2999))[1].problem


def test_a_pax_size_of_10_to_the_12_is_skipped_and_the_tar_is_truncated(tmp_path):
    got = list(read_tar(_around(tmp_path, pax_size_member("001.jpg", 10**12))))
    assert [s.key for s in got[:-1]] == ["000", "001"]
    assert got[0].problem is None
    assert got[1].problem.startswith("member 001.jpg is 1000000000000 bytes, over the limit")
    assert isinstance(got[-1], TarProblem) and "truncated or corrupt" in got[-1].reason


def test_a_pax_header_claiming_10_to_the_12_bytes_ends_the_tar_as_corrupt(tmp_path):
    url = _around(tmp_path, huge_pax_header(10**12))
    sample, problem = list(read_tar(url))
    assert sample.key == "000" and "incomplete" in sample.problem
    assert problem.reason == (
        "tar is truncated or corrupt (a tar header claims 1000000000000 bytes, over the limit "
        "of 268435456 bytes per member (--max-member-bytes))"
    )
    (problem,) = list(
        read_tar(str(write_raw_tar(tmp_path / "first.tar", [huge_pax_header(10**12)])))
    )
    assert problem.reason.startswith("not a readable tar (a tar header claims")
    assert count_samples(expand_shards([url])) == 1  # training's count reads no more


def test_non_utf8_member_names_give_reversible_utf8_keys(tmp_path):
    members = [("a\udcff.jpg", jpeg(1)), ("100%.jpg", jpeg(2)), ("x%41y.jpg", jpeg(3))]
    url = write_raw_tar(tmp_path / "names.tar", [tar_member(n, d) for n, d in members])
    got = list(read_tar(str(url)))
    assert [(s.key, s.problem) for s in got] == [("a%FF", None), ("100%", None), ("x%2541y", None)]
    assert [unescape_name(s.key) for s in got] == [b"a\xff", b"100%", b"x%41y"]
    assert count_samples(expand_shards([url])) == 3


@given(st.binary(max_size=40) | st.text(alphabet="%aF0/.\xff\udcff", max_size=12).map(os.fsencode))
def test_escape_name_is_reversible_valid_utf8(raw):
    text = escape_name(raw)
    assert unescape_name(text) == raw
    text.encode("utf-8")  # strict: no surrogates
    try:
        plain = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    if "%" not in plain:
        assert text == plain  # valid UTF-8 without "%" keeps its name as it is


# ---- image decoding ------------------------------------------------------------------------


def _decode(data: bytes, **kw) -> np.ndarray:
    img = decode_rgb(data, **kw)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_alpha_is_composited_on_the_background():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 64))
    expected = np.rint(np.array([200, 0, 0]) * 64 / 255 + np.array([255, 255, 255]) * 191 / 255)
    assert np.abs(_decode(encode(rgba, "PNG"))[0, 0] - expected).max() <= 1
    black = _decode(encode(rgba, "PNG"), background=(0, 0, 0))[0, 0]
    assert np.abs(black - np.rint(np.array([200, 0, 0]) * 64 / 255)).max() <= 1
    la = Image.new("LA", (4, 4), (100, 0))  # fully transparent: only the background shows
    assert (_decode(encode(la, "PNG")) == 255).all()


def test_palette_with_transparency_and_plain_palette():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert (_decode(encode(p, "PNG"))[0, 0] == [10, 20, 30]).all()
    assert (_decode(encode(p, "PNG", transparency=1))[0, 0] == 255).all()


def test_sixteen_bit_images_are_scaled_not_clipped():
    gray = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert (_decode(encode(gray, "PNG")) == 128).all()
    wide = np.zeros((4, 4, 3), np.uint16)
    wide[..., 0], wide[..., 1], wide[..., 2] = 65535, 32768, 256
    assert (_decode(png16_rgb(wide))[0, 0] == [255, 128, 1]).all()


def test_cmyk_and_grayscale():
    white = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    assert np.abs(_decode(encode(white, "JPEG", quality=100)) - 255).max() <= 2
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    assert np.abs(_decode(encode(cyan, "TIFF"))[0, 0] - [0, 255, 255]).max() <= 2
    gray = _decode(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert (gray == 77).all()


def test_exif_orientation_is_applied():
    upright = np.asarray(Image.fromarray(pixels(8, (40, 32))).rotate(-90, expand=True))
    got = _decode(exif_rotated_jpeg(8, orientation=6))
    assert got.shape == (40, 32, 3)  # a 40x32 landscape image shown as 32x40 portrait
    assert np.abs(got - upright.astype(int)).mean() < 4  # same picture up to JPEG noise


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty image member"),
        (b"GIF89a not really", "not an image"),
        (b"\x00" * 100, "not an image"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_rgb(data)


def test_truncated_and_bomb_images_are_rejected():
    good = encode(Image.fromarray(pixels(1, (64, 64))), "JPEG")
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_rgb(good[: len(good) // 2])
    with pytest.raises(ImageRejected, match="decompression bomb: 64x64 = 4096 pixels"):
        decode_rgb(good, max_pixels=4095)


# ---- preprocessing --------------------------------------------------------------------------


def test_center_crop_sizes_follow_torchvision():
    img = Image.fromarray(pixels(2, (100, 50)))  # 100 wide, 50 high
    crop, upscaled = center_crop(img, 32)
    assert crop.size == (32, 32) and not upscaled
    # torchvision Resize(32): 64x32; CenterCrop(32): left = round((64 - 32) / 2) = 16
    reference = img.resize((64, 32), Image.Resampling.BICUBIC).crop((16, 0, 48, 32))
    assert np.array_equal(np.asarray(crop), np.asarray(reference))
    crop, upscaled = center_crop(Image.fromarray(pixels(2, (10, 12))), 32, resize=40)
    assert crop.size == (32, 32) and upscaled


def test_to_tensor_range_and_layout():
    img = Image.fromarray(np.array([[[0, 255, 51]]], np.uint8))
    t = to_tensor(img)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_random_resized_crop_is_seeded():
    img = Image.fromarray(pixels(3, (80, 60)))
    a = random_resized_crop(img, 24, sample_rng(1, 0, 2, 5))
    b = random_resized_crop(img, 24, sample_rng(1, 0, 2, 5))
    c = random_resized_crop(img, 24, sample_rng(1, 1, 2, 5))
    assert a.size == (24, 24)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    full = random_resized_crop(
        img, 24, np.random.default_rng(0), scale=(1, 1), ratio=(4 / 3, 4 / 3)
    )
    ref = img.resize((24, 24), Image.Resampling.BICUBIC)
    flipped = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert any(np.array_equal(np.asarray(full), np.asarray(r)) for r in (ref, flipped))


def test_preprocess_record_round_trips():
    p = Preprocess(image_size=32, resize=36, background=(1, 2, 3), max_pixels=1000)
    assert Preprocess.from_dict(p.to_dict()) == p
    assert "bicubic" in p.to_dict()["method"]
    with pytest.raises(ValueError, match="at least"):
        Preprocess(image_size=32, resize=16)


# ---- decoded shards and datasets ---------------------------------------------------------------


def test_odd_folder_is_accounted_for_sample_by_sample(tmp_path):
    cases = odd_samples()
    path = write_tar(tmp_path / "odd.tar", [sample for sample, _ in cases])
    items = list(decode_shard(str(path), center_prepare(Preprocess(image_size=16))))
    end = items.pop()
    assert isinstance(end, ShardEnd) and end.problem is None and end.samples == len(cases)
    assert len(items) == len(cases)
    for ((key, _), expected), item in zip(cases, items, strict=True):
        assert item.key == key
        if expected is None:
            assert not isinstance(item, Skipped), (key, getattr(item, "reason", ""))
            assert item.image.shape == (16, 16, 3) and item.image.dtype == np.uint8
        else:
            assert isinstance(item, Skipped) and expected in item.reason, (key, item)
    by_key = {i.key: i for i in items if not isinstance(i, Skipped)}
    assert by_key["plain"].label == 3 and by_key["png"].label == -1
    assert by_key["tiny"].upscaled and not by_key["plain"].upscaled


def test_encode_stream_chunks_stay_within_shards(tmp_path):
    write_clean_shards(tmp_path, 2, 5)
    (tmp_path / "shard-0002.tar").write_bytes(b"")
    shards = expand_shards([tmp_path])
    stream = EncodeStream(shards, Preprocess(image_size=8), batch_size=2)
    chunks = list(stream)
    assert [(c.shard, len(c.keys), c.end is not None) for c in chunks] == [
        (0, 2, False),
        (0, 2, False),
        (0, 1, True),
        (1, 2, False),
        (1, 2, False),
        (1, 1, True),
        (2, 0, True),
    ]
    assert chunks[-1].end.samples == 0 and "empty" in chunks[-1].end.problem
    assert chunks[0].images.shape == (2, 8, 8, 3) and chunks[0].images.dtype == torch.uint8
    assert list(chunks[0].labels) == [0, 1]


@pytest.mark.subprocess
def test_spawn_workers_give_the_same_chunks(tmp_path):
    write_clean_shards(tmp_path, 3, 3)
    stream = EncodeStream(expand_shards([tmp_path]), Preprocess(image_size=8), batch_size=2)

    def collect(workers):
        got = {}
        for chunk in loader(stream, workers=workers):
            got.setdefault(chunk.shard, []).append((chunk.keys, chunk.images.clone()))
        return got

    serial, spawned = collect(0), collect(2)
    assert serial.keys() == spawned.keys()
    for shard in serial:
        for (k1, x1), (k2, x2) in zip(serial[shard], spawned[shard], strict=True):
            assert k1 == k2 and torch.equal(x1, x2)


def test_image_dataset_center_and_augment(tmp_path):
    write_clean_shards(tmp_path, 2, 3)
    shards = expand_shards([tmp_path])
    plain = list(ImageDataset(shards, Preprocess(image_size=8)))
    assert [d["key"] for d in plain][:2] == ["shard-0000.tar/000000", "shard-0000.tar/000001"]
    assert plain[0]["image"].shape == (3, 8, 8) and plain[0]["label"] == 0
    img = decode_rgb(clean_samples(1)[0][1]["jpg"])
    expected = to_tensor(center_crop(img, 8)[0])
    assert torch.equal(plain[0]["image"], expected)
    aug = ImageDataset(shards, Preprocess(image_size=8), augment=True, seed=3)
    first, again = list(aug), list(aug)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))
    aug.set_epoch(1)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, aug, strict=False))
    halves = [ImageDataset(shards, Preprocess(image_size=8), rank=r, world_size=2) for r in (0, 1)]
    keys = sorted(d["key"] for h in halves for d in h)
    assert keys == sorted(d["key"] for d in plain)
    shuffled = ImageDataset(shards, Preprocess(image_size=8), shuffle=True, shuffle_buffer=4)
    assert sorted(d["key"] for d in shuffled) == keys


def test_decode_rgb_accepts_bytes_io_roundtrip():
    data = io.BytesIO()
    Image.fromarray(pixels(4)).save(data, "PNG")
    assert np.array_equal(_decode(data.getvalue()), pixels(4).astype(int))


def test_captions_and_metadata_fields_of_a_sample():
    from gtok.data.samples import parse_caption, parse_metadata

    raw = RawSample("k", {"txt": "caf\u00e9".encode(), "json": b'{"url": "u", "w": 40, "n": null}'})
    assert parse_caption(raw) == "caf\u00e9" and parse_caption(RawSample("k")) is None
    assert parse_metadata(raw, ("url", "w", "n", "absent")) == ("u", "40", "", "")
    assert parse_metadata(RawSample("k"), ("url",)) == ("",)  # no .json: every field ""
    for files, reason in [
        ({"txt": b"\xff\xfe"}, "not UTF-8"),
        ({"txt": b"x" * 5000}, "5000 bytes, over the limit of 4096"),
        ({"json": b"{not json"}, "unreadable .json"),
        ({"json": b"[1, 2]"}, "not an object"),
    ]:
        with pytest.raises(ImageRejected, match=reason):
            parse_caption(RawSample("k", files))
            parse_metadata(RawSample("k", files), ("url",))
