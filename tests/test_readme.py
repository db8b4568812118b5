"""Every command example of README.md and of the docs/ pages that hold the rest of the user
documentation, run as written (read from the pages) in a folder holding the images, shards
and model directories they name (stand-in models of random weights: `runs/cifar` and
`runs/vq-cifar` are small `tiny` and `vq-tiny` models).

README's Quickstart and docs/packing.md run in-process; README's "Tokens for sequence
models", docs/stores.md ("Encoding" and "Tokens for sequence models", with the Python
snippet there) and docs/evaluation.md run whole, as bash scripts with the installed `gtok`
on PATH (the 4-process encode loop included; examples/ copied beside them); the
training example of docs/commands.md runs until a Ctrl-C. Lines holding
`...` are templates, not examples. README's "## Python" block and then docs/python.md's run
in-process, in order, in one namespace. The TokenStore training-loop snippet of
docs/stores.md is run by tests/test_encode.py, `make demo` by tests/test_demo.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from docskit import DOCS, README, REPO, bash_blocks, example_lines, pages, python_blocks, section
from PIL import Image
from shardmaker import write_tar

import gtok
from gtok.cli.main import app
from gtok.demo import DEMO_PHOTOS
from gtok.store import TokenStore

STORES, EVALUATION, COMMANDS = DOCS / "stores.md", DOCS / "evaluation.md", DOCS / "commands.md"
IN_PROCESS = ((README, "## Quickstart"), (DOCS / "packing.md", "# Packing images"))
AS_SCRIPTS = (
    (README, "## Tokens for sequence models"),
    (STORES, "## Encoding"),
    (STORES, "## Tokens for sequence models"),
    (EVALUATION, "# Decoding and evaluation"),
)
PYTHON = ((README, "## Python"), (DOCS / "python.md", "# Python"))
PHOTOS = sorted(DEMO_PHOTOS.glob("*.jpg"))
TRAIN_EXAMPLE = re.compile(r"e\.g\. `(gtok train [^`]+)`")


def section_lines(page: Path, title: str) -> list[str]:
    """The example lines of the bash blocks of one section."""
    return [line for block in bash_blocks(section(page, title)) for line in example_lines(block)]


def readme_commands(page: Path, title: str) -> list[list[str]]:
    """The `gtok ...` lines of the bash blocks of one section, as argument lists."""
    lines = section_lines(page, title)
    return [shlex.split(line)[1:] for line in lines if line.startswith("gtok ")]


def _copy(photos: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, folder / photo.name)


def _script_env(**extra: str) -> dict[str, str]:
    """The environment of a README script: the installed `gtok` first on PATH, no worker
    processes and one thread per process (several run at once on a small machine)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({f"GTOK_{c}_WORKERS": "0" for c in ("PACK", "ENCODE", "EVAL", "TRAIN")})
    return env


def test_every_example_is_in_a_section_this_file_runs():
    run = [
        block
        for page, title in IN_PROCESS + AS_SCRIPTS
        for block in bash_blocks(section(page, title))
    ]
    for page in pages():
        for block in bash_blocks(page.read_text()):
            gtok_lines = [line for line in example_lines(block) if "gtok " in line]
            assert block in run or not gtok_lines, (page.name, gtok_lines)
    inline = [line for p in pages() for line in re.findall(r"e\.g\. `(gtok [^`]+)`", p.read_text())]
    script_lines = {
        line for page, title in IN_PROCESS + AS_SCRIPTS for line in section_lines(page, title)
    }
    unrun = [line for line in inline if line not in script_lines]
    assert unrun == TRAIN_EXAMPLE.findall(COMMANDS.read_text()), unrun  # run by its own test


@pytest.mark.slow
def test_quickstart_and_packing_run_as_written(
    runner, tmp_path, monkeypatch, standin_default, no_weights
):
    _copy(PHOTOS[:2], tmp_path / "my-photos")
    _copy(PHOTOS[2:4], tmp_path / "my-photos" / "more")
    _copy(PHOTOS[:2], tmp_path / "photos")
    _copy(PHOTOS[:2], tmp_path / "train" / "cats")
    _copy(PHOTOS[2:4], tmp_path / "train" / "dogs")
    monkeypatch.chdir(tmp_path)
    env = {f"GTOK_{c}_WORKERS": "0" for c in ("PACK", "ENCODE", "EVAL")}  # no worker processes
    commands = [c for page, title in IN_PROCESS for c in readme_commands(page, title)]
    assert [c[0] for c in commands] == ["pack", "encode", "decode", "eval", "pack", "pack", "pack"]
    for command in commands:
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 0, (command, result.stderr)
    assert len(TokenStore("tokens.zarr")) == 4
    assert len(list(Path("recon").rglob("*.gaussians.png"))) == 4
    assert Path("report/metrics.json").is_file() and Path("report/grid.png").is_file()
    classes = json.loads((tmp_path / "train-shards" / "classes.json").read_text())
    assert classes == {"cats": 0, "dogs": 1}
    with tarfile.open(tmp_path / "jpg-shards" / "shard-000000.tar") as tar:
        assert {Path(n).suffix for n in tar.getnames()} == {".jpg", ".json"}


@pytest.mark.slow
def test_python_section_runs_as_written(runner, tmp_path, monkeypatch, standin_default):
    """The Python blocks of README and docs/python.md, run in order in one namespace, in a
    folder holding photo.jpg and tokens.zarr (three photographs encoded by `gtok encode`
    with the default model)."""
    shutil.copy(PHOTOS[0], tmp_path / "photo.jpg")
    write_tar(
        tmp_path / "shards" / "s.tar", [(p.stem, {"jpg": p.read_bytes()}) for p in PHOTOS[:3]]
    )
    monkeypatch.chdir(tmp_path)
    encoded = runner.invoke(app, ["encode", "shards", "-o", "tokens.zarr", "--workers", "0"])
    assert encoded.exit_code == 0, encoded.stderr
    namespace: dict = {}
    blocks = [(page, b) for page, title in PYTHON for b in python_blocks(section(page, title))]
    assert len(blocks) == 2
    for page, block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    recon = Image.open(tmp_path / "photo-recon.png")
    assert recon.size == (64, 64) and recon.mode == "RGB"
    assert namespace["batch"]["indices"].dtype == torch.int64
    assert namespace["x"].shape == (3, 64, 512)
    indices, geometry = namespace["encoder"].module()(namespace["tok"].preprocess(recon))
    assert indices.shape == (1, 64) and geometry.shape == (1, 64, 5)


@pytest.fixture
def workspace(tmp_path, runner, standin_model, no_weights) -> Path:
    """./shards and ./val-shards (4 photographs, one per shard), runs/cifar, runs/vq-cifar."""
    _copy(PHOTOS[:4], tmp_path / "photos")
    for name in ("shards", "val-shards"):
        args = ["pack", str(tmp_path / "photos"), "-o", str(tmp_path / name), "--per-shard", "1"]
        assert runner.invoke(app, args).exit_code == 0
    shutil.copytree(standin_model, tmp_path / "runs" / "cifar")
    vq = gtok.build_tokenizer("vq-tiny", seed=1)
    vq.eval().save_pretrained(tmp_path / "runs" / "vq-cifar")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


@pytest.mark.subprocess
def test_token_store_and_evaluation_scripts_run_as_written(workspace):
    for page, title in AS_SCRIPTS:
        script = "\n".join(section_lines(page, title))
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=workspace,
            env=_script_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (title, done.stderr[-3000:])
    store = TokenStore(workspace / "tokens.zarr")
    assert len(store) == 4 and store.counts["skipped"] == 0
    codebook = TokenStore(workspace / "train.zarr")  # README's layout for sequence models
    assert codebook.layout == "codebook" and codebook.sequences().shape == (4, 2 * 64)
    assert len(list((workspace / "recon").rglob("*.gaussians.png"))) == 4
    assert sorted(p.name for p in (workspace / "recon-wds").glob("*.tar")) == ["recon-000000.tar"]
    compare = json.loads((workspace / "compare.json").read_text())
    assert compare["n"] == compare["compare"]["n"] == 4
    assert (workspace / "report" / "metrics.json").is_file()
    assert json.loads((workspace / "prior" / "results.json").read_text())["val_bits_per_id"]
    (snippet,) = python_blocks(section(STORES, "## Tokens for sequence models"))
    code = f"import gtok\n{snippet}\nassert len(tokens.indices) == 4"
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=_script_env())
    assert done.returncode == 0


@pytest.mark.subprocess
def test_the_training_example_runs_and_a_ctrl_c_saves_the_step(tmp_path, no_weights):
    (command,) = TRAIN_EXAMPLE.findall(COMMANDS.read_text())
    samples = [(p.stem, {"jpg": p.read_bytes()}) for p in PHOTOS]
    write_tar(tmp_path / "data" / "train-000000.tar", samples[:32])
    write_tar(tmp_path / "data" / "val-000000.tar", samples[32:])
    env = _script_env(GTOK_TRAIN_LOG_EVERY="1")  # a record per step; the command is unchanged
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while '"kind": "train"' not in (metrics.read_text() if metrics.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr  # stopped by Ctrl-C, as encode: saved, not finished
    settings = json.loads((tmp_path / "runs" / "tiny" / "train.json").read_text())["settings"]
    assert (settings["preset"], settings["steps"], settings["batch_size"]) == ("tiny", 20000, 16)
    assert list((tmp_path / "runs" / "tiny" / "checkpoints").glob("step-*.pt"))
    assert (tmp_path / "runs" / "tiny" / "model" / "model.safetensors").is_file()
