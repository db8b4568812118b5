"""Reconstructing images from token stores: `decode_store` (what `gtok decode` runs), the model
that decodes a store (`model_for_store`), row selection, output writers and the key <-> file
path mapping that `gtok eval --reconstructed DIR` reads back."""

from gtok.decode.keys import (
    GAUSSIANS_SUFFIX,
    HASHED_DIR,
    RECON_SUFFIX,
    hashed_path,
    key_path,
    path_key,
    read_index,
)
from gtok.decode.model import model_for_store
from gtok.decode.pictures import gaussians_pictures, png_bytes, uint8_images
from gtok.decode.run import FORMATS, DecodeSummary, decode_batch, decode_store
from gtok.decode.select import select_rows
from gtok.decode.writers import PngFolder, SampleNotWritten, WdsShards, wds_key_path

__all__ = [
    "FORMATS",
    "GAUSSIANS_SUFFIX",
    "HASHED_DIR",
    "RECON_SUFFIX",
    "DecodeSummary",
    "PngFolder",
    "SampleNotWritten",
    "WdsShards",
    "decode_batch",
    "decode_store",
    "gaussians_pictures",
    "hashed_path",
    "key_path",
    "model_for_store",
    "path_key",
    "png_bytes",
    "read_index",
    "select_rows",
    "uint8_images",
    "wds_key_path",
]
