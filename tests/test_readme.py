"""Every command example of the README, run as written (read from README.md) in a folder
holding the images, shards and model directories it names (stand-in models of random
weights: `runs/cifar` and `runs/vq-cifar` are small `tiny` and `vq-tiny` models).

Quickstart and "Packing images" run in-process; "Token stores", "Tokens for sequence
models" (with the Python snippet there) and "Decoding and evaluation" run whole, as bash
scripts with the installed `gtok` on PATH (the 4-process encode loop included); the training
example of the command table runs until a Ctrl-C. Lines holding `...` are templates, not
examples. The "## Python" blocks run in-process, in order. The README's TokenStore
training-loop snippet is run by tests/test_encode.py, `make demo` by tests/test_demo.py.
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
from PIL import Image
from shardmaker import write_tar

import gtok
from gtok.cli.main import app
from gtok.demo import DEMO_PHOTOS
from gtok.store import TokenStore

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
IN_PROCESS = ("## Quickstart", "## Packing images")
AS_SCRIPTS = ("## Token stores", "## Tokens for sequence models", "## Decoding and evaluation")
PHOTOS = sorted(DEMO_PHOTOS.glob("*.jpg"))
TRAIN_EXAMPLE = re.compile(r"e\.g\. `(gtok train [^`]+)`")


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return text[start : end if end > 0 else None]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def example_lines(block: str) -> list[str]:
    """The commands of a bash block, without comments, blank lines and `...` templates."""
    lines = [line.split(" #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and "..." not in line]


def readme_commands(title: str) -> list[list[str]]:
    """The `gtok ...` lines of the bash blocks of one README section, as argument lists."""
    lines = [line for block in bash_blocks(section(title)) for line in example_lines(block)]
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
    text = README.read_text()
    titles = re.findall(r"^## .+$", text, re.M)
    for title in titles:
        lines = [line for b in bash_blocks(section(title)) for line in example_lines(b)]
        gtok_lines = [line for line in lines if "gtok " in line]
        assert title in IN_PROCESS + AS_SCRIPTS or not gtok_lines, (title, gtok_lines)
    inline = re.findall(r"e\.g\. `(gtok [^`]+)`", text)
    script_lines = {
        line
        for t in IN_PROCESS + AS_SCRIPTS
        for b in bash_blocks(section(t))
        for line in example_lines(b)
    }
    unrun = [line for line in inline if line not in script_lines]
    assert unrun == TRAIN_EXAMPLE.findall(text), unrun  # the one run by its own test below


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
    commands = [c for title in IN_PROCESS for c in readme_commands(title)]
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
    """The "## Python" blocks, run in order in one namespace, in a folder holding photo.jpg
    and tokens.zarr (three photographs encoded by `gtok encode` with the default model)."""
    shutil.copy(PHOTOS[0], tmp_path / "photo.jpg")
    write_tar(
        tmp_path / "shards" / "s.tar", [(p.stem, {"jpg": p.read_bytes()}) for p in PHOTOS[:3]]
    )
    monkeypatch.chdir(tmp_path)
    encoded = runner.invoke(app, ["encode", "shards", "-o", "tokens.zarr", "--workers", "0"])
    assert encoded.exit_code == 0, encoded.stderr
    namespace: dict = {}
    blocks = re.findall(r"```python\n(.*?)```", section("## Python"), re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
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
    for title in AS_SCRIPTS:
        script = "\n".join(line for b in bash_blocks(section(title)) for line in example_lines(b))
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
    assert len(list((workspace / "recon").rglob("*.gaussians.png"))) == 4
    assert sorted(p.name for p in (workspace / "recon-wds").glob("*.tar")) == ["recon-000000.tar"]
    compare = json.loads((workspace / "compare.json").read_text())
    assert compare["n"] == compare["compare"]["n"] == 4
    assert (workspace / "report" / "metrics.json").is_file()
    assert json.loads((workspace / "prior" / "results.json").read_text())["val_bits_per_id"]
    snippet = section("## Tokens for sequence models").split("```python\n", 1)[1].split("```")[0]
    code = f"import gtok\n{snippet}\nassert len(tokens.indices) == 4"
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=_script_env())
    assert done.returncode == 0


@pytest.mark.subprocess
def test_the_training_example_runs_and_a_ctrl_c_saves_the_step(tmp_path, no_weights):
    (command,) = TRAIN_EXAMPLE.findall(README.read_text())
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
