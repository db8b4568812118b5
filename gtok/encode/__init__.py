"""Encoding datasets into token stores: `encode_shards` (what `gtok encode` runs), the model
resolution behind `--model`, the worker split behind `--shard-id/--num-shards`, and
`encode_on_ray` (`--distributor ray`)."""

from gtok.encode.distributed import encode_on_ray
from gtok.encode.model import load_encoding_model, refine_settings, resolve_model
from gtok.encode.run import EncodeSummary, default_workers, encode_shards
from gtok.encode.split import WorkerSlice, worker_slice

__all__ = [
    "EncodeSummary",
    "WorkerSlice",
    "default_workers",
    "encode_on_ray",
    "encode_shards",
    "load_encoding_model",
    "refine_settings",
    "resolve_model",
    "worker_slice",
]
