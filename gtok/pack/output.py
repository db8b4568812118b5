"""The output folder of `gtok pack`: start it, resume it, or refuse it.

`SHARDS_DIR/pack.json` records the settings of the pack and what they were applied to (the
entry count and a fingerprint of every entry's path, key and label); at the end it also
holds the summary. Rerunning the same pack resumes it: shards whose stats file is there and
whose tar has the size the stats record are kept, the others are written again. A folder
that holds a pack of other files or settings or of another `FORMAT_VERSION` (that of the
folder's layout: file names, `pack.json`, stats files), or files `gtok pack` does not write,
is refused; `overwrite` deletes a previous pack's files first (only those: anything else in
the folder is still refused, so a mistyped `-o` never deletes a user's files).

One pack at a time writes into a folder (`hold_output`): while it runs it holds the lock file
`SHARDS_DIR/locks/pack.lock` (`gtok.store.lock`: pid, host, start time), and a second pack
into the folder is refused with one sentence naming the first; the lock of a pack that was
killed on this host is taken over. So the temporary files found at the start are all a killed
pack's, and are deleted.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from gtok._version import __version__
from gtok.errors import UPGRADE, ArgumentError, GtokError, version_refusal
from gtok.outputs import is_temporary, naming, write_atomically
from gtok.pack.shard import ShardStats, shard_name, stats_name
from gtok.safeload import SETTINGS_BYTES, Unreadable, load_json
from gtok.store.location import Location
from gtok.store.lock import FOLDER as LOCKS_FOLDER
from gtok.store.lock import Locks

__all__ = [
    "CLASSES_FILE",
    "MANIFEST",
    "finish_manifest",
    "hold_output",
    "prepare_output",
    "write_json",
]

MANIFEST = "pack.json"
CLASSES_FILE = "classes.json"
FORMAT = "gtok-pack"
FORMAT_VERSION = 1
LOCK = "pack"  # the lock file locks/pack.lock
LEGACY_TEMPORARY = ".partial"  # the suffix of the temporary files of earlier gtok versions
_OURS = re.compile(
    r"^(shard-\d{6,}(\.tar|_stats\.json)|"
    + re.escape(MANIFEST)
    + "|"
    + re.escape(CLASSES_FILE)
    + ")("
    + re.escape(LEGACY_TEMPORARY)
    + ")?$"
)
SETTING_DEFAULTS = {"image_format": "keep"}  # of settings that packs before them did not record
_DESCRIBE = {  # the recorded facts that are not settings; a setting is named as it is
    "entries": "the number of files in the input folder",
    "fingerprint": "the input folder's file names",
}


def write_json(path: Path, document: dict) -> None:
    """`document` as indented JSON at `path`, written under a temporary name and renamed."""
    text = json.dumps(document, indent=2, default=str) + "\n"
    write_atomically(path, text.encode())


def _is_leftover(name: str) -> bool:
    """Whether `name` is a temporary file that a pack killed while writing it left."""
    return is_temporary(name) or name.endswith(LEGACY_TEMPORARY)


def _ours(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files a pack writes, everything else) directly in `folder`; the lock folder is
    neither."""
    mine: list[Path] = []
    other: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name == LOCKS_FOLDER and child.is_dir() and not child.is_symlink():
            continue
        written = _OURS.match(child.name) or is_temporary(child.name)
        (mine if written and child.is_file() else other).append(child)
    return mine, other


def _differences(before: dict, now: dict) -> str:
    changed = [k for k in now if before.get(k) != now[k]]
    return ", ".join(_DESCRIBE.get(k, k) for k in changed) or "its format"


def _check_version(folder: Path, manifest: dict) -> None:
    """Refuse to resume the pack whose `pack.json` is `manifest` when it has another format
    version than `FORMAT_VERSION` (docs/packing.md, "Format version")."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return
    raise ArgumentError(
        version_refusal(
            f"the pack in {folder}",
            version,
            FORMAT_VERSION,
            manifest.get("gtok_version"),
            newer=f"{UPGRADE} to resume it, or pass overwrite to pack it again",
            other="resume it with the gtok that wrote it, or pass overwrite to pack it again",
        ),
        "overwrite",
    )


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


@contextlib.contextmanager
def hold_output(folder: Path) -> Iterator[None]:
    """Create the pack folder `folder` and hold its lock while the block runs (see the module
    doc); raises `GtokError` when `folder` is a file or another pack holds the lock."""
    if folder.exists() and not folder.is_dir():
        raise GtokError(f"{folder} is a file; give a new or empty folder for the shards.")
    with naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
    with Locks(Location(str(folder)), "packing") as locks:
        locks.acquire(
            {LOCK: f"the pack folder {folder}"},
            advice="wait for that pack to finish, or pack into another folder",
        )
        yield


def prepare_output(
    folder: Path, images_dir: Path, settings: dict, shards: int, overwrite: bool
) -> set[int]:
    """Make `folder` (created by `hold_output`, which holds its lock) ready for a pack of
    `shards` shards with `settings` and record them; returns the indices of the shards a
    previous run of the same pack finished."""
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
            raise ArgumentError(
                f"{folder} holds shards without a readable {MANIFEST}; pass overwrite to "
                "replace them, or pack into another folder.",
                "overwrite",
            )
        _check_version(folder, before)
        recorded = {**SETTING_DEFAULTS, **(before.get("settings") or {})}
        if recorded != settings:
            raise ArgumentError(
                f"{folder} holds a pack that differs in "
                f"{_differences(recorded, settings)}; pass overwrite to "
                "replace it, or pack into another folder.",
                "overwrite",
                *(name for name in settings if name not in _DESCRIBE),
            )
        done = _done_shards(folder, shards)
    for path in mine:
        if overwrite or _is_leftover(path.name):
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
