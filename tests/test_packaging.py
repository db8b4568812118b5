"""The distributions: the sdist carries the licence and everything its own tests need; the
wheel installs one top-level package, `gtok`."""

import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the tests import, run or read besides the packages themselves
TEST_FOLDERS = ("tests", "bench", "tools", "examples", "docs")


def _repo_files(folder: str) -> set[str]:
    return {
        p.relative_to(REPO).as_posix()
        for p in (REPO / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def _build(tmp_path_factory, kind: str) -> Path:
    """The path of a `kind` ("sdist" or "wheel") built from a clean copy of the repository
    (setuptools adds the files listed by an earlier build's egg-info)."""
    from setuptools import build_meta

    tree, out = tmp_path_factory.mktemp("tree") / "gtok", tmp_path_factory.mktemp(kind)
    ignored = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist", "*-out")
    shutil.copytree(REPO, tree, ignore=ignored)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tree)
        build = build_meta.build_sdist if kind == "sdist" else build_meta.build_wheel
        return out / build(str(out))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tarfile.TarFile:
    with tarfile.open(_build(tmp_path_factory, "sdist")) as archive:
        yield archive


def _members(archive: tarfile.TarFile) -> set[str]:
    return {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}


def test_the_sdist_carries_the_tests_and_what_they_read(sdist):
    members = _members(sdist)
    for folder in TEST_FOLDERS:
        missing = _repo_files(folder) - members
        assert not missing, f"{folder}: {sorted(missing)}"
    assert {"LICENSE", "README.md", "CHANGELOG.md", "Makefile", "pyproject.toml"} <= members
    assert "tests/conftest.py" in members and "docs/token.png" in members


def test_the_licence_is_apache_2_and_named_in_the_metadata(sdist):
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    info = next(m for m in sdist.getmembers() if m.name.endswith("/PKG-INFO"))
    metadata = sdist.extractfile(info).read().decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata


def test_the_wheel_installs_only_the_gtok_package(tmp_path_factory):
    with zipfile.ZipFile(_build(tmp_path_factory, "wheel")) as wheel:
        names = wheel.namelist()
    top_level = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }
    assert top_level == {"gtok"}
    assert "gtok/cli/main.py" in names and "gtok/kernels/rasterize.py" in names
