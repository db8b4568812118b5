"""Exponential moving average of a model's parameters (the weights gtok exports and evaluates).

Decay is constant from step 1 (no warm-up of the decay); floating-point parameters are
averaged, every buffer (codebook statistics, r_max, BatchNorm statistics) is copied from
the live model, never averaged (docs/design.md section 1, training).
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

__all__ = ["ModelEMA"]

_Model = TypeVar("_Model", bound=nn.Module)


class ModelEMA(Generic[_Model]):
    """Holds `module`, a frozen copy of the model whose parameters track the live ones.

    After each optimizer step call `update(model)`: ema <- decay * ema + (1 - decay) * p.
    """

    def __init__(self, model: _Model, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average parameters into the EMA copy and copy every buffer."""
        ema_params: list[torch.Tensor] = []
        live_params: list[torch.Tensor] = []
        for (name, ema_p), (live_name, live_p) in zip(
            self.module.named_parameters(), model.named_parameters(), strict=True
        ):
            if name != live_name:
                raise ValueError(f"EMA and model parameters differ: {name} vs {live_name}")
            if ema_p.is_floating_point():
                ema_params.append(ema_p)
                live_params.append(live_p.detach())
            else:
                ema_p.copy_(live_p)
        if ema_params:
            torch._foreach_lerp_(ema_params, live_params, 1.0 - self.decay)
        for ema_b, live_b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(live_b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
