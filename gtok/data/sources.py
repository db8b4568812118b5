"""One reader for every kind of input shard: `read_source(ref)` yields the same
`RawSample | TarProblem` items for a WebDataset tar (`gtok.data.tario`), a Parquet file
(`gtok.data.parquetio`) and a folder of images (`gtok.data.folderio`), so decoding,
encoding, evaluation, training and `gtok verify` do not depend on where the images are
stored."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from gtok.data.folderio import read_folder
from gtok.data.parquetio import count_rows, read_parquet
from gtok.data.scan import scan_folder
from gtok.data.shards import FOLDER, PARQUET, TAR, ShardRef
from gtok.data.tario import (
    DEFAULT_MAX_MEMBER_BYTES,
    RawSample,
    TarProblem,
    member_name,
    open_tar,
    read_tar,
    split_member_name,
)

__all__ = ["count_source", "read_source"]


def read_source(
    source: ShardRef | str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[RawSample | TarProblem]:
    """The samples of the input shard `source` in file order, then a `TarProblem` when it
    could not be read to its end; a plain URL is read as a tar. No member or image cell over
    `max_member_bytes` is read: its sample gets the reason."""
    if isinstance(source, str):
        source = ShardRef(source, source)
    if source.kind == TAR:
        return read_tar(source.url, max_member_bytes)
    if source.kind == PARQUET:
        return read_parquet(source.url, source.name, source.columns, max_member_bytes)
    if source.kind == FOLDER:
        return read_folder(source.url, max_member_bytes)
    raise ValueError(f"unknown kind of input shard {source.kind!r}")


def count_source(source: ShardRef) -> int:
    """Number of samples in the input shard `source` without reading any image: runs of tar
    members sharing a key (a damaged tar counts those before the damage), a Parquet
    file's rows as its footer records them, or the entries of an image folder."""
    if source.kind == PARQUET:
        return count_rows(source.url, source.name)
    if source.kind == FOLDER:
        return len(scan_folder(source.url).entries)
    import fsspec

    total, last = 0, None
    with fsspec.open(source.url, "rb") as handle:
        try:
            with open_tar(handle) as tar:
                for member in tar:
                    key = split_member_name(member_name(member))[0]
                    if member.isfile() and key != last:
                        total, last = total + 1, key
        except tarfile.TarError:
            pass  # a damaged tar counts the samples before the damage
    return total
