"""tools/gpu_bundle.py: `make gpu-bundle` stays under 48 MiB and holds every dependency the GPU
machine lacks (taichi trimmed, still a valid wheel), and `make gpu-check` without `.venv`
runs bench/gpu_check.py from a bundle with a `python3` that has torch and nothing else of
gtok's dependencies: here a fresh venv that sees only torch and torch's own dependencies,
with the bundle built for this Python (`--target-has torch`). The wheels come from PyPI
through pip; the tests skip, naming the reason, only when pip cannot download."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from scriptkit import ROOT, script_module

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
GTOK_IMPORTS = (  # what gtok imports besides torch (its dependencies' import names)
    "numpy", "PIL", "rich", "typer", "yaml", "webdataset", "braceexpand", "zarr",
    "numcodecs", "google_crc32c", "donfig", "taichi", "safetensors", "matplotlib",
)  # fmt: skip


@pytest.fixture(scope="module")
def gpu_bundle():
    with script_module(ROOT / "tools" / "gpu_bundle.py") as module:
        yield module


@pytest.fixture(scope="module")
def wheel_cache(gpu_bundle, tmp_path_factory) -> Path:
    """A folder the tests' downloads share; skips when pip cannot download a wheel."""
    cache = tmp_path_factory.mktemp("wheels")
    version = importlib.metadata.version("braceexpand")
    try:
        gpu_bundle.download({"braceexpand": version}, HERE, cache)
    except gpu_bundle.BundleError as exc:
        pytest.skip(f"PyPI cannot be reached: {exc}")
    return cache


@pytest.mark.subprocess
def test_the_gpu_machine_bundle_is_under_48_mib_with_what_it_lacks(
    gpu_bundle, wheel_cache, tmp_path
):
    out = tmp_path / "bundle"
    assert gpu_bundle.main(["build", "--out", str(out), "--cache", str(wheel_cache)]) == 0
    manifest = json.loads((out / "bundle.json").read_text())
    wheels = sorted(out.glob("*.whl"))
    assert manifest["python"] == "3.12" and manifest["wheels"] == [w.name for w in wheels]
    assert sum(w.stat().st_size for w in wheels) == manifest["bytes"] < 48 * 2**20
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels}
    lacking = {"taichi", "zarr", "numcodecs", "webdataset", "braceexpand", "google-crc32c"}
    assert names >= lacking | {"donfig", "dill", "fsspec"}, names
    assert not names & {"torch", "numpy", "rich", "typer", "pillow", "matplotlib"}, names
    assert all("-cp312-" in w.name or "-py" in w.name for w in wheels)

    taichi = next(w for w in wheels if w.name.startswith("taichi-"))
    with zipfile.ZipFile(taichi) as archive:
        files = set(archive.namelist())
        record = next(n for n in files if n.endswith(".dist-info/RECORD"))
        listed = {row.split(",")[0] for row in archive.read(record).decode().splitlines()}
    assert listed == files  # a valid wheel: RECORD lists exactly what it holds
    assert not any("c_api/" in f or "examples/" in f or ".data/" in f for f in files)
    assert any(f.startswith("taichi/_lib/core/taichi_python") for f in files)


def _torch_only_site(folder: Path) -> Path:
    """A folder of links to torch and its own dependencies' installed files (nothing else
    of this environment)."""
    folder.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        seen.add(dist.metadata["Name"].lower())
        for top in {Path(f).parts[0] for f in dist.files} - {".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))
        needs = [Requirement(line) for line in dist.requires or []]
        todo += [r.name for r in needs if not r.marker and r.name.lower() not in seen]
    return folder


def _python_with_only_torch(tmp_path: Path) -> Path:
    """A fresh venv's bin folder whose python3 imports torch but none of GTOK_IMPORTS."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "torch-only.pth").write_text(str(_torch_only_site(tmp_path / "torch-only")) + "\n")
    probe = (
        "import importlib.util as u, sys, torch; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    )
    seen = subprocess.run(
        [venv / "bin" / "python3", "-c", probe, *GTOK_IMPORTS],
        capture_output=True, text=True, check=True, env=_without_pythonpath(),
    )  # fmt: skip
    assert seen.stdout.strip() == "[]", seen.stdout
    return venv / "bin"


def _without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.subprocess
def test_make_gpu_check_without_venv_runs_from_the_bundle(gpu_bundle, wheel_cache, tmp_path):
    bundle = tmp_path / "bundle"
    build = ["build", "--out", str(bundle), "--cache", str(wheel_cache)]
    assert gpu_bundle.main([*build, "--python-version", HERE, "--target-has", "torch"]) == 0
    bare = _python_with_only_torch(tmp_path)
    report = tmp_path / "check.json"
    env = _without_pythonpath() | {"PATH": f"{bare}{os.pathsep}{os.environ['PATH']}"}
    make = ["make", "-s", "-C", str(ROOT), "gpu-check", f"VENV={tmp_path / 'no-venv'}"]
    make += [f"GPU_BUNDLE={bundle}", f"GPU_CHECK_ARGS=--device cpu --quick --out {report}"]
    started = time.perf_counter()
    done = subprocess.run(make, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["ok"] and result["machine"]["device"] == "cpu", result
    assert set(result["parts"]) == {
        "kernels", "vulkan_kernels", "train_bf16", "torchrun_train", "encode_decode_eval",
        "imagenet_encode",
    }  # fmt: skip
    assert seconds < 8 * 60, seconds


def test_a_bundle_for_another_python_is_one_error_line(gpu_bundle, tmp_path, capsys):
    (tmp_path / "bundle.json").write_text(json.dumps({"python": "2.7", "wheels": []}))
    assert gpu_bundle.main(["run", "--bundle", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Python 2.7" in err[0] and f"--python-version {HERE}" in err[0]


def test_a_missing_bundle_says_how_to_make_it(gpu_bundle, tmp_path, capsys):
    assert gpu_bundle.main(["run", "--bundle", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "make gpu-bundle" in err and "\n" not in err


def test_where_only_libcuda_so_1_loads_the_check_gets_a_libcuda_so_link(
    gpu_bundle, tmp_path, monkeypatch
):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    monkeypatch.setenv("PYTHONPATH", "/work/src")
    env = gpu_bundle.child_env(tmp_path / "site", tmp_path, "/drivers/libcuda.so.580.1")
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path}{os.pathsep}/opt/lib"
    assert os.readlink(tmp_path / "libcuda.so") == "/drivers/libcuda.so.580.1"
    assert env["PYTHONPATH"] == f"{tmp_path / 'site'}{os.pathsep}/work/src"
    plain = gpu_bundle.child_env(tmp_path / "site", tmp_path / "unused", None)
    assert plain["LD_LIBRARY_PATH"] == "/opt/lib" and not (tmp_path / "unused").exists()
