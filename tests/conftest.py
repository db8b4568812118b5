"""Shared test setup: a private Taichi kernel cache, one torch thread, and the fixtures used
by several test modules (here and in the fixture modules `evalkit` and `defaultkit`,
registered as plugins). The test tiers' markers are in pyproject.toml."""

import os
import tempfile

import pytest

# Before anything imports gtok.kernels.runtime: keep the tests' compiled kernels out of the user's
# cache, but share them across the test session.
os.environ.setdefault("GTOK_KERNEL_CACHE", os.path.join(tempfile.gettempdir(), "gtok-test-cache"))

# Their fixtures are available to every test module, as if defined here.
pytest_plugins = ["evalkit", "defaultkit"]


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one torch thread is many times faster than two here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def small_shards(monkeypatch):
    """Zarr shards of 4 rows (2-row chunks), so appends start inside a partly filled shard."""
    from gtok.store import schema

    monkeypatch.setattr(schema, "SHARD_ROWS", 4)
    monkeypatch.setattr(schema, "CHUNK_ROWS", 2)
