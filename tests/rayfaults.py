"""Fault injection for tests/test_encode_ray.py: Ray runs `die_once_where_marked` in each of
its worker processes (`worker_process_setup_hook`) before any task."""

import os
from pathlib import Path

MARKS = "GTOK_TEST_RAY_MARKS"  # a folder: a file "<store name>__<shard name>" marks a shard


def die_once_where_marked() -> None:
    """Make the first task of each marked shard kill its own worker process, as the OOM killer
    would (leaving "<mark>.died" behind); later attempts encode normally."""
    from gtok.encode import distributed

    marks = Path(os.environ[MARKS])
    encode = distributed.encode_shards

    def encode_or_die(specs, out, model, *, shard_name, **settings):
        mark = marks / f"{Path(out).name}__{shard_name}"
        died = mark.with_name(mark.name + ".died")
        if mark.exists() and not died.exists():
            died.touch()
            os._exit(1)
        return encode(specs, out, model, shard_name=shard_name, **settings)

    distributed.encode_shards = encode_or_die
