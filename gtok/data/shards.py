"""Which tar shards a list of shard specs names: folders, globs, brace patterns, fsspec URLs.

A spec is one of
- a folder: every `*.tar` directly inside it (an img2dataset output folder as it is: its
  `.parquet` and `_stats.json` files are not shards and are ignored);
- a `.tar` file;
- a glob (`data/train-*.tar`, `s3://bucket/shards/*.tar`);
- a brace pattern (`train-{000000..000009}.tar`, `{train,val}-000000.tar`), expanded first,
  each result then read as one of the above;
- any of these as an fsspec URL (`file://`, `s3://`, `gs://`, `https://` for single files,
  `memory://`), where the filesystem's package is installed.

Shards are returned sorted by file name, and file names must be unique across the whole
list: a row's key is `"<shard file name>/<sample key>"`, so two `000000.tar` from two folders
would give two rows the same key. A shard's name is its file name escaped as tar member
names are (`gtok.data.tario.escape_name`: bytes that are not UTF-8 become `%XX`). A spec
that names nothing is a `GtokError` raised before any work starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gtok.data.tario import escape_name
from gtok.errors import GtokError

__all__ = ["ShardRef", "brace_expand", "expand_shards", "split_for_worker"]

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = set("*?[")
SHARD_SUFFIX = ".tar"


@dataclass(frozen=True, order=True)
class ShardRef:
    """One input tar shard: `name` (its file name, unique in a run, the key prefix) and `url`
    (what fsspec opens: a local path or a URL)."""

    name: str
    url: str


def brace_expand(pattern: str) -> list[str]:
    """Expand `{a,b}` alternatives and `{000..012}` zero-padded integer ranges, left to right.

    `brace_expand("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]`. A range keeps
    the width of its wider bound when either bound has a leading zero.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    body = match.group(1)
    if rng := _RANGE.match(body):
        lo_text, hi_text = rng.groups()
        lo, hi = int(lo_text), int(hi_text)
        padded = any(len(t.lstrip("-")) > 1 and t.lstrip("-")[0] == "0" for t in rng.groups())
        width = max(len(lo_text), len(hi_text)) if padded else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        choices = body.split(",")
    return [out for choice in choices for out in brace_expand(head + choice + tail)]


def _filesystem(spec: str):
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(spec)
    except (ImportError, ValueError) as exc:
        raise GtokError(f"Cannot read {spec}: {exc}.") from exc


def _url(fs, path: str, spec: str) -> str:
    """The URL to open `path` of `fs` with, keeping the protocol the user wrote."""
    if "://" not in spec:
        return path
    return fs.unstrip_protocol(path)


def _expand_one(spec: str) -> list[ShardRef]:
    fs, path = _filesystem(spec)
    if any(ch in _GLOB_CHARS for ch in path):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
        if not found:
            raise GtokError(f"{spec} matches no file; check the pattern.")
    elif fs.isdir(path):
        found = [p for p in fs.ls(path, detail=False) if p.endswith(SHARD_SUFFIX) and fs.isfile(p)]
        if not found:
            raise GtokError(f"The folder {spec} holds no .tar shards.")
    elif fs.isfile(path):
        found = [path]
    else:
        raise GtokError(f"{spec} does not exist; pass folders of .tar shards, .tar files or globs.")
    return [ShardRef(name=_name(p), url=_url(fs, p, spec)) for p in found]


def _name(path: str) -> str:
    """A shard's name: its file name, escaped as member names are (valid UTF-8, `%XX`)."""
    return escape_name(os.fsencode(os.path.basename(path.rstrip("/"))))


def expand_shards(specs: Iterable[str | os.PathLike]) -> list[ShardRef]:
    """All shards the specs name, sorted by file name, duplicates of one file removed.

    Raises `GtokError` when no spec is given, a spec names nothing, or two different files
    share a file name.
    """
    refs: dict[str, ShardRef] = {}
    specs = [os.fspath(s) for s in specs]
    if not specs:
        raise GtokError("No shards given; pass folders of .tar shards, .tar files or globs.")
    for spec in specs:
        for expanded in brace_expand(spec):
            for ref in _expand_one(expanded):
                other = refs.setdefault(ref.name, ref)
                if other.url != ref.url:
                    raise GtokError(
                        f"Two shards are named {ref.name} ({other.url} and {ref.url}); shard "
                        "file names must be unique in one store, so encode them into separate "
                        "stores."
                    )
    return sorted(refs.values())


def split_for_worker(shards: Sequence[ShardRef], worker: int, num_workers: int) -> list[ShardRef]:
    """The shards worker `worker` of `num_workers` encodes: every `num_workers`-th one."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not in [0, {num_workers})")
    return list(shards[worker::num_workers])
