"""Packing a folder of images into WebDataset tar shards: `pack_images` (what `gtok pack`
runs), the folder scan (order, keys, class labels), the per-file check and the shard files."""

from gtok.data.keys import KeyMaker, base_key
from gtok.data.scan import Entry, Scan, scan_folder
from gtok.pack.check import IMAGE_FORMATS, KEPT_FORMATS, Checked, check_file
from gtok.pack.output import CLASSES_FILE, MANIFEST
from gtok.pack.run import PackSummary, pack_images
from gtok.pack.shard import ShardStats, reason_kind, shard_name, stats_name

__all__ = [
    "CLASSES_FILE",
    "IMAGE_FORMATS",
    "KEPT_FORMATS",
    "MANIFEST",
    "Checked",
    "Entry",
    "KeyMaker",
    "PackSummary",
    "Scan",
    "ShardStats",
    "base_key",
    "check_file",
    "pack_images",
    "reason_kind",
    "scan_folder",
    "shard_name",
    "stats_name",
]
