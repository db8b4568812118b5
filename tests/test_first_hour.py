"""The first hour of a new user: errors that name the next step and
the flag, a `gtok train` that lists what it needs and explains its first steps, one naming
scheme across commands (old spellings hidden but taken), `--skip` that silences notes."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from PIL import Image
from shardmaker import write_tar
from test_train import SMALL, _gradients

import gtok.train.step as step_module
from gtok.cli._common import RENAMED
from gtok.cli.main import app
from gtok.plainprogress import human_duration
from gtok.train.progress import run_estimate

COMMANDS = sorted(command.name for command in app.registered_commands)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of two JPEG photos, as a new user has."""
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for name in ("a.jpg", "b.JPG"):
        Image.new("RGB", (40, 32), (200, 30, 30)).save(folder / name, "JPEG")
    return folder


@pytest.fixture(scope="module")
def train_shard(tmp_path_factory) -> Path:
    return write_tar(tmp_path_factory.mktemp("data") / "four.tar", _gradients(4, start=50))


def _one_line_error(result, *needles: str) -> None:
    """Check that a command failed with one error line on stderr holding `needles`."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert all(needle in errors[0] for needle in needles), errors[0]


# -- point 2: errors that name the next step -------------------------------------------


def test_an_image_folder_is_read_and_a_typo_is_one_sentence(runner, photos, tmp_path):
    train = runner.invoke(app, ["train", str(photos), "--preset", "tiny", "--steps", "1", "-o"])
    assert train.exit_code == 2  # -o without a value: a usage error before any data is read
    typo = runner.invoke(app, ["encode", str(photos) + "x", "-o", str(tmp_path / "t.zarr")])
    _one_line_error(typo, "does not exist", "folders of .tar shards, .parquet files or images")


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "*.jpg"])
def test_an_image_given_as_a_shard_points_to_gtok_pack(runner, photos, name):
    spec = str(photos / name)
    result = runner.invoke(app, ["eval", spec, "--workers", "0"])
    _one_line_error(result, "is an image, not a .tar shard", "gtok pack FOLDER -o SHARDS")


@pytest.mark.parametrize(
    ("name", "head", "needle"),
    [
        ("x.zip", b"PK\x03\x04", "is a ZIP file, not a tar shard or Parquet file"),
        ("x.pdf", b"%PDF-", "is a PDF file, not a tar shard or Parquet file"),
        ("x.tar", b"PAR1", "Cannot read the Parquet file x.tar"),  # Parquet by its bytes
    ],
)
def test_a_file_that_is_no_tar_is_refused_before_any_store_is_made(
    runner, tmp_path, name, head, needle
):
    """By its first bytes, whatever its name: a ZIP (or a damaged Parquet file) given as a
    shard used to end in an empty store marked complete, exit 0."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / name).write_bytes(head + bytes(4096) + head)
    store = tmp_path / "t.zarr"
    for spec in (folder / name, folder / "x.*"):
        encode = runner.invoke(app, ["encode", str(spec), "-o", str(store), "--workers", "0"])
        _one_line_error(encode, needle)
        assert not store.exists()
    evaluate = runner.invoke(app, ["eval", str(folder / name), "--workers", "0"])
    _one_line_error(evaluate, needle)


# -- point 3: gtok train says what it needs and how long it takes ------------------------


def test_train_lists_every_missing_setting_in_one_error(runner):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    for needed in ("SHARDS", "--preset (cifar, imagenet, tiny", "--steps N or --epochs E"):
        assert needed in result.stderr
    assert "-o/--output RUN_DIR" in result.stderr
    some = runner.invoke(app, ["train", "shards/", "--epochs", "1", "-o", "runs/a"])
    needs = some.stderr.split("needs")[1].split("Example")[0]
    assert some.exit_code == 2 and "--preset" in needs
    assert "--steps" not in needs and "--output" not in needs


def test_train_help_marks_the_required_settings(runner):
    help_text = " ".join(runner.invoke(app, ["train", "--help"]).stdout.split())
    assert re.search(r"--preset <[a-z|-]+> Model preset .*?\[required\]", help_text)
    assert re.search(r"-o, --output <dir> Run directory.*?\[required\]", help_text)
    assert "[required: this or --epochs]" in help_text


def test_train_setting_errors_name_their_flags(runner, train_shard, tmp_path):
    args = [str(train_shard), "--preset", "tiny", "-o", str(tmp_path / "run")]
    result = runner.invoke(app, ["train", *args, "--steps", "0", "--batch-size", "0"])
    assert result.exit_code == 2
    assert "--steps must be at least 1" in result.stderr
    assert "--batch-size must be at least 1" in result.stderr
    both = runner.invoke(app, ["train", *args, "--steps", "2", "--epochs", "1"])
    assert both.exit_code == 2 and "exactly one of --steps and --epochs" in both.stderr


def _small_run(shard: Path, run_dir: Path, steps: int) -> list[str]:
    args = [str(shard), "--preset", "tiny", "-o", str(run_dir), "--steps", str(steps)]
    args += ["--batch-size", "2", "--image-size", "32", "--workers", "0", "--no-augment"]
    args += [f"--model={key}={value}" for key, value in SMALL.items()]
    return ["train", *args]


def test_train_logs_its_first_step_with_an_estimate_of_the_run(runner, train_shard, tmp_path):
    run_dir = tmp_path / "run"
    result = runner.invoke(app, _small_run(train_shard, run_dir, 3))  # log every 10 steps
    assert result.exit_code == 0, result.output
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"] == [1, 3]
    estimate = re.search(r"step 1/3: [\d.]+ img/s; the 2 steps to go take (\S+ \S+)", result.stderr)
    assert estimate, result.stderr
    assert "step 1/3  " in result.stderr  # the first loss line, on a log file too


def test_ctrl_c_saves_and_exits_130(runner, train_shard, tmp_path, monkeypatch):
    original, calls = step_module.l1_loss, []

    def ctrl_c_in_step_one(recon, target):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(recon, target)

    monkeypatch.setattr(step_module, "l1_loss", ctrl_c_in_step_one)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, _small_run(train_shard, run_dir, 4))
    assert result.exit_code == 130, result.output
    assert "interrupted; rerun the same command to resume." in result.stderr
    assert (run_dir / "checkpoints" / "step-000001.pt").is_file()


def test_the_estimate_reads_as_a_duration_and_suggests_steps_on_a_cpu():
    # README's run on a loaded 2-core CPU: 20,000 steps of 16 images at 2.5 img/s
    line = run_estimate(1, 20_000, 2.5, 16, cpu=True)
    assert "2.5 img/s; the 19999 steps to go take ~36 h at this rate" in line
    assert "for a first try, --steps 93 takes ~10 min" in line
    assert "--steps" not in run_estimate(1, 20_000, 2.5, 16, cpu=False)
    assert "--steps" not in run_estimate(1, 200, 25.0, 16, cpu=True)  # ~2 min: fine
    seconds = {0: "0 s", 44.6: "~45 s", 124: "~2 min", 36 * 3600: "~36 h", 295_107: "~3.4 days"}
    assert {s: human_duration(s) for s in seconds} == seconds


# -- point 4: one naming scheme ----------------------------------------------------------


def test_old_spellings_are_taken_but_not_shown(runner, tmp_path):
    for command, renamed in RENAMED.items():
        help_text = runner.invoke(app, [command, "--help"]).stdout
        for old, new in renamed.items():
            assert new in help_text and not re.search(rf"{old}\b(?!-)", help_text), old
    result = runner.invoke(app, ["train", "shards/", "--preset", "tiny", "--out", "runs/a"])
    assert result.exit_code == 2 and "--output" not in result.stderr.split("needs")[1]
    assert "--out is now --output" in result.stderr
    config = tmp_path / "train.toml"
    config.write_text('[train]\nout = "runs/a"\nvgg-weights = "vgg16.pth"\n')
    from_file = runner.invoke(app, ["train", "--config", str(config)])
    assert from_file.exit_code == 2 and "--output" not in from_file.stderr


def test_every_command_writes_to_output(runner):
    for command in ("train", "encode", "decode", "pack", "demo", "convert-official"):
        assert "-o, --output <" in runner.invoke(app, [command, "--help"]).stdout, command


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", "--optimizer <adamw|adam>"),
        ("train", "--recipe <authors|small>"),
        ("train", "--precision <auto|fp32|bf16|fp16>"),
        ("encode", "--refine-loss <psnr|mse|l1>"),
        ("pack", "--overwrite / --no-overwrite"),
        ("info", "Usage: gtok info [OPTIONS] {STORE}"),
        ("encode", "Usage: gtok encode [OPTIONS] [SHARDS]..."),
    ],
)
def test_choices_and_placeholders_read_the_same_everywhere(runner, command, shown):
    assert shown in runner.invoke(app, [command, "--help"], prog_name="gtok").stdout


def test_a_bad_choice_is_refused_in_clicks_words(runner):
    result = runner.invoke(app, ["eval", "shards/", "--skip", "lpips"])
    assert result.exit_code == 2
    expected = "Invalid value for '--skip': 'lpips' is not one of 'lpips-vgg', 'lpips-alex'"
    assert expected in result.stderr and "Value error" not in result.stderr


def _examples(help_text: str) -> list[list[str]]:
    """The example blocks of a help text: each its label line and command lines, stripped."""
    blocks, block = [], None
    for line in help_text.splitlines():
        if line.strip().startswith("Example"):
            block = [line.strip()]
            blocks.append(block)
        elif block is not None and line.strip():
            block.append(line.strip())
        else:
            block = None
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_are_never_wrapped_inside_a_command(runner, command):
    narrow, wide = (
        _examples(runner.invoke(app, [command, "--help"], env={"COLUMNS": width}).stdout)
        for width in ("60", "200")
    )
    assert narrow and narrow == wide  # laid out the same whatever the width
    for label, first, *more in narrow:
        assert label.endswith(":") and first.startswith("gtok "), (label, first)
        for line, after in zip([first, *more], more, strict=False):  # shell continuations
            assert line.endswith(" \\") and after.startswith("-"), (line, after)


# -- point 5: --skip silences the notes of skipped metrics -------------------------------


def test_skipped_metrics_print_no_notes_and_missing_files_one_line_each(
    runner, no_weights, shards, model
):
    args = ["eval", str(shards), "-m", str(model), "--workers", "0", "--limit", "2", "--json"]
    skip = ["--skip", "rfid", "--skip", "lpips-vgg", "--skip", "lpips-alex"]
    quiet = runner.invoke(app, [*args, *skip])
    assert quiet.exit_code == 0, quiet.output
    assert "unavailable" not in quiet.stderr
    assert json.loads(quiet.stdout)["unavailable"]["rfid"] == "skipped on request"
    noisy = runner.invoke(app, [*args, "--skip", "lpips-alex"])
    notes = [line for line in noisy.stderr.splitlines() if "unavailable" in line]
    assert [note.split(":")[0] for note in notes] == ["lpips_vgg unavailable"] * 2 + [
        "rfid unavailable"
    ]
    assert not any(str(Path.home()) in note or str(no_weights) in note for note in notes)
