"""The Zarr token store: schema, writer (parts), finalize, reader (`TokenStore`), the checks
every reader runs first (`opening`, `validate`, `zstdguard`, `damage`), and `gtok info` /
`gtok verify`, and `write` (tokens made elsewhere into a store). See `gtok.store.schema` for
the layout."""

from gtok.store.finalize import finalize_store
from gtok.store.location import Location
from gtok.store.reader import TokenStore, collate
from gtok.store.schema import StoreHeader
from gtok.store.tokenwrite import write
from gtok.store.writer import Part, StoreWriter

__all__ = [
    "Location",
    "Part",
    "StoreHeader",
    "StoreWriter",
    "TokenStore",
    "collate",
    "finalize_store",
    "write",
]
