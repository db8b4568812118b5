"""Bounded reads: every file a user or a dataset
hands gtok is read up to a size limit and parsed up to a nesting limit (`gtok.safeload`),
else it ends with one sentence naming it, or its sample or shard is skipped with the reason;
a config file's bad value is named by file and key, an environment variable's by variable.

Reads that today's gtok made without a bound run in a subprocess under hostilekit's memory
limit, so that a regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from evalkit import save_model
from hostilekit import assert_one_error, run_gtok
from shardmaker import jpeg, write_tar
from test_hostile_cli import _in_process
from test_store_locks import _encode, assert_clean_and_complete

from gtok.decode.keys import HASHED_DIR, INDEX_FILE, read_index
from gtok.encode import encode_shards
from gtok.errors import GtokError
from gtok.pack import pack_images
from gtok.safeload import MAX_DEPTH, TooDeep, parse_json, parse_toml
from gtok.store import TokenStore, finalize_store
from gtok.store.lock import key as lock_key
from gtok.store.verify import verify_store
from gtok.train.rundir import RunDir

DEEP_JSON = "[" * 100_000 + "]" * 100_000
NESTED = f"nests arrays or tables more than {MAX_DEPTH} deep"


# ---- the limits themselves ---------------------------------------------------------------


def test_nesting_limit_is_the_same_whatever_the_parser_would_manage():
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x")
    for text in ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), DEEP_JSON, '{"a":' * 10**5):
        with pytest.raises(TooDeep, match=f"^x {NESTED}.$") as info:
            parse_json(text, "x")
    sent = pickle.loads(pickle.dumps(info.value))  # as from a worker process
    assert (type(sent), str(sent), sent.reason) == (TooDeep, f"x {NESTED}.", NESTED)
    assert parse_toml("a.b.c = 1\n[t]\nx = [1.5, 2.5]\n", "x") == {
        "a": {"b": {"c": 1}},
        "t": {"x": [1.5, 2.5]},
    }
    dotted_in_strings = 'a = "' + "." * 500 + '" # ' + "." * 500 + "\nb = '''" + "." * 500 + "'''"
    assert parse_toml(dotted_in_strings, "x")["b"] == "." * 500


# ---- 11: files that never end ------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "STORE", "-o", "OUT", "--keys", "@/dev/zero"], "the key file /dev/zero is"),
        (["decode", "STORE", "-o", "OUT", "--config", "/dev/zero"], "the config file /dev/zero"),
    ],
    ids=["keys", "config"],
)
def test_endless_key_and_config_files_stop_at_their_limit(tmp_path, args, message):
    places = {"STORE": tmp_path / "tokens.zarr", "OUT": tmp_path / "out"}
    result = run_gtok(*[places.get(a, a) for a in args], timeout=120)
    line = assert_one_error(result, exit_code=2, contains=message)
    assert "is larger than" in line and "the most gtok reads of it" in line


@pytest.mark.subprocess
def test_an_endless_lock_file_is_one_sentence(tmp_path):
    out = tmp_path / "tokens.zarr"
    _encode(out, finalize=False)
    planted = out / lock_key("_store")
    planted.parent.mkdir(exist_ok=True)
    planted.symlink_to("/dev/zero")
    result = run_gtok("encode", "--finalize", "-o", out, timeout=120)
    assert_one_error(result, contains=f"{planted} is larger than 64 KiB")


@pytest.mark.subprocess
def test_a_huge_image_file_is_skipped_unread(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg(0))
    with open(images / "huge.jpg", "wb") as huge:
        huge.truncate(8 << 30)  # sparse: 8 GiB of zeros on no disk blocks
    out = tmp_path / "shards"
    result = run_gtok("pack", images, "-o", out, "--workers", "0", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["packed"], summary["skipped"]) == (1, 1)
    (skipped,) = summary["skipped_examples"]
    assert skipped["reason"] == "file is larger than 256 MiB, the most gtok reads of it"


# ---- 13: JSON and TOML nested 10^5 deep --------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "text",
    ["a = " + "[" * 100_000, "a = " + "{b = " * 100_000, ".".join(["a"] * 100_000) + " = 1"],
    ids=["arrays", "inline-tables", "dotted-key"],  # the dotted key took 10^10 steps
)
def test_a_deeply_nested_config_file_is_one_sentence(tmp_path, text):
    config = tmp_path / "deep.toml"
    config.write_text(text)
    result = run_gtok("decode", tmp_path / "t.zarr", "-o", tmp_path / "out", "--config", config)
    assert_one_error(result, exit_code=2, contains=f"{config} {NESTED}")


def test_a_deep_lock_file_is_taken_over_as_unreadable(tmp_path, capsys):
    out = tmp_path / "tokens.zarr"
    _encode(out, finalize=False)
    planted = out / lock_key("_store")
    planted.parent.mkdir(exist_ok=True)
    planted.write_text("[" * 30_000 + "]" * 30_000)  # within the 64 KiB of a lock file
    finalize_store(str(out))
    assert "took over the stale lock of" in capsys.readouterr().err
    assert_clean_and_complete(out)


def test_a_deep_decode_key_index_is_one_sentence(tmp_path):
    index = tmp_path / HASHED_DIR / INDEX_FILE
    index.parent.mkdir()
    index.write_text(DEEP_JSON)
    with pytest.raises(GtokError, match=f"{index} {NESTED}; decode into a new folder"):
        read_index(tmp_path)


def _pack(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpg").write_bytes(jpeg(i))
    out = tmp_path / "shards"
    pack_images(images, out, per_shard=2)
    return images, out


def test_a_deep_pack_manifest_is_one_sentence(tmp_path):
    images, out = _pack(tmp_path)
    (out / "pack.json").write_text(DEEP_JSON)
    with pytest.raises(GtokError, match=r"holds shards without a readable pack\.json"):
        pack_images(images, out, per_shard=2)


def test_a_deep_pack_stats_file_packs_its_shard_again(tmp_path):
    images, out = _pack(tmp_path)
    stats = out / "shard-000001_stats.json"
    stats.write_text(DEEP_JSON)
    again = pack_images(images, out, per_shard=2)
    assert (again.shards_already_done, again.shards_written) == (1, 1)
    assert json.loads(stats.read_text())["count"] == 2


def test_deep_json_from_a_dataset_skips_the_sample_and_fails_verify(tmp_path):
    """An img2dataset shard whose `.json` sidecar of one sample, and whose `_stats.json`, are
    nested 10^5 deep: the sample is skipped with the reason, verify names the stats file."""
    folder = tmp_path / "laion"
    samples = [(f"0000{i}", {"jpg": jpeg(i), "json": b'{"url": "u"}'}) for i in range(3)]
    samples[1][1]["json"] = DEEP_JSON.encode()
    write_tar(folder / "00000.tar", samples)
    (folder / "00000_stats.json").write_text(DEEP_JSON)
    model = save_model(tmp_path / "model", seed=0)
    out = tmp_path / "t.zarr"
    encode_shards([folder], out, model, batch_size=4, workers=0, metadata_fields=("url",))
    ((_, key, reason),) = TokenStore(out).skipped()
    assert key == "00001" and reason.endswith(f": it {NESTED}")
    report = verify_store(out, [folder])
    assert report.problems == [
        f"00000.tar: its img2dataset stats {folder / '00000_stats.json'} {NESTED}"
    ]


def test_deep_training_records_are_unreadable_not_a_traceback(tmp_path, runner):
    run = RunDir(tmp_path / "run")
    run.checkpoints.folder.mkdir(parents=True)
    run.settings_path.write_text(DEEP_JSON)
    assert run.saved_settings() is None  # the checkpoint's own settings decide
    (run.checkpoints.folder / "best.json").write_text(DEEP_JSON)
    with pytest.raises(GtokError, match=NESTED):
        run.checkpoints.best()
    args = ["train", tmp_path, "--preset", "tiny", "-o", tmp_path / "out", "--steps", "1"]
    result = _in_process(runner, *args, "--model", "ch_mult=" + "[" * 100_000)
    assert_one_error(result, exit_code=2, contains=f"--model ch_mult {NESTED}")


# ---- 15: config values of the wrong kind -------------------------------------------------


CONFIG_MISTAKES = [  # (file text, the one error's text after "FILE")
    ("decode = 5\n", " sets decode = 5, but decode must be a table of `gtok decode`'s options"),
    ("[decode]\nshard-size = [1, 2]\n", ": [decode] shard-size is a list, but --shard-size takes"),
    ("[decode]\nshard-size = {a = 1}\n", ": [decode] shard-size is a table, but --shard-size"),
    ("[decode]\nforce = 'yes'\n", ": [decode] force is 'yes'; --force is an on/off flag"),
    ("limit = true\n", ": limit is true, but --limit is not an on/off flag"),
    ("[decode]\nstart = 1979-05-27\n", ': [decode] start is a date or time; write it in quotes ("'),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_MISTAKES, ids=[t for t, _ in CONFIG_MISTAKES])
def test_config_values_of_the_wrong_kind_name_the_file_and_key(runner, tmp_path, text, message):
    config = tmp_path / "gtok.toml"
    config.write_text(text)
    args = ["decode", tmp_path / "t.zarr", "-o", tmp_path / "out", "--config", config]
    assert_one_error(_in_process(runner, *args), exit_code=2, contains=f"{config}{message}")


# ---- 18: a bad value is blamed on where it came from -------------------------------------


@pytest.mark.parametrize("source", ["flag", "environment", "config"])
def test_a_bad_value_is_blamed_on_its_source(runner, tmp_path, monkeypatch, source):
    config = tmp_path / "gtok.toml"
    config.write_text("[decode]\nshard-size = 0\n")
    args = ["decode", tmp_path / "t.zarr", "-o", tmp_path / "out", "--format", "wds"]
    blamed = {
        "flag": "Invalid value for '--shard-size': ",
        "environment": "'--shard-size' (from the environment variable GTOK_DECODE_SHARD_SIZE)",
        "config": f"'--shard-size' (from [decode] shard-size in the config file {config})",
    }[source]
    if source == "flag":
        args += ["--shard-size", "0"]
    elif source == "environment":
        monkeypatch.setenv("GTOK_DECODE_SHARD_SIZE", "0")
    else:
        args += ["--config", config]
    line = assert_one_error(_in_process(runner, *args), exit_code=2, contains=blamed)
    assert ("GTOK_DECODE_SHARD_SIZE" in line) == (source == "environment"), line
