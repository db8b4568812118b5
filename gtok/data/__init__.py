"""Reading image datasets: shard lists, tar samples, robust decoding, preprocessing, datasets.

Shared by `gtok encode`, training and evaluation:
- `expand_shards(specs) -> [ShardRef]`: folders / globs / brace patterns / fsspec URLs.
- `read_tar(url)`: raw samples of one tar; `decode_shard(url, prepare)`: decoded or skipped.
- `decode_rgb(bytes)`: any image -> upright 8-bit RGB, or `ImageRejected(reason)`.
- `Preprocess`, `center_crop`, `random_resized_crop`, `to_tensor`: model input in [-1, 1].
- `EncodeStream`, `ImageDataset`, `loader`: DataLoader-ready (spawn workers).
"""

from gtok.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageRejected, decode_rgb
from gtok.data.samples import NO_LABEL, Decoded, ShardEnd, Skipped, center_prepare, decode_shard
from gtok.data.shards import ShardRef, brace_expand, expand_shards, split_for_worker
from gtok.data.stream import EncodeStream, ImageDataset, ShardChunk, loader, to_model_input
from gtok.data.tario import RawSample, TarProblem, read_tar
from gtok.data.transforms import (
    Preprocess,
    center_crop,
    random_resized_crop,
    sample_rng,
    to_tensor,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "NO_LABEL",
    "Decoded",
    "EncodeStream",
    "ImageDataset",
    "ImageRejected",
    "Preprocess",
    "RawSample",
    "ShardChunk",
    "ShardEnd",
    "ShardRef",
    "Skipped",
    "TarProblem",
    "brace_expand",
    "center_crop",
    "center_prepare",
    "decode_rgb",
    "decode_shard",
    "expand_shards",
    "loader",
    "random_resized_crop",
    "read_tar",
    "sample_rng",
    "split_for_worker",
    "to_model_input",
    "to_tensor",
]
