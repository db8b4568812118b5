"""Which input shards a list of shard specs names: folders, globs, brace patterns, fsspec URLs.

An input shard is a WebDataset tar, a Parquet file (`ShardRef.kind`, told by the file's
first bytes, or for a remote file by its `.parquet` suffix) or a folder of images;
`gtok.data.sources` reads any of them. A spec is one of
- a folder: every `*.tar` directly inside it (an img2dataset output folder as it is: its
  `.parquet` and `_stats.json` files are not shards and are ignored), or, when it holds no
  tar, every `*.parquet` directly inside it, or, when it holds neither, the folder itself
  as one input shard of image files (kind `FOLDER`, local folders only, read as `gtok pack`
  reads them: `gtok.data.folderio`). Image files beside tars or Parquet files are a
  `GtokError`: which did the user mean?
- a `.tar` or `.parquet` file;
- a glob (`data/train-*.tar`, `s3://bucket/shards/*.tar`, `data/*.parquet`);
- a brace pattern (`train-{000000..000009}.tar`, `{train,val}-000000.tar`), expanded first,
  each result then read as one of the above;
- any of these as an fsspec URL (`file://`, `s3://`, `gs://`, `https://` for single files,
  `memory://`), where the filesystem's package is installed.

Shards are returned sorted by file name, and file names must be unique across the whole
list: a row's key is `"<shard file name>/<sample key>"`, so two `000000.tar` from two folders
would give two rows the same key. One file named twice (`A/../A/x.tar`, through a symbolic
link, as a `file://` URL) counts once: local files are compared by their resolved real
path, others by URL. A shard's name is its file name escaped as tar member names are
(`gtok.data.tario.escape_name`: bytes that are not UTF-8 become `%XX`). A spec that names
nothing is a `GtokError` raised before any work starts; so is an image file where a shard
was expected (the error names the folder way and `gtok pack`), and a file of another kind
(ZIP, PDF). Each Parquet file's footer is read then, so that a
missing column (`gtok.data.parquetio.Columns`) or a missing pyarrow is one sentence too.

`shard_fingerprint(url)` identifies a shard file's content cheaply (its size and a hash of
its first and last MiB, read as two ranges; for an image folder, its files' names, sizes
and modification times): a store records it per input shard
(`gtok.store.identity`), so a new file under a stored shard's name is told apart from it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gtok.data.folderio import folder_fingerprint
from gtok.data.magic import HEAD_BYTES, sniff
from gtok.data.parquetio import DEFAULT_COLUMNS, Columns, check_parquet
from gtok.data.scan import scan_folder
from gtok.data.tario import escape_name
from gtok.errors import GtokError

__all__ = [
    "FOLDER",
    "PARQUET",
    "TAR",
    "ShardFingerprint",
    "ShardRef",
    "brace_expand",
    "expand_shards",
    "shard_fingerprint",
    "shard_fingerprints",
    "split_for_worker",
]

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = set("*?[")
SHARD_SUFFIX = ".tar"
PARQUET_SUFFIX = ".parquet"
TAR, PARQUET, FOLDER = "tar", "parquet", "folder"  # the kinds of input shard
FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a shard file
_FINGERPRINT_HEX = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT_THREADS = 8  # files fingerprinted at once (remote reads wait on the network)
# file suffixes of images (any case): given where shards are expected, they need `gtok pack`
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic")


@dataclass(frozen=True, order=True)
class ShardRef:
    """One input shard: `name` (its file name, unique in a run, the key prefix), `url` (what
    fsspec opens: a local path or a URL), `kind` (`TAR`, `PARQUET`, or `FOLDER`: a local
    folder of images) and, for a Parquet file, the `columns` to read it with."""

    name: str
    url: str
    kind: str = TAR
    columns: Columns = field(default=DEFAULT_COLUMNS, compare=False)


@dataclass(frozen=True)
class ShardFingerprint:
    """A shard file's identity: `size` in bytes and `digest`, the sha256 hex digest of the
    size and the file's first and last `FINGERPRINT_SPAN` bytes (`shard_fingerprint`)."""

    size: int
    digest: str

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"a shard fingerprint's size must be a byte count, not {self.size!r}")
        if not isinstance(self.digest, str) or not _FINGERPRINT_HEX.match(self.digest):
            raise ValueError(f"a shard fingerprint must be 64 hex digits, not {self.digest!r}")

    def difference(self, stored: ShardFingerprint) -> str:
        """How this file differs from the `stored` one, as a phrase."""
        if self.size != stored.size:
            return f"it is {self.size} bytes, the encoded file was {stored.size}"
        return f"both are {self.size} bytes, but their content differs"


def shard_fingerprint(url: str) -> ShardFingerprint:
    """The fingerprint of the shard at `url` (a local path or an fsspec URL), reading only its
    first and last `FINGERPRINT_SPAN` bytes; a `GtokError` when it cannot be read. A local
    folder of images: its `gtok.data.folderio.folder_fingerprint`."""
    local = _local_path(url)
    if local is not None and os.path.isdir(local):
        return ShardFingerprint(*folder_fingerprint(local))
    fs, path = _filesystem(url)
    try:
        size = int(fs.size(path))
        head_end = min(size, FINGERPRINT_SPAN)
        head = fs.cat_file(path, start=0, end=head_end) if head_end else b""
        tail_start = max(head_end, size - FINGERPRINT_SPAN)
        tail = fs.cat_file(path, start=tail_start, end=size) if tail_start < size else b""
    except OSError as exc:
        raise GtokError(f"Cannot read {url}: {exc}.") from exc
    digest = hashlib.sha256(size.to_bytes(8, "little") + head + tail).hexdigest()
    return ShardFingerprint(size, digest)


def shard_fingerprints(refs: Sequence[ShardRef]) -> list[ShardFingerprint]:
    """`shard_fingerprint` of each shard, in order, several read at once."""
    with ThreadPoolExecutor(_FINGERPRINT_THREADS) as pool:
        return list(pool.map(shard_fingerprint, [r.url for r in refs]))


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


# the next step for images given one by one, or for a file gtok cannot read
_IMAGES_ADVICE = (
    "pass the folder that holds the images instead (gtok encode FOLDER -o STORE), or pack "
    "them into shards (gtok pack FOLDER -o SHARDS) and pass SHARDS"
)


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(_IMAGE_SUFFIXES)


def _refuse_images(spec: str, found: list[str]) -> None:
    """A `GtokError` when a file that `spec` names is an image (by its suffix), not a shard."""
    if image := next((p for p in found if _is_image_name(p)), None):
        named = spec if found == [image] else f"{spec} matches {os.path.basename(image)}, which"
        raise GtokError(f"{named} is an image, not a .tar shard; {_IMAGES_ADVICE}.")


def _kind(spec: str, fs, path: str, single: bool) -> str:
    """`TAR` or `PARQUET` for the file `path` that `spec` names (`single`: alone). A local
    file is told by its first bytes (`gtok.data.magic`); one that is no tar or Parquet
    (a compressed tar, ZIP, PDF, PostScript) is a `GtokError`. Remote files are not opened
    here (one request per shard): a `.parquet` suffix says Parquet, and their reader records
    other files as damaged, a compressed tar naming its compression."""
    from fsspec.implementations.local import LocalFileSystem

    if not isinstance(fs, LocalFileSystem):
        return PARQUET if path.lower().endswith(PARQUET_SUFFIX) else TAR
    try:
        with open(path, "rb") as handle:
            magic = sniff(handle.read(HEAD_BYTES))
    except OSError:  # unreadable: the tar reader records why
        return TAR
    if magic is None:
        return TAR
    if magic.name == "Parquet":
        return PARQUET
    named = spec if single else f"{spec} matches {os.path.basename(path)}, which"
    if magic.decompress is not None:
        raise GtokError(
            f"{named} is {magic.name}-compressed, not a tar shard; gtok reads uncompressed "
            f"tars: decompress it with {magic.decompress}."
        )
    raise GtokError(
        f"{named} is a {magic.name} file, not a tar shard or Parquet file; {_IMAGES_ADVICE}."
    )


def _in_folder(spec: str, fs, path: str) -> list[str]:
    """The shards of a folder: its `.tar` files, or when it has none its `.parquet` files;
    a `GtokError` when image files lie beside them (which did the user mean?)."""
    files = [p for p in fs.ls(path, detail=False) if fs.isfile(p)]
    tars = [p for p in files if p.endswith(SHARD_SUFFIX)]
    shards = tars or [p for p in files if p.lower().endswith(PARQUET_SUFFIX)]
    images = [p for p in files if _is_image_name(p)]
    if shards and images:
        kind = ".tar shards" if tars else ".parquet files"
        raise GtokError(
            f"The folder {spec} holds both {kind} ({len(shards)}, e.g. "
            f"{os.path.basename(shards[0])}) and image files ({len(images)}, e.g. "
            f"{os.path.basename(images[0])}); move one kind into a folder of its own and pass "
            "that."
        )
    return shards


def _image_folder(spec: str, fs, path: str) -> ShardRef:
    """The local folder of images `spec` names, as one input shard; a `GtokError` when it is
    remote or holds no image file (by suffix, at any depth, as `gtok pack` walks it)."""
    from fsspec.implementations.local import LocalFileSystem

    nothing = f"The folder {spec} holds no .tar shards, .parquet files or images"
    if not isinstance(fs, LocalFileSystem):
        raise GtokError(f"{nothing}; image folders are read from local disks only.")
    if not any(_is_image_name(e.path) for e in scan_folder(path).entries):
        raise GtokError(f"{nothing}; pass folders of .tar shards, .parquet files or images.")
    return ShardRef(_name(path), path, FOLDER)


def _expand_one(spec: str, columns: Columns) -> list[ShardRef]:
    fs, path = _filesystem(spec)
    if any(ch in _GLOB_CHARS for ch in path):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
        if not found:
            raise GtokError(f"{spec} matches no file; check the pattern.")
    elif fs.isdir(path):
        found = _in_folder(spec, fs, path)
        if not found:
            return [_image_folder(spec, fs, path)]
    elif fs.isfile(path):
        found = [path]
    else:
        raise GtokError(
            f"{spec} does not exist; pass folders of .tar shards, .parquet files or images, .tar "
            "or .parquet files, or globs."
        )
    _refuse_images(spec, found)
    refs = []
    for p in found:
        kind = _kind(spec, fs, p, found == [p])
        ref = ShardRef(_name(p), _url(fs, p, spec), kind, columns)
        if kind == PARQUET:
            check_parquet(ref.url, ref.name, columns)
        refs.append(ref)
    return refs


def _same_file(a: ShardRef, b: ShardRef) -> bool:
    """Whether two shard refs name one file: local files by resolved real path, others by
    URL."""
    if a.url == b.url:
        return True
    path_a, path_b = (_local_path(r.url) for r in (a, b))
    if path_a is None or path_b is None:
        return False
    return os.path.realpath(path_a) == os.path.realpath(path_b)


def _local_path(url: str) -> str | None:
    """The local path a shard URL opens, or None when it is not on the local file system."""
    from fsspec.implementations.local import LocalFileSystem

    fs, path = _filesystem(url)
    return path if isinstance(fs, LocalFileSystem) else None


def _name(path: str) -> str:
    """A shard's name: its file name, escaped as member names are (valid UTF-8, `%XX`)."""
    return escape_name(os.fsencode(os.path.basename(path.rstrip("/"))))


def expand_shards(
    specs: Iterable[str | os.PathLike[str]], columns: Columns = DEFAULT_COLUMNS
) -> list[ShardRef]:
    """All shards the specs name, sorted by file name, duplicates of one file removed (the
    first way it was named is kept); Parquet files are to be read with `columns`.

    Raises `GtokError` when no spec is given, a spec names nothing, or two different files
    share a file name.
    """
    refs: dict[str, ShardRef] = {}
    given = [os.fspath(s) for s in specs]
    if not given:
        raise GtokError(
            "No shards given; pass folders of .tar shards, .tar or .parquet files or globs."
        )
    for spec in given:
        for expanded in brace_expand(spec):
            for ref in _expand_one(expanded, columns):
                other = refs.setdefault(ref.name, ref)
                if not _same_file(other, ref):
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
