"""`pack_images`: a folder of images -> WebDataset tar shards (what `gtok pack` runs).

The folder's entries (`scan_folder`: any nesting, a fixed order, keys from the relative
paths) are cut into shards of `per_shard` entries each, in order, so shard i always covers
the same files whatever happened before; files that cannot be packed are skipped with the
reason in their shard's stats, so a shard holds at most `per_shard` samples. Files are read
and checked (`check_file`) in `workers` processes (spawned; 0: in this one), in order; with
fewer than `MIN_FILES_PER_WORKER` files per worker, fewer workers (or none) are started.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gtok.console import console, is_quiet, progress
from gtok.data.images import DEFAULT_MAX_PIXELS
from gtok.data.scan import Entry, Scan, scan_folder
from gtok.errors import ArgumentError, GtokError
from gtok.pack.check import IMAGE_FORMATS, Checked, check_file
from gtok.pack.output import (
    CLASSES_FILE,
    finish_manifest,
    hold_output,
    prepare_output,
    write_json,
)
from gtok.pack.shard import ShardStats, ShardWriter, shard_name, stats_name

__all__ = ["PackSummary", "pack_images"]

EXAMPLES = 20  # skipped files listed in the summary (all of them are in the stats files)
MIN_FILES_PER_WORKER = 128  # fewer files are read in this process: spawning costs seconds


@dataclass
class PackSummary:
    """What the pack folder holds (all shards, this run's and earlier ones) and this run's work.

    files == packed + skipped; hidden entries are not files of the pack.
    """

    images_dir: str
    out: str
    per_shard: int
    labels: bool
    shards: int
    shard_pattern: str  # e.g. "shard-{000000..000003}.tar", for gtok encode / train
    files: int = 0
    packed: int = 0
    skipped: int = 0
    converted: int = 0
    bytes: int = 0
    classes: int | None = None
    classes_file: str | None = None
    shards_written: int = 0
    shards_already_done: int = 0
    hidden_ignored: int = 0
    hidden_examples: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    files_per_second: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, stats: ShardStats) -> None:
        self.files += stats.files
        self.packed += stats.count
        self.skipped += stats.skipped
        self.converted += stats.converted
        self.bytes += stats.bytes
        for kind, n in stats.reasons.items():
            self.reasons[kind] = self.reasons.get(kind, 0) + n
        room = EXAMPLES - len(self.skipped_examples)
        self.skipped_examples += stats.skipped_files[: max(room, 0)]


def _pattern(shards: int) -> str:
    if shards == 1:
        return shard_name(0)
    return f"shard-{{{0:06d}..{shards - 1:06d}}}.tar"


def _checked(
    scan: Scan, entries: list[Entry], workers: int, max_pixels: int, image_format: str
) -> Iterator[tuple[Entry, Checked]]:
    """(entry, verdict) in entry order; entries with a known problem are not read."""
    readable = [e for e in entries if e.problem is None]
    paths = [str(scan.root / e.path) for e in readable]
    check = functools.partial(check_file, max_pixels=max_pixels, image_format=image_format)
    workers = min(workers, len(paths) // MIN_FILES_PER_WORKER)
    if workers > 0:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        verdicts: Iterator[Checked] = pool.imap(check, paths, chunksize=8)
    else:
        pool, verdicts = None, map(check, paths)
    try:
        for entry in entries:
            yield entry, Checked(reason=entry.problem) if entry.problem else next(verdicts)
    finally:
        if pool is not None:
            pool.terminate()


def _metadata(entry: Entry, checked: Checked, classes: dict[str, int] | None) -> dict:
    meta = {
        "path": entry.path,
        "width": checked.width,
        "height": checked.height,
        "format": checked.format,
        "converted": checked.converted,
    }
    if classes is not None:
        meta["class"] = entry.path.split("/", 1)[0]
    return meta


def _write_shards(
    scan: Scan,
    out: Path,
    todo: list[int],
    per_shard: int,
    workers: int,
    max_pixels: int,
    image_format: str,
) -> Iterator[tuple[int, ShardStats]]:
    """Write the shards `todo`; yields (index, stats) as each one is done."""
    entries = [e for i in todo for e in scan.entries[i * per_shard : (i + 1) * per_shard]]
    verdicts = _checked(scan, entries, workers, max_pixels, image_format)
    with progress("img") as bar:
        task = bar.add_task("pack", total=len(entries))
        for index in todo:
            started = time.perf_counter()
            stats = ShardStats(shard_name(index))
            writer = ShardWriter(out, index)
            try:
                for _ in scan.entries[index * per_shard : (index + 1) * per_shard]:
                    entry, checked = next(verdicts)
                    if checked.reason is not None:
                        stats.skip(entry.path, entry.key, checked.reason)
                    else:
                        assert checked.data is not None  # a Checked without a reason has data
                        meta = _metadata(entry, checked, scan.classes)
                        writer.add(entry.key, checked.ext, checked.data, entry.label, meta)
                        stats.add(len(checked.data), checked.converted)
                    bar.advance(task)
                stats.bytes = writer.close()
            except BaseException:
                writer.abort()
                raise
            stats.seconds = time.perf_counter() - started
            stats.write(out / stats_name(index))
            yield index, stats


def pack_images(
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    per_shard: int = 1000,
    labels: bool = False,
    overwrite: bool = False,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_format: str = "keep",
) -> PackSummary:
    """Pack every image under `images_dir` (any nesting) into WebDataset shards in `out`.

    per_shard: input files per shard (a shard holds fewer samples when some are skipped).
    labels: the first-level sub-folder of each file is its class: `<key>.cls` holds the class
        id and `out/classes.json` the class name -> id mapping.
    overwrite: replace a previous pack in `out`; without it, the same pack resumes and a
        different one is refused (`gtok.pack.output`). A pack still running into `out` (in
        another process) is refused whatever this is (`gtok.pack.output.hold_output`).
    workers: processes that read and check files (0: this process).
    image_format: "keep" (JPEG, PNG and WebP as they are, other formats as PNG), or "jpg",
        "png", "webp": every sample in that format, re-encoded only when the file is in
        another (PNG and WebP losslessly, JPEG at quality 95; `gtok.pack.check`).
    Writes `out/shard-NNNNNN.tar`, `out/shard-NNNNNN_stats.json` per shard and `out/pack.json`
    (settings and this summary).
    """
    started = time.perf_counter()
    source, folder = Path(images_dir), Path(out)
    if not source.is_dir():
        raise GtokError(f"{source} is not a folder; give the folder that holds the images.")
    if per_shard < 1:
        raise ArgumentError(f"per_shard must be at least 1, got {per_shard}.", "per_shard")
    if workers < 0:
        raise ArgumentError(f"workers must be 0 or more, got {workers}.", "workers")
    if image_format not in IMAGE_FORMATS:
        raise ArgumentError(
            f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}.",
            "image_format",
        )
    root, target = source.resolve(), folder.resolve()
    if target == root or target in root.parents:
        raise GtokError(f"{folder} contains the images in {source}; write the shards elsewhere.")
    scan = scan_folder(source, labels=labels, skip=target)
    if not scan.entries:
        hidden = f" ({len(scan.hidden)} hidden entries ignored)" if scan.hidden else ""
        raise GtokError(f"{source} holds no files{hidden}; give the folder that holds the images.")
    if labels and not scan.classes:
        raise ArgumentError(
            f"labels takes each first-level sub-folder of {source} as a class, but it has "
            "none; put the images of each class in a sub-folder, or drop labels.",
            "labels",
        )
    shards = -(-len(scan.entries) // per_shard)
    settings = {
        "per_shard": per_shard,
        "labels": labels,
        "max_pixels": max_pixels,
        "image_format": image_format,
        "entries": len(scan.entries),
        "fingerprint": scan.fingerprint(),
    }
    with hold_output(folder):
        done = prepare_output(folder, root, settings, shards, overwrite)
        summary = PackSummary(
            images_dir=str(source),
            out=str(folder),
            per_shard=per_shard,
            labels=labels,
            shards=shards,
            shard_pattern=_pattern(shards),
            shards_already_done=len(done),
            hidden_ignored=len(scan.hidden),
            hidden_examples=scan.hidden[:EXAMPLES],
        )
        if scan.classes is not None:
            write_json(folder / CLASSES_FILE, scan.classes)
            summary.classes, summary.classes_file = len(scan.classes), str(folder / CLASSES_FILE)
        finished: dict[int, ShardStats] = {i: ShardStats.read(folder / stats_name(i)) for i in done}
        todo = [i for i in range(shards) if i not in done]

        written_shards = _write_shards(
            scan, folder, todo, per_shard, workers, max_pixels, image_format
        )
        for index, stats in written_shards:
            finished[index] = stats
            summary.shards_written += 1
        for index in sorted(finished):
            summary.add(finished[index])
        summary.seconds = time.perf_counter() - started
        written = sum(finished[i].files for i in todo)
        summary.files_per_second = written / summary.seconds if summary.seconds else 0.0
        finish_manifest(folder, summary.to_dict())
    if summary.skipped and not is_quiet():
        console.print(
            f"[yellow]{summary.skipped} files skipped[/] ("
            + ", ".join(f"{n} {kind}" for kind, n in sorted(summary.reasons.items()))
            + f"; every file and reason in {folder}/shard-*_stats.json)"
        )
    return summary
