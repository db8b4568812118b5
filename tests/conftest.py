"""Shared test setup: a private Taichi kernel cache and a CLI runner."""

import os
import tempfile

import pytest

# Before anything imports kernels.runtime: keep the tests' compiled kernels out of the user's
# cache, but share them across the test session.
os.environ.setdefault("GTOK_KERNEL_CACHE", os.path.join(tempfile.gettempdir(), "gtok-test-cache"))


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()
