"""One flat token stream for sequence models: the vocabulary layout of a store's tokens.

A GaussianToken store encoded with `--geometry-bits B` (K codes, 2^B bins per geometry
parameter) turns each image into G * 6 ids, Gaussian by Gaussian in the store's token
order, each Gaussian as (code id, mean_x, mean_y, scale_x, scale_y, rotation). Every field
has its own range of ids in one vocabulary of K + 5 * 2^B ids:

    field      offset           size
    code       0                K
    mean_x     K                2^B
    mean_y     K + 2^B          2^B
    scale_x    K + 2 * 2^B      2^B
    scale_y    K + 3 * 2^B      2^B
    rotation   K + 4 * 2^B      2^B

so id = offset(field) + value, and position p of a sequence always holds field p % 6. A
store of the `codebook` layout (`gtok.store.geometry_codebook`: one learned geometry id per
Gaussian from a codebook of K_g entries) turns each image into G * 2 ids, (code id,
geometry id) per Gaussian, in a vocabulary of K + K_g ids (geometry at offset K). A VQ
store's stream is its code ids alone (G ids, vocabulary K). `Vocabulary.encode` makes the
stream, `Vocabulary.decode` inverts it (refusing an id outside its position's field), and
`TokenStore.sequences` / `TokenStore.vocabulary` / `TokenStore.from_sequences` apply them
to a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gtok.store.geometry_bins import FIELDS

__all__ = ["CODE_FIELD", "GEOMETRY_ID_FIELD", "Vocabulary"]

CODE_FIELD = "code"
GEOMETRY_ID_FIELD = "geometry"  # the one geometry id of the codebook layout


@dataclass(frozen=True)
class Vocabulary:
    """The id layout of a store's token stream (see the module docstring)."""

    codebook_size: int  # K
    geometry_bins: int | None  # 2^B, or None: code ids only (a VQ store) or geometry ids
    geometry_ids: int | None = None  # K_g of the codebook layout (then geometry_bins is None)

    def __post_init__(self) -> None:
        if self.geometry_bins is not None and self.geometry_ids is not None:
            raise ValueError("a vocabulary has geometry bins or geometry ids, not both")

    @property
    def fields(self) -> tuple[tuple[str, int, int], ...]:
        """(name, offset, size) of each field, in the order they follow each other."""
        out = [(CODE_FIELD, 0, self.codebook_size)]
        if self.geometry_bins is not None:
            for i, name in enumerate(FIELDS):
                out.append((name, self.codebook_size + i * self.geometry_bins, self.geometry_bins))
        if self.geometry_ids is not None:
            out.append((GEOMETRY_ID_FIELD, self.codebook_size, self.geometry_ids))
        return tuple(out)

    @property
    def size(self) -> int:
        """Ids in all: K + 5 * 2^B, K + K_g with geometry ids, K for code ids only."""
        _, offset, size = self.fields[-1]
        return offset + size

    @property
    def ids_per_token(self) -> int:
        """Ids per token (per Gaussian): 6, 2 with geometry ids, 1 for code ids only."""
        return len(self.fields)

    @property
    def offsets(self) -> dict[str, int]:
        return {name: offset for name, offset, _ in self.fields}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: size, ids per token, and each field's offset and size."""
        return {
            "size": self.size,
            "ids_per_token": self.ids_per_token,
            "fields": [{"name": n, "offset": o, "size": s} for n, o, s in self.fields],
        }

    def position_ranges(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) int64 [length]: position p of a stream holds ids in [low[p], high[p])."""
        field = np.arange(length) % self.ids_per_token
        offsets = np.array([o for _, o, _ in self.fields], np.int64)
        sizes = np.array([s for _, _, s in self.fields], np.int64)
        return offsets[field], offsets[field] + sizes[field]

    def encode(self, indices: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """indices [n, G] and geometry bins [n, G, 5] or geometry ids [n, G, 1] (None for
        code ids only) -> int64 ids [n, G * ids_per_token]."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.ids_per_token == 1:
            return indices.copy()
        if codes is None:
            raise ValueError("this vocabulary needs the geometry tokens as well as the code ids")
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (*indices.shape, self.ids_per_token - 1):
            raise ValueError(f"geometry bins {codes.shape} do not fit indices {indices.shape}")
        per = np.concatenate([indices[..., None], codes], axis=-1)  # [n, G, 6]
        offsets = np.array([o for _, o, _ in self.fields], np.int64)
        return (per + offsets).reshape(len(indices), -1)

    def decode(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """ids [n, L] (L a multiple of ids_per_token) -> (int64 indices [n, L / per],
        int64 geometry bins [n, L / per, 5], geometry ids [n, L / per, 1], or None); a
        ValueError names the first id that is not of its position's field."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] % self.ids_per_token:
            raise ValueError(
                f"ids must be [n, L] with L a multiple of {self.ids_per_token}, got {ids.shape}"
            )
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        low, high = self.position_ranges(ids.shape[1])
        bad = np.argwhere((ids < low) | (ids >= high))
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            name = self.fields[pos % self.ids_per_token][0]
            raise ValueError(
                f"id {int(ids[row, pos])} at sequence {row}, position {pos} is not a {name} id "
                f"(those are {int(low[pos])}..{int(high[pos]) - 1}); {len(bad)} ids are out of "
                "their field's range"
            )
        values = (ids - low).reshape(len(ids), -1, self.ids_per_token)
        if self.ids_per_token == 1:
            return values[..., 0], None
        return values[..., 0], values[..., 1:]
