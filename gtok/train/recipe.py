"""Training recipes: the authors' (`cifar`, `imagenet` and their VQ baselines) and the small
presets' (`tiny`, `vq-tiny`), measured with `bench/overfit.py` (docs/results.md, "Training
recipe for the small presets").

A recipe is what `gtok train` changes beyond the architecture of the preset:

- `restart_used_codes`: the quantizer's dead-code rule. The authors restart every code
  whose EMA cluster size is below 2; at the small presets' batch (16 x 64 = 1024 vectors
  for 1024 codes) the mean cluster size is 1, so that rule replaces every used code at
  every step. The small recipe never restarts a code the step's batch used.
- `dropout`: GaussianEmbed's dropout (None: the preset's 0.1). The small recipe uses 0:
  a tokenizer is trained to reconstruct, and the VQ baseline has no dropout at all.
- `embed_lr_scale`: GaussianEmbed's learning rate as a multiple of the run's (1: one rate).
- `norm_groups`: GroupNorm groups of the CNN and of GaussianEmbed's map lifter (None: the
  preset's 32). The small presets are 32 channels wide, so 32 groups normalize every channel
  on its own (an instance norm): a flat region's colour is erased at every norm and comes
  back only through zero-padding effects at the borders, so reconstructions turn gray,
  grayscale input gets a constant cast and flat areas show a faint grid. The small recipe
  uses 8 groups (4 channels each, the authors' ratio at their width of 128).

Warm-up and gradient clipping are `TrainConfig` fields shared by every recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["RECIPES", "SMALL_PRESETS", "Recipe", "default_recipe", "param_groups"]

SMALL_PRESETS = frozenset({"tiny", "vq-tiny"})
EMBED_PREFIX = "gaussian_embed."  # parameter names of GaussianEmbed in a GaussianTokenizer


@dataclass(frozen=True)
class Recipe:
    """What a training recipe sets (see the module docstring)."""

    restart_used_codes: bool
    dropout: float | None
    embed_lr_scale: float
    norm_groups: int | None = None

    def model_overrides(self, kind: str) -> dict[str, Any]:
        """TokenizerConfig fields this recipe sets for a model of `kind` ("gaussian"/"vq")."""
        out: dict[str, Any] = {"restart_used_codes": self.restart_used_codes}
        if kind == "gaussian" and self.dropout is not None:
            out["dropout"] = self.dropout
        if self.norm_groups is not None:
            out["norm_groups"] = self.norm_groups
        return out


RECIPES: dict[str, Recipe] = {
    "authors": Recipe(restart_used_codes=True, dropout=None, embed_lr_scale=1.0),
    "small": Recipe(restart_used_codes=False, dropout=0.0, embed_lr_scale=1.0, norm_groups=8),
}


def default_recipe(preset: str) -> str:
    """The recipe a preset trains with unless the user picks one."""
    return "small" if preset in SMALL_PRESETS else "authors"


def param_groups(model: nn.Module, embed_lr_scale: float) -> list[dict[str, Any]]:
    """Trainable parameters of `model` as optimizer groups, each with an "lr_scale" (the
    group's rate = the run's rate * lr_scale): GaussianEmbed's get `embed_lr_scale`, the
    rest 1. A model without GaussianEmbed, or a scale of 1, gives one group."""
    embed: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (embed if name.startswith(EMBED_PREFIX) else rest).append(p)
    if not embed or embed_lr_scale == 1.0:
        return [{"params": rest + embed, "lr_scale": 1.0}]
    return [{"params": rest, "lr_scale": 1.0}, {"params": embed, "lr_scale": embed_lr_scale}]
