"""`gtok decode`: files equal `tok.decode` of the stored tokens; row selection; WebDataset
output; Gaussians pictures; the model found from the store, and other weights refused unless
--force; key <-> path mapping."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from evalkit import _encode, read_png
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import gtok
from gtok.cli.main import app
from gtok.data.tario import read_tar
from gtok.decode import PngFolder, key_path, path_key, wds_key_path
from gtok.decode.keys import MAX_NAME_BYTES, fits
from gtok.evaluate.sources import folder_index
from gtok.metrics import to_uint8
from gtok.model import Tokens
from gtok.store import TokenStore
from gtok.viz import code_color


def expected_pixels(
    store_path: Path, model_path: Path, batch_size: int | None = None
) -> dict[str, torch.Tensor]:
    """key -> uint8 [3, S, S]: the rows decoded by `tok.decode` in batches of `batch_size`
    (None: one batch), quantized. The batches must be those of the command under test: a
    convolution's rounding can depend on the batch size, by a pixel level now and then."""
    fields = [f for f in TokenStore(store_path).fields if f != "labels"]
    tokens = TokenStore(store_path, format="torch", fields=[*fields, "keys"])
    tok = gtok.load_tokenizer(model_path)
    step = batch_size or len(tokens)
    expected = {}
    for start in range(0, len(tokens), step):
        batch = tokens[start : start + step]
        images = tok.decode(Tokens(batch["indices"], batch.get("geometry")))
        expected.update(zip(batch["keys"], to_uint8(images), strict=True))
    return expected


def png_path(out: Path, key: str, suffix: str = ".png") -> Path:
    return out / f"{key_path(key)}{suffix}"


def decode_cli(runner, *args: str):
    result = runner.invoke(app, ["decode", *args, "--json"])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


@pytest.mark.slow
def test_png_files_equal_tok_decode_of_the_stored_tokens(tmp_path, store, model, runner):
    out = tmp_path / "recon"
    result, summary = decode_cli(runner, str(store), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    expected = expected_pixels(store, model)
    assert summary["written"] == summary["rows"] == len(expected) == 11
    assert summary["model"] == str(model.resolve()) and summary["weights_match_store"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(f"{k}.png" for k in expected)  # shard-0000.tar/000003.png, ...
    for key, pixels in expected.items():
        assert torch.equal(read_png(png_path(out, key)), pixels), key


def test_rows_by_keys_start_stop_and_limit(tmp_path, store, runner):
    keys = TokenStore(store).keys()
    (tmp_path / "keys.txt").write_text(f"{keys[7]}\n\n{keys[2]}\n")
    out = tmp_path / "k"
    result, summary = decode_cli(
        runner, str(store), "-o", str(out), "--keys", keys[5], "--keys", f"@{tmp_path / 'keys.txt'}"
    )
    assert result.exit_code == 0, result.stderr
    assert summary["rows"] == 3
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        f"{keys[i]}.png" for i in (5, 7, 2)
    }
    out = tmp_path / "s"
    result, summary = decode_cli(runner, str(store), "-o", str(out), "--start", "2", "--stop", "5")
    assert result.exit_code == 0 and summary["rows"] == 3
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        f"{keys[i]}.png" for i in (2, 3, 4)
    }
    out = tmp_path / "l"
    result, summary = decode_cli(
        runner, str(store), "-o", str(out), "--start", "-4", "--limit", "2"
    )
    assert result.exit_code == 0 and summary["written"] == 2
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        f"{keys[i]}.png" for i in (7, 8)
    }
    bad = runner.invoke(app, ["decode", str(store), "-o", str(out), "--keys", "nope/1"])
    assert bad.exit_code == 1 and "not in" in bad.stderr and "'nope/1'" in bad.stderr
    both = runner.invoke(
        app, ["decode", str(store), "-o", str(out), "--keys", keys[0], "--stop", "3"]
    )
    assert both.exit_code == 1 and "either --keys or --start/--stop" in both.stderr
    empty = runner.invoke(app, ["decode", str(store), "-o", str(out), "--start", "50"])
    assert empty.exit_code == 1 and "holds no rows" in empty.stderr


def test_webdataset_shards(tmp_path, store, model, runner):
    out = tmp_path / "wds"
    args = [str(store), "-o", str(out), "--format", "wds", "--shard-size", "4", "--batch-size", "3"]
    result, summary = decode_cli(runner, *args)
    assert result.exit_code == 0, result.stderr
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == ["recon-000000.tar", "recon-000001.tar", "recon-000002.tar"]
    assert summary["files"] == 3 and not list(out.glob(".*"))  # no temporary files left
    expected = expected_pixels(store, model, batch_size=3)
    labels = dict(zip(TokenStore(store).keys(), TokenStore(store)[0:11]["labels"], strict=True))
    samples = [s for t in tars for s in read_tar(str(t))]
    assert [s.key for s in samples] == [wds_key_path(k) for k in expected]
    for sample, key in zip(samples, expected, strict=True):
        assert sorted(sample.files) == ["cls", "png"]
        pixels = np.array(Image.open(io.BytesIO(sample.files["png"])))
        assert torch.equal(torch.from_numpy(pixels).permute(2, 0, 1), expected[key])
        assert int(sample.files["cls"]) == labels[key]


def test_gaussians_pictures_next_to_reconstructions(tmp_path, store, runner):
    out = tmp_path / "g"
    result, summary = decode_cli(runner, str(store), "-o", str(out), "--limit", "3", "--gaussians")
    assert result.exit_code == 0, result.stderr
    assert summary["files"] == 6 and summary["gaussians"]
    rows = TokenStore(store, fields=("indices", "keys"))[0:3]
    for key, codes in zip(rows["keys"], rows["indices"], strict=True):
        assert png_path(out, key).is_file()
        picture = np.array(Image.open(png_path(out, key, ".gaussians.png")).convert("RGB"))
        assert picture.shape == (256, 256, 3)  # 32 px enlarged 8x
        # the dimmed reconstruction is at most 40% bright: brighter pixels are ellipses, each
        # in the colour of one of this image's codes
        bright = {tuple(p) for p in picture.reshape(-1, 3) if p.max() > 110}
        palette = {code_color(int(c)) for c in codes}
        assert bright and bright <= palette


def test_other_weights_refused_unless_forced(tmp_path, store, model, other_model, runner):
    out = tmp_path / "o"
    refused = runner.invoke(app, ["decode", str(store), "-o", str(out), "-m", str(other_model)])
    assert refused.exit_code == 1
    assert "other weights" in refused.stderr and "--force" in refused.stderr
    assert not list(out.rglob("*.png"))
    result, summary = decode_cli(
        runner, str(store), "-o", str(out), "-m", str(other_model), "--force", "--limit", "2"
    )
    assert result.exit_code == 0, result.stderr
    assert not summary["weights_match_store"]
    keys = TokenStore(store).keys()[:2]
    forced = expected_pixels(store, other_model)
    own = expected_pixels(store, model)
    for key in keys:
        assert torch.equal(read_png(png_path(out, key)), forced[key])
        assert not torch.equal(forced[key], own[key])


def test_model_found_from_the_store_or_given_when_moved(tmp_path, shards, model, runner):
    copy = shutil.copytree(model, tmp_path / "copy")
    moved = _encode(shards / "shard-0000.tar", tmp_path / "m.zarr", copy)
    assert TokenStore(moved).model_path == str(copy.resolve())
    shutil.rmtree(copy)
    gone = runner.invoke(app, ["decode", str(moved), "-o", str(tmp_path / "x")])
    assert gone.exit_code == 1 and "no longer exists" in gone.stderr and "--model" in gone.stderr
    assert TokenStore(moved).weights_sha256 in gone.stderr.replace("\n", "")  # what to look for
    result, summary = decode_cli(runner, str(moved), "-o", str(tmp_path / "x"), "-m", str(model))
    assert result.exit_code == 0 and summary["weights_match_store"] and summary["written"] == 5


def test_a_moved_store_of_the_default_models_weights_decodes_with_it(
    tmp_path, shards, model, other_model, runner, monkeypatch
):
    copy = shutil.copytree(model, tmp_path / "copy")
    moved = _encode(shards / "shard-0000.tar", tmp_path / "m.zarr", copy)
    shutil.rmtree(copy)
    monkeypatch.setenv("GTOK_DEFAULT_MODEL", str(other_model))  # other weights: not used
    refused = runner.invoke(app, ["decode", str(moved), "-o", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "no longer exists" in refused.stderr
    monkeypatch.setenv("GTOK_DEFAULT_MODEL", str(model))  # the store's weights
    result, summary = decode_cli(runner, str(moved), "-o", str(tmp_path / "y"))
    assert result.exit_code == 0, result.stderr
    assert summary["model"] == str(model) and summary["weights_match_store"]
    assert "decoding with the default model" in " ".join(result.stderr.split())
    for key, pixels in expected_pixels(moved, model).items():
        assert torch.equal(read_png(png_path(tmp_path / "y", key)), pixels), key


@pytest.mark.parametrize(
    "key",
    [
        "shard-0001.tar/000042",
        "a.tar/train/n01440764/img_001",
        "x.tar/../../etc/passwd",
        "x.tar//abs/./p",
        'c.tar/C:\\dir\\*?"<>|%20',
        "d.tar/name.gaussians",
        "e.tar/\u65e5\u672c/\u753b\u50cf",
        "f.tar/tab\there",
    ],
)
def test_key_paths_stay_inside_and_map_back(key):
    path = key_path(key)
    assert not path.is_absolute() and ".." not in path.parts and "." not in path.parts
    assert all(part and not set(part) & set('\\:*?"<>|\t') for part in path.parts)
    assert not path.name.endswith(".gaussians")
    assert path_key(path) == key
    assert path_key(PurePosixPath(wds_key_path(key))) == key
    assert "." not in PurePosixPath(wds_key_path(key)).name


def test_key_paths_are_one_to_one():
    keys = ["a/b", "a%2Fb", "a/%", "a/", "a//", "a/.", "a/%2E", "a/b.gaussians", "a/b%2Egaussians"]
    keys += ["a", "a.png/b", "a%2Epng/b", "a.PNG/b", "a.cls/b", "a/.b", "a/%2Eb", "a/..", ".a"]
    paths = [key_path(k) for k in keys]
    assert len(set(paths)) == len(keys)
    assert key_path("a.png/b") == PurePosixPath("a%2Epng/b")  # not the folder of key a's file
    assert fits(key_path("s.tar/" + "x" * 200)) and not fits(key_path("s.tar/" + "x" * 250))
    assert not fits(key_path("/".join(["y" * 200] * 6)))  # each part fits, the whole does not


# keys as stores hold them: any text, with `/` separators, dots and case that collide
_KEY_TEXT = st.text(alphabet=st.sampled_from("aA.%/\\:gnpc") | st.characters(), max_size=40)
_KEYS = st.lists(_KEY_TEXT | st.builds(lambda n: "k/" + "x" * n, st.integers(200, 300)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(_KEYS)
def test_key_mapping_properties(keys):
    """key_path: inside the folder, one-to-one, reversible, no folder named like a file; the
    PNG writer writes every key (readable or hashed paths that fit a file system and differ
    even ignoring case) and eval's folder index maps each file back to its key."""
    paths = {}
    for key in set(keys):
        path = key_path(key)
        assert not path.is_absolute() and path.parts and path_key(path) == key
        assert all(p and not p.startswith(".") for p in path.parts)  # no "", ".", "..", hidden
        assert not any(p.lower().endswith((".png", ".cls")) for p in path.parts[:-1])
        assert path_key(PurePosixPath(wds_key_path(key))) == key
        assert not PurePosixPath(wds_key_path(key)).parent.name.lower().endswith(".png")
        paths[key] = path
    assert len(set(paths.values())) == len(paths)
    with tempfile.TemporaryDirectory() as out:
        writer = PngFolder(out)
        for key in paths:
            writer.write(key, key.encode("utf-8", "surrogatepass"), b"g", -1)
        files = writer.close()
        assert len({str(f).casefold() for f in files}) == len(files) == 2 * len(paths)
        parts = [p for f in files for p in PurePosixPath(f).relative_to(out).parts]
        assert all(len(p.encode()) <= MAX_NAME_BYTES for p in parts)
        found = folder_index(Path(out))
        assert found.keys() == paths.keys()
        for key, file in found.items():
            assert file.read_bytes() == key.encode("utf-8", "surrogatepass")
            assert (file == Path(out) / f"{paths[key]}.png") != (key in writer.hashed)


def test_vq_store_decodes_and_refuses_gaussians(tmp_path, shards, vq_model, runner):
    vq_store = _encode(shards / "shard-0000.tar", tmp_path / "vq.zarr", vq_model)
    result, summary = decode_cli(runner, str(vq_store), "-o", str(tmp_path / "vq"))
    assert result.exit_code == 0 and summary["written"] == 5, result.stderr
    expected = expected_pixels(vq_store, vq_model)
    for key, pixels in expected.items():
        assert torch.equal(read_png(png_path(tmp_path / "vq", key)), pixels), key
    refused = runner.invoke(
        app, ["decode", str(vq_store), "-o", str(tmp_path / "g"), "--gaussians"]
    )
    assert refused.exit_code == 1 and "needs a GaussianToken model" in refused.stderr
