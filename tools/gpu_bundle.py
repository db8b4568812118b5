"""`make gpu-bundle`, and `make gpu-check` on a machine without `.venv`: the wheels of gtok's
runtime dependencies that a CUDA machine without network lacks, and the GPU check run from
them with that machine's own `python3`.

    .venv/bin/python tools/gpu_bundle.py build      # fills .gpu-bundle/ (cp312, manylinux x86_64)
    python3 tools/gpu_bundle.py run [GPU_CHECK_ARGS...]  # there: unpack, run bench/gpu_check.py

The GPU machine (Python 3.12, torch with numpy, rich, typer, pillow, safetensors and
matplotlib; no network) gets whatever else gtok needs through the working tree, which
travels with at most 64 MiB, so the bundle must stay under 48 MiB (tests/test_gpu_bundle.py).

`build` starts from gtok's dependencies (pyproject.toml) and follows each wheel's
Requires-Dist, markers evaluated for the target Python on Linux x86_64, leaving out what the
target already has (`--target-has`). Every other distribution is downloaded with pip at the
version installed in the environment running the build (so the bundle holds the versions
the tests ran). taichi is trimmed (`TRIM`: its C API library, C headers and CMake files,
examples and GUI assets, none of which Python imports) and repacked as a valid wheel. gtok
itself is not in the bundle: the working tree travels with it, and bench/gpu_check.py
imports gtok from there. `bundle.json` names the Python version and the wheels. The build
imports `packaging` (there in gtok's environment); `run` needs only the standard library.

`run` unpacks every wheel into a temporary site folder (a wheel is a zip archive; its
importable files are all the check needs: console scripts, headers and data files are left
out), puts that folder first on PYTHONPATH and runs bench/gpu_check.py with the running
Python, passing on its arguments and its exit status. Where only `libcuda.so.1` is installed
(Taichi opens `libcuda.so`: gtok/kernels/libcuda.py), it puts a `libcuda.so` link to it first on
LD_LIBRARY_PATH for the check.
"""

from __future__ import annotations

import argparse
import email
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / ".gpu-bundle"
MANIFEST = "bundle.json"
LIMIT_MIB = 48  # the working tree (~7 MiB) and the bundle travel in 64 MiB
GPU_PYTHON = "3.12"
# Distributions the target already has: torch (never bundled) and typing-extensions, which
# torch needs; the GPU machine also has these of gtok's dependencies.
TARGETS = {
    "gpu-machine": (
        "torch",
        "typing-extensions",
        "numpy",
        "rich",
        "typer",
        "pillow",
        "safetensors",
        "matplotlib",
    ),
    "torch": ("torch", "typing-extensions"),
}
# wheel entries (fnmatch patterns) left out per distribution: nothing Python imports
TRIM = {
    "taichi": ("taichi/_lib/c_api/*", "taichi/examples/*", "taichi/assets/*", "taichi-*.data/*")
}
GLIBC_MINORS = range(28, 16, -1)  # manylinux_2_28 down to manylinux_2_17 (glibc 2.28 or newer)
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in GLIBC_MINORS),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


class BundleError(Exception):
    """A bundle that cannot be built or run; the message is one sentence with the next step."""


# ---- build --------------------------------------------------------------------------------


def _marker_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of CPython `python` ("3.12") on Linux x86_64."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def _applies(requirement, python: str) -> bool:
    """Whether a `packaging` Requirement holds on the target (no extra asked for)."""
    marker = requirement.marker
    return marker is None or marker.evaluate(_marker_environment(python))


def gtok_requirements(python: str) -> list:
    """gtok's runtime dependencies (pyproject.toml) that hold on the target, as
    `packaging.requirements.Requirement`s."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = [Requirement(line) for line in project["dependencies"]]
    return [r for r in needed if _applies(r, python)]


def wheel_requirements(wheel: Path, python: str) -> list:
    """The Requires-Dist of `wheel`'s METADATA that hold on the target (extras left out)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(name))
    needed = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    return [r for r in needed if _applies(r, python)]


def _installs_on(wheel: Path, python: str) -> bool:
    """Whether the wheel file's tags fit CPython `python` on one of PLATFORMS."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    version = tuple(int(part) for part in python.split("."))
    supported = {
        *tags.cpython_tags(version, platforms=PLATFORMS),
        *tags.compatible_tags(version, f"cp{python.replace('.', '')}", PLATFORMS),
    }
    return bool(parse_wheel_filename(wheel.name)[3] & supported)


def _cached(cache: Path, name: str, version: str, python: str) -> Path | None:
    """The wheel of `name`==`version` for the target in `cache`, if downloaded before."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    wanted = (canonicalize_name(name), Version(version))
    for wheel in sorted(cache.glob("*.whl")):
        found, found_version, _, _ = parse_wheel_filename(wheel.name)
        if (found, found_version) == wanted and _installs_on(wheel, python):
            return wheel
    return None


def download(pins: dict[str, str], python: str, cache: Path) -> dict[str, Path]:
    """The wheel of each name -> version in `pins` for the target, from `cache` or downloaded
    into it with pip (binary wheels only, no dependencies)."""
    missing = {n: v for n, v in pins.items() if _cached(cache, n, v, python) is None}
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--only-binary=:all:", "--implementation", "cp", "--python-version", python]
        command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        command += ["--dest", str(cache), *(f"{n}=={v}" for n, v in sorted(missing.items()))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            reason = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BundleError(
                f"pip could not download {', '.join(sorted(missing))} for Python {python} "
                f"({reason}); check the network and retry"
            )
    return {name: _cached(cache, name, version, python) for name, version in pins.items()}


def _installed_version(name: str, needed_by: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(
            f"{name} (needed by {needed_by}) is not installed in {sys.prefix}, and the bundle "
            "takes the installed versions; run `make setup` and build with .venv/bin/python"
        ) from None


def resolve(python: str, target_has: tuple[str, ...], cache: Path) -> dict[str, Path]:
    """Canonical name -> wheel of every distribution that gtok needs, directly or through
    another wheel's Requires-Dist, and that the target does not have."""
    from packaging.utils import canonicalize_name

    have = {canonicalize_name(name) for name in target_has}
    wheels: dict[str, Path] = {}
    todo = [(requirement, "gtok") for requirement in gtok_requirements(python)]
    while todo:
        pins = {}
        for requirement, needed_by in todo:
            name = canonicalize_name(requirement.name)
            if name in have or name in wheels or name in pins:
                continue
            version = _installed_version(name, needed_by)
            if not requirement.specifier.contains(version, prereleases=True):
                raise BundleError(
                    f"{needed_by} needs {requirement}, but {name} {version} is installed; "
                    "run `make setup` to update the environment"
                )
            pins[name] = version
        fetched = download(pins, python, cache)
        wheels |= fetched
        todo = [
            (r, name) for name, wheel in fetched.items() for r in wheel_requirements(wheel, python)
        ]
    return wheels


def trim(source: Path, destination: Path, patterns: tuple[str, ...]) -> None:
    """Copy the wheel at `source` to `destination` without the entries matching `patterns`,
    its RECORD rewritten to list exactly the entries kept (so it stays a valid wheel)."""

    def dropped(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w") as dst:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines(keepends=True)
                data = "".join(r for r in rows if not dropped(r.split(",")[0])).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)


def build(out: Path, python: str, target_has: str, cache: Path) -> dict[str, Any]:
    """Fill `out` with the wheels `resolve` finds (taichi trimmed) and bundle.json; returns
    the manifest: {"python", "target_has", "wheels": [file names], "bytes"}."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = resolve(python, TARGETS[target_has], cache)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.whl"), out / MANIFEST]:
        old.unlink(missing_ok=True)
    for name, wheel in sorted(wheels.items()):
        if name in TRIM:
            trim(wheel, out / wheel.name, TRIM[name])
        else:
            shutil.copyfile(wheel, out / wheel.name)
    files = sorted(w.name for w in out.glob("*.whl"))
    manifest = {
        "python": python,
        "target_has": target_has,
        "wheels": files,
        "bytes": sum((out / f).stat().st_size for f in files),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---- run (standard library only) -----------------------------------------------------------


def unpack(bundle: Path, site: Path) -> list[str]:
    """Unpack every wheel listed in `bundle`'s bundle.json into the folder `site` (the
    wheels' `*.data/purelib` and `*.data/platlib` files at its top, like the rest; other
    `*.data` files are not importable and are left out). Returns the wheel file names."""
    manifest = read_manifest(bundle)
    for name in manifest["wheels"]:
        with zipfile.ZipFile(bundle / name) as archive:
            for info in archive.infolist():
                head, _, rest = info.filename.partition(".data/")
                if rest and "/" not in head:
                    kind, _, inside = rest.partition("/")
                    if kind not in ("purelib", "platlib") or not inside:
                        continue
                    info.filename = inside
                archive.extract(info, site)
    return manifest["wheels"]


def read_manifest(bundle: Path) -> dict[str, Any]:
    """bundle.json of `bundle`, checked against this Python."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{path} does not exist: run `make gpu-bundle` on a machine with network and "
            "bring the folder along with the working tree"
        )
    manifest = json.loads(path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise BundleError(
            f"{bundle} holds wheels for Python {manifest['python']}, but this is Python {here}: "
            f"rebuild it with `tools/gpu_bundle.py build --python-version {here}`"
        )
    return manifest


def child_env(site: Path, scratch: Path, driver: str | None) -> dict[str, str]:
    """This process's environment with the site folder `site` first on PYTHONPATH, and, where
    `driver` names a CUDA driver library Taichi cannot find (gtok/kernels/libcuda.py), a folder in
    `scratch` holding a `libcuda.so` link to it first on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    if driver is not None:
        (scratch / "libcuda.so").symlink_to(driver)
        paths = [str(scratch), env.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, paths))
    return env


def _unlinked_driver() -> str | None:
    """gtok.kernels.libcuda.unlinked_driver, loaded from its file (the kernels package imports
    taichi, which is not installed until the bundle is unpacked)."""
    spec = importlib.util.spec_from_file_location(
        "libcuda", REPO / "gtok" / "kernels" / "libcuda.py"
    )
    libcuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(libcuda)
    return libcuda.unlinked_driver()


def run(bundle: Path, check_args: list[str]) -> int:
    """Unpack `bundle` into a temporary site folder and run bench/gpu_check.py with
    `check_args` on this Python (see `child_env`); its exit status."""
    if importlib.util.find_spec("torch") is None:
        raise BundleError(
            f"torch is not installed for {sys.executable}; the bundle brings everything "
            "but torch: install torch for it or run with the Python that has torch"
        )
    with tempfile.TemporaryDirectory(prefix="gtok-gpu-site-") as scratch:
        site = Path(scratch) / "site"
        unpack(bundle, site)
        env = child_env(site, Path(scratch), _unlinked_driver())
        check = [sys.executable, str(REPO / "bench" / "gpu_check.py"), *check_args]
        return subprocess.run(check, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="download and trim the wheels into --out")
    make.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    make.add_argument("--python-version", default=GPU_PYTHON, help="target CPython, e.g. 3.12")
    make.add_argument("--target-has", choices=list(TARGETS), default="gpu-machine")
    make.add_argument("--cache", type=Path, help="keep downloaded wheels here (default: none)")
    check = commands.add_parser(
        "run", help="unpack the bundle, run bench/gpu_check.py with the other arguments"
    )
    check.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    args, check_args = parser.parse_known_args(argv)  # run passes the rest to gpu_check.py
    if args.command == "build" and check_args:
        parser.error(f"unrecognized arguments: {' '.join(check_args)}")
    try:
        if args.command == "run":
            return run(args.bundle, check_args)
        with tempfile.TemporaryDirectory(prefix="gtok-wheels-") as scratch:
            manifest = build(
                args.out, args.python_version, args.target_has, args.cache or Path(scratch)
            )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mib = manifest["bytes"] / 2**20
    print(f"{args.out}: {len(manifest['wheels'])} wheels, {mib:.1f} MiB", file=sys.stderr)
    if args.target_has == "gpu-machine" and mib >= LIMIT_MIB:
        print(f"error: the bundle is over {LIMIT_MIB} MiB, too big to travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
