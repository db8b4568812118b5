"""The output folder of `gtok pack`: start it, resume it, or refuse it.

`SHARDS_DIR/pack.json` records the settings of the pack and what they were applied to (the
entry count and a fingerprint of every entry's path, key and label); at the end it also
holds the summary. Rerunning the same pack resumes it: shards whose stats file is there and
whose tar has the size the stats record are kept, the others are written again. A folder
that holds a pack of other files or settings, or files `gtok pack` does not write, is
refused; `overwrite` deletes a previous pack's files first (only those: anything else in the
folder is still refused, so a mistyped `-o` never deletes a user's files).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gtok._version import __version__
from gtok.errors import GtokError
from gtok.outputs import naming, write_atomically
from gtok.pack.shard import TEMP_SUFFIX, ShardStats, shard_name, stats_name
from gtok.safeload import SETTINGS_BYTES, Unreadable, load_json

__all__ = ["CLASSES_FILE", "MANIFEST", "finish_manifest", "prepare_output", "write_json"]

MANIFEST = "pack.json"
CLASSES_FILE = "classes.json"
FORMAT = "gtok-pack"
FORMAT_VERSION = 1
_OURS = re.compile(
    r"^(shard-\d{6,}(\.tar|_stats\.json)|"
    + re.escape(MANIFEST)
    + "|"
    + re.escape(CLASSES_FILE)
    + ")("
    + re.escape(TEMP_SUFFIX)
    + ")?$"
)
SETTING_DEFAULTS = {"image_format": "keep"}  # of settings that packs before them did not record
_DESCRIBE = {
    "per_shard": "--per-shard",
    "labels": "--labels",
    "max_pixels": "--max-pixels",
    "image_format": "--image-format",
    "entries": "the number of files in the input folder",
    "fingerprint": "the input folder's file names",
}


def write_json(path: Path, document: dict) -> None:
    """`document` as indented JSON at `path`, written under a temporary name and renamed."""
    text = json.dumps(document, indent=2, default=str) + "\n"
    write_atomically(path, text.encode(), path.with_name(path.name + TEMP_SUFFIX))


def _ours(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files a pack writes, everything else) directly in `folder`."""
    mine, other = [], []
    for child in sorted(folder.iterdir()):
        (mine if _OURS.match(child.name) and child.is_file() else other).append(child)
    return mine, other


def _differences(before: dict, now: dict) -> str:
    changed = [k for k in now if before.get(k) != now[k]]
    return ", ".join(_DESCRIBE.get(k, k) for k in changed) or "its format"


def _done_shards(folder: Path, shards: int) -> set[int]:
    done = set()
    for index in range(shards):
        stats, tar = folder / stats_name(index), folder / shard_name(index)
        try:
            if tar.stat().st_size == ShardStats.read(stats).bytes:
                done.add(index)
        except (OSError, Unreadable, TypeError):
            continue  # missing or unreadable: write the shard again
    return done


def prepare_output(
    folder: Path, images_dir: Path, settings: dict, shards: int, overwrite: bool
) -> set[int]:
    """Make `folder` ready for a pack of `shards` shards with `settings` and record them;
    returns the indices of the shards a previous run of the same pack finished."""
    if folder.exists() and not folder.is_dir():
        raise GtokError(f"{folder} is a file; give a new or empty folder for the shards.")
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    mine, other = _ours(folder)
    if other:
        raise GtokError(
            f"{folder} holds files that gtok pack does not write (e.g. {other[0].name}); "
            "pack into a new or empty folder."
        )
    done: set[int] = set()
    manifest = folder / MANIFEST
    if mine and not overwrite:
        try:
            before = load_json(manifest, SETTINGS_BYTES)
        except Unreadable:
            before = None
        if not isinstance(before, dict) or before.get("format") != FORMAT:
            raise GtokError(
                f"{folder} holds shards without a readable {MANIFEST}; pass --overwrite to "
                "replace them, or pack into another folder."
            )
        recorded = {**SETTING_DEFAULTS, **(before.get("settings") or {})}
        if recorded != settings:
            raise GtokError(
                f"{folder} holds a pack that differs in "
                f"{_differences(recorded, settings)}; pass --overwrite to "
                "replace it, or pack into another folder."
            )
        done = _done_shards(folder, shards)
    for path in mine:
        if overwrite or path.name.endswith(TEMP_SUFFIX):
            path.unlink()
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gtok_version": __version__,
        "images_dir": str(images_dir),
        "settings": settings,
        "complete": False,
    }
    write_json(manifest, document)
    return done


def finish_manifest(folder: Path, summary: dict) -> None:
    """Mark the pack in `folder` complete and add its summary to `pack.json`."""
    manifest = folder / MANIFEST
    document = load_json(manifest, SETTINGS_BYTES)
    document.update(complete=True, summary=summary)
    write_json(manifest, document)
