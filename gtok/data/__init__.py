"""Reading image datasets: shard lists, tar samples, robust decoding, preprocessing, datasets.

Shared by `gtok encode`, training and evaluation:
- `expand_shards(specs) -> [ShardRef]`: folders / globs / brace patterns / fsspec URLs of
  tars and Parquet files.
- `read_tar(url)`: raw samples of one tar; `read_source(ref)` of any input shard (a tar or a
  Parquet file, `gtok.data.parquetio`); `decode_shard(ref, prepare)`: decoded or skipped.
- `decode_rgb(bytes)`: any image -> upright 8-bit RGB, or `ImageRejected(reason)`.
- `Preprocess`, `center_crop`, `random_resized_crop`, `to_tensor`: model input in [-1, 1].
- `EncodeStream`, `ImageDataset`, `loader`: DataLoader-ready (spawn workers).

Every name below is imported on first use, so that importing a submodule (the CLI reads
option defaults from `gtok.data.images`) does not import torch.
"""

from gtok._lazy import lazy_names

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

_HOMES = {  # name -> the module that defines it
    "DEFAULT_MAX_PIXELS": "gtok.data.images",
    "Decoded": "gtok.data.samples",
    "EncodeStream": "gtok.data.stream",
    "IMAGE_EXTENSIONS": "gtok.data.images",
    "ImageDataset": "gtok.data.stream",
    "ImageRejected": "gtok.data.images",
    "NO_LABEL": "gtok.data.samples",
    "Preprocess": "gtok.data.transforms",
    "RawSample": "gtok.data.tario",
    "ShardChunk": "gtok.data.stream",
    "ShardEnd": "gtok.data.samples",
    "ShardRef": "gtok.data.shards",
    "Skipped": "gtok.data.samples",
    "TarProblem": "gtok.data.tario",
    "brace_expand": "gtok.data.shards",
    "center_crop": "gtok.data.transforms",
    "center_prepare": "gtok.data.samples",
    "decode_rgb": "gtok.data.images",
    "decode_shard": "gtok.data.samples",
    "expand_shards": "gtok.data.shards",
    "loader": "gtok.data.stream",
    "random_resized_crop": "gtok.data.transforms",
    "read_tar": "gtok.data.tario",
    "sample_rng": "gtok.data.transforms",
    "split_for_worker": "gtok.data.shards",
    "to_model_input": "gtok.data.stream",
    "to_tensor": "gtok.data.transforms",
}

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
