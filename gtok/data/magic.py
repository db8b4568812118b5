"""What a file is by its first bytes, for the inputs gtok refuses: compressed tars,
PostScript/PDF documents given as images, and Parquet or ZIP files given as shards.

The one table of magic numbers gtok checks; `tario` names a compressed shard with it,
`images` names a document that is not read as an image, and `shards` refuses a file that
is no tar before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEAD_BYTES", "Magic", "sniff"]


@dataclass(frozen=True)
class Magic:
    """A kind of file: `name` to show and, for a compressed file, the command that
    decompresses it (`decompress`, None otherwise)."""

    name: str
    decompress: str | None = None


_TABLE: tuple[tuple[bytes, Magic], ...] = (
    (b"\x1f\x8b", Magic("gzip", "gunzip")),
    (b"BZh", Magic("bzip2", "bunzip2")),
    (b"\xfd7zXZ\x00", Magic("xz", "unxz")),
    (b"\x28\xb5\x2f\xfd", Magic("zstd", "unzstd")),
    (b"%!PS", Magic("PostScript")),
    (b"\xc5\xd0\xd3\xc6", Magic("PostScript")),  # an EPS file with a binary (DOS) header
    (b"%PDF-", Magic("PDF")),
    (b"PAR1", Magic("Parquet")),
    (b"PK\x03\x04", Magic("ZIP")),
)
HEAD_BYTES = max(len(prefix) for prefix, _ in _TABLE)  # how many first bytes `sniff` needs


def sniff(head: bytes) -> Magic | None:
    """The kind of file that starts with `head` (at least `HEAD_BYTES` of its first bytes,
    fewer when the file is shorter), None when it is none of the table's."""
    return next((magic for prefix, magic in _TABLE if head.startswith(prefix)), None)
