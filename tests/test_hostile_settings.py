"""What a token store records about how its tokens were made, and the writers and readers
that meet it later (issue 30): a resume after an `--append` whose shards sort first, a
reader opened before an append, a resume or append with another `--batch-size`, and a
`--resize` that no image could pass. Each is run as the user would: the CLI in-process for
writers, `TokenStore` for readers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from shardmaker import clean_samples, write_tar
from test_encode import SMALL, _save_model, one_thread  # noqa: F401  (autouse fixture)
from test_hostile_cli import _in_process

from gtok.store import TokenStore


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


def _encode(runner, shards, store: Path, model: Path, *flags: str) -> subprocess.CompletedProcess:
    """`gtok encode SHARDS... -o STORE -m MODEL --workers 0 FLAGS` in-process."""
    args = ["encode", *shards, "-o", store, "-m", model, "--workers", "0", *flags]
    return _in_process(runner, *args)


def _ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a run that must have succeeded."""
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_resume_with_every_shard_after_an_append_of_shards_that_sort_first(tmp_path, runner, model):
    """Point 12: the store lists its shards in row order (appended ones last), the command
    line in name order; the same set is the same plan."""
    old = write_tar(tmp_path / "old" / "shard-b.tar", clean_samples(3))
    new = write_tar(tmp_path / "new" / "shard-a.tar", clean_samples(2, start=10))
    store = tmp_path / "s.zarr"
    _ok(_encode(runner, [old], store, model))
    _ok(_encode(runner, [new], store, model, "--append"))
    before = TokenStore(store).keys()
    assert [k.split("/")[0] for k in before] == ["shard-b.tar"] * 3 + ["shard-a.tar"] * 2
    out = _ok(_encode(runner, [old, new], store, model))
    assert "from 0 shards (2 were already done)" in out
    assert TokenStore(store).keys() == before
