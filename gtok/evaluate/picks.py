"""`GridPicker`: which images the report grid shows, chosen across the whole set by PSNR.

Scoring streams, so the picker keeps candidates as images go by, in bounded memory:

- the `best` highest and `worst` lowest PSNR images, exactly (two heaps; ties go to the
  image scored first);
- a uniform sample of `pool` images (reservoir sampling, seeded, so a rerun picks the same),
  from which the `median` images nearest the median PSNR of every scored image are taken at
  the end. With at most `pool` images scored the sample holds them all and the median picks
  are exact; otherwise each pick's rank (kept with it) says how near the middle it lies.

`count` images are split as best = worst = (count + 1) // 3 and median = the rest; a set of
`count` images or fewer is shown whole. The ranking PSNR is the first tokenizer's.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GridPicker", "Pick", "split_count"]

POOL = 128  # images kept for the median picks (about 75 MB at 256 px with --compare)


@dataclass
class Pick:
    """A kept image: its position in scoring order, PSNR (dB) and the caller's payload."""

    index: int
    psnr: float
    payload: object
    role: str = ""  # "best", "median" or "worst", set by `GridPicker.picks`
    rank: int = 0  # 1 = highest PSNR of all scored images


def split_count(count: int) -> tuple[int, int, int]:
    """(best, median, worst) images for a grid of `count` (>= 0)."""
    side = (count + 1) // 3
    return side, count - 2 * side, side


class GridPicker:
    """Keeps the grid's candidates while images are scored (see the module doc)."""

    def __init__(self, count: int, *, pool: int = POOL, seed: int = 0) -> None:
        if count < 0:
            raise ValueError(f"grid image count must be non-negative, got {count}")
        self.count = count
        self.best, self.median, self.worst = split_count(count)
        self.pool = max(pool, count)
        self._rng = random.Random(seed)
        self._high: list[tuple[float, int, Pick]] = []  # min-heap of the best
        self._low: list[tuple[float, int, Pick]] = []  # min-heap on -psnr of the worst
        self._sample: list[Pick] = []
        self.seen = 0

    def offer(self, psnr: float, make: Callable[[], object]) -> None:
        """Consider the next scored image; `make()` builds its payload, called only when the
        image is kept (so payloads can copy tensors out of a batch without keeping it)."""
        index, self.seen = self.seen, self.seen + 1
        if self.count == 0:
            return
        built: list[Pick] = []

        def pick() -> Pick:
            if not built:
                built.append(Pick(index, psnr, make()))
            return built[0]

        _keep(self._high, self.best, (psnr, -index), pick)
        _keep(self._low, self.worst, (-psnr, -index), pick)
        if len(self._sample) < self.pool:
            self._sample.append(pick())
        else:
            slot = self._rng.randrange(index + 1)
            if slot < self.pool:
                self._sample[slot] = pick()

    def picks(self, all_psnr: Sequence[float]) -> list[Pick]:
        """The grid, best first, then median, then worst; `all_psnr`: every scored image's
        PSNR in scoring order (for the median and the ranks)."""
        values = np.asarray(all_psnr, dtype=np.float64)
        if len(values) != self.seen:
            raise ValueError(f"{len(values)} PSNR values for {self.seen} offered images")
        if self.seen <= self.count:  # everything fits: all of it, by rank
            chosen = sorted(self._sample, key=_by_rank)
            roles = _roles(*split_count(len(chosen)))
        else:
            best = sorted((p for _, _, p in self._high), key=_by_rank)
            worst = sorted((p for _, _, p in self._low), key=_by_rank)
            taken = {p.index for p in best + worst}
            middle = float(np.median(values))
            rest = [p for p in self._sample if p.index not in taken]
            near = sorted(rest, key=lambda p: (abs(p.psnr - middle), p.index))[: self.median]
            chosen = best + sorted(near, key=_by_rank) + worst
            roles = _roles(len(best), len(near), len(worst))
        for pick, role in zip(chosen, roles, strict=True):
            pick.role = role
            higher = int((values > pick.psnr).sum())
            earlier_ties = int((values[: pick.index] == pick.psnr).sum())
            pick.rank = higher + earlier_ties + 1
        return chosen


def _by_rank(pick: Pick) -> tuple[float, int]:
    return -pick.psnr, pick.index


def _roles(best: int, median: int, worst: int) -> list[str]:
    return ["best"] * best + ["median"] * median + ["worst"] * worst


def _keep(
    heap: list[tuple[float, int, Pick]],
    size: int,
    order: tuple[float, int],
    pick: Callable[[], Pick],
) -> None:
    """Keep the `size` entries of largest `order` in the min-heap `heap`."""
    if size == 0:
        return
    if len(heap) < size:
        heapq.heappush(heap, (*order, pick()))
    elif order > heap[0][:2]:
        heapq.heapreplace(heap, (*order, pick()))
