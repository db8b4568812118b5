"""Every `gtok` command once without `--json`, on small inputs: exit 0 and its summary on stdout.

The `--json` paths have their own tests; the plain text went untested, and
`gtok convert-official` crashed there after writing the model. The list of
commands comes from the app, so a new command without a case here fails
`test_every_command_has_a_case`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from shardmaker import jpeg, write_clean_shards
from test_convert import _synthetic_state

from gtok.cli.main import app
from gtok.demo import DEMO_PHOTOS


def _convert(tmp: Path, fixtures: dict) -> list:
    torch.save({"state_dict": _synthetic_state("cifar")}, tmp / "last.ckpt")
    return ["convert-official", tmp / "last.ckpt", "-o", tmp / "cifar"]


def _train(tmp: Path, fixtures: dict) -> list:
    write_clean_shards(tmp / "train", 1, 4)
    overrides = ["--model", "num_gaussians=16", "--model", "codebook_size=64"]
    return [
        *("train", tmp / "train", "--preset", "tiny", "-o", tmp / "run", "--steps", "1"),
        *("--batch-size", "2", "--image-size", "32", "--workers", "0", *overrides),
    ]


def _pack(tmp: Path, fixtures: dict) -> list:
    (tmp / "images").mkdir()
    for i in range(3):
        (tmp / "images" / f"{i}.jpg").write_bytes(jpeg(i))
    return ["pack", tmp / "images", "-o", tmp / "packed", "--workers", "0"]


def _demo(tmp: Path, fixtures: dict) -> list:
    (tmp / "photos").mkdir()
    for photo in sorted(DEMO_PHOTOS.glob("*.jpg"))[:3]:
        shutil.copy(photo, tmp / "photos")
    return ["demo", "-o", tmp / "demo", "-m", fixtures["model"], "--photos", tmp / "photos"]


def _fit_codebook(tmp: Path, fixtures: dict) -> list:
    from gtok.encode import encode_shards

    store = tmp / "b8.zarr"
    encode_shards([fixtures["shards"]], store, fixtures["model"], geometry_bits=8, workers=0)
    return ["fit-codebook", store, "-o", tmp / "codebook.npz", "--size", "16"]


# command -> (its arguments, given a temporary folder and the fixtures; text it prints)
CASES: dict[str, tuple[Callable[[Path, dict], list], str]] = {
    "env": (lambda tmp, f: ["env"], "taichi kernels"),
    "convert-official": (_convert, "from EMA weights"),
    "encode": (
        lambda tmp, f: [
            "encode",
            f["shards"],
            "-o",
            tmp / "t.zarr",
            "-m",
            f["model"],
            "--workers",
            "0",
        ],
        "encoded 11 images",
    ),
    "fit-codebook": (_fit_codebook, "bits per Gaussian"),
    "info": (lambda tmp, f: ["info", f["store"]], "rows"),
    "verify": (lambda tmp, f: ["verify", f["store"], "--against", f["shards"]], ": ok;"),
    "decode": (
        lambda tmp, f: ["decode", f["store"], "-o", tmp / "recon", "--limit", "2"],
        "decoded 2",
    ),
    "eval": (
        lambda tmp, f: ["eval", f["shards"], "-m", f["model"], "--workers", "0", "--limit", "2"],
        "PSNR (dB)",
    ),
    "train": (_train, "done: step 1/1"),
    "pack": (_pack, "packed 3 images"),
    "demo": (_demo, "3 images, 8 tokens each"),
}


def test_every_command_has_a_case():
    assert sorted(c.name for c in app.registered_commands) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("command", sorted(CASES))
def test_plain_output(runner, tmp_path, command, model, shards, store, no_weights):
    make_args, expected = CASES[command]
    args = make_args(tmp_path, {"model": model, "shards": shards, "store": store})
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    detail = f"\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 0, f"{result.exception!r}{detail}"
    assert expected in result.stdout, detail
    assert "Traceback" not in result.stderr, detail
    padded = [line for line in result.stdout.splitlines() if line != line.rstrip()]
    assert not padded, f"trailing spaces{detail}"


def test_eval_notes_missing_weights_on_stderr_one_short_line_each(
    runner, model, shards, no_weights
):
    args = ["eval", str(shards), "-m", str(model), "--workers", "0", "--limit", "2"]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "PSNR (dB)" in result.stdout and "unavailable:" not in result.stdout
    notes = [line for line in result.stderr.splitlines() if "unavailable:" in line]
    assert [n.split(":")[0] for n in notes] == [
        "lpips_vgg unavailable",  # its two files: backbone, heads
        "lpips_vgg unavailable",
        "lpips_alex unavailable",
        "lpips_alex unavailable",
        "rfid unavailable",
    ]
    assert "no pt_inception-2015-12-05-6726825d.pth (set GTOK_INCEPTION_WEIGHTS" in notes[-1]
    assert max(len(n) for n in notes) <= 110, notes  # was one of ~350 characters per metric
