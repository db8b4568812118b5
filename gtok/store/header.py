"""The header of a new store of one model's tokens, as `gtok encode` and `gtok.store.write`
record it (`schema.StoreHeader`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gtok.data.shards import ShardRef
from gtok.data.tario import utf8_text
from gtok.errors import GtokError
from gtok.model.config import TokenizerConfig
from gtok.store import schema
from gtok.store.schema import StoreHeader

__all__ = ["model_header"]


def model_header(
    config: TokenizerConfig,
    weights_sha256: str,
    model_path: Path,
    preprocessing: dict,
    *,
    geometry_dtype: str,
    shards: Sequence[ShardRef],
    metadata_fields: tuple[str, ...] = (),
    numerics: dict | None = None,
    geometry_bins: dict | None = None,
    refinement: dict | None = None,
    layout: str = "fields",
    geometry_codebook: dict | None = None,
) -> StoreHeader:
    """The header of a store of tokens of the model `config` (weights `weights_sha256`, at
    `model_path`) over the input `shards`, in row order; refuses a codebook whose ids do not
    fit beside the fill value. layout, geometry_codebook: the token layout and, for
    "codebook", the record of its codebook file (`gtok.store.layouts`)."""
    if config.codebook_size > schema.INDEX_FILL:
        raise GtokError(
            f"the model has {config.codebook_size} codes but token stores keep id "
            f"{schema.INDEX_FILL} free to mark unwritten rows; use a codebook of at most "
            f"{schema.INDEX_FILL} codes."
        )
    return StoreHeader(
        model_config=config.to_dict(),
        weights_sha256=weights_sha256,
        num_tokens=config.num_tokens,
        codebook_size=config.codebook_size,
        has_geometry=config.kind == "gaussian",
        preprocessing=preprocessing,
        geometry_dtype=geometry_dtype,
        shard_names=tuple(s.name for s in shards),
        shard_urls=tuple(utf8_text(s.url) for s in shards),
        model_path=str(model_path.resolve()),
        numerics=numerics,
        metadata_fields=metadata_fields,
        geometry_bins=geometry_bins,
        refinement=refinement,
        layout=layout,
        geometry_codebook=geometry_codebook,
    )
