"""Per-step learning rate: linear warm-up from 1e-6, then cosine decay to 0 (docs/design.md
section 1, training)."""

from __future__ import annotations

import math

__all__ = ["WARMUP_START_LR", "lr_at"]

WARMUP_START_LR = 1e-6


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Steps 0 .. warmup_steps - 1 go linearly from 1e-6 towards `base_lr`; from
    `warmup_steps` the rate follows a half cosine from `base_lr` to 0 at `total_steps`.
    """
    if not 0 <= warmup_steps <= total_steps or total_steps < 1:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
            f"got {warmup_steps}, {total_steps}"
        )
    if step < warmup_steps:
        return WARMUP_START_LR + (base_lr - WARMUP_START_LR) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))
