"""The source distribution: it carries the licence and everything its own tests need."""

import shutil
import tarfile
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


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tarfile.TarFile:
    from setuptools import build_meta

    # a clean copy: setuptools adds the files listed by an earlier build's egg-info
    tree, out = tmp_path_factory.mktemp("tree") / "gtok", tmp_path_factory.mktemp("sdist")
    ignored = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist", "*-out")
    shutil.copytree(REPO, tree, ignore=ignored)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tree)
        name = build_meta.build_sdist(str(out))
    with tarfile.open(out / name) as archive:
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
