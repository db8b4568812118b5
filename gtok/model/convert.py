"""Convert the GaussianToken authors' released Lightning checkpoints into gtok model directories.

The checkpoint's `state_dict` is checked key by key and shape by shape against the authors'
key lists (packaged in `gtok/model/official_keys/`, copied from their model classes), then
every key is either renamed to a gtok parameter or dropped for a stated reason; anything
else is an error. Reported metrics use EMA weights, so each trainable parameter is taken from
its `model_ema.*` shadow (the keymap TSVs); buffers (codebook, its EMA statistics, r_max) are
not EMA'd and come from the live keys. Nothing is unpickled: the file is read with
`torch.load(weights_only=True)`.

Numeric agreement with the authors' released weights is not verified yet (their checkpoints
are not reachable from where gtok was built); the mapping is tested with synthetic
checkpoints built from the key and shape lists.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from gtok.errors import ArgumentError, GtokError
from gtok.model.config import PRESETS
from gtok.model.io import save_pretrained

__all__ = ["CONVERTIBLE", "ConversionReport", "convert_official", "official_keys"]

# preset -> the authors' config name (the suffix of the key-list files)
CONVERTIBLE = {"cifar": "cifar-gqgan-1", "imagenet": "in-gqgan-1"}
EMA_PREFIX = "model_ema."

# Keys that exist in the checkpoint but have no place in a gtok model, and why.
_DROPPED: list[tuple[str, str]] = [
    (r"gs_embed\.op_module_map\..*", "template copies of each op, never run in the forward pass"),
    (r"gs_embed\.layers\.[25]\.to_features\..*", "feature heads of the first two refines, unused"),
    (
        r"gs_embed\.layers\.[25]\.range_scheduler\..*",
        "scale ranges of the first two refines; only the last refine's r_max shapes Gaussians",
    ),
    (r"loss\..*", "training losses (discriminator, LPIPS), not part of the tokenizer"),
    (r"model_ema\.(decay|num_updates)", "EMA bookkeeping"),
]
_UNUSED_EMA = "EMA weights, not used (--no-ema)"


def _drop_group_axis(t: torch.Tensor) -> torch.Tensor:
    """Their codebook buffers carry a leading codebook-group axis of 1; ours do not."""
    return t.reshape(t.shape[1:]).float()


# Official name pattern -> (gtok name template, tensor transform); the first match wins, and
# keys in _DROPPED never get here. GaussianEmbed keeps the authors' module names (its flat
# `layers.{3r + k}` rounds, the last refine's `to_features` and `range_scheduler`).
_RENAMED: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]] = [
    (r"img_encoder\.(.*)", r"encoder.\1", None),
    (r"img_decoder\.(.*)", r"decoder.\1", None),
    (r"quantize\._codebook\.(embed|embed_avg|cluster_size)", r"quantize.\1", _drop_group_axis),
    (r"quantize\._codebook\.initted", "quantize.initted", lambda t: t.reshape(1).float()),
    (r"gs_embed\.(.*)", r"gaussian_embed.\1", None),
]


@dataclass
class ConversionReport:
    """What a conversion did: tensors written, how many came from EMA shadows, keys dropped
    (by reason), and where the model went."""

    preset: str
    tensors_written: int = 0
    taken_from_ema: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    model_dir: Path | None = None

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def to_dict(self) -> dict:
        return {
            "preset": self.preset,
            "model_dir": None if self.model_dir is None else str(self.model_dir),
            "tensors_written": self.tensors_written,
            "taken_from_ema": self.taken_from_ema,
            "dropped": self.dropped,
        }


def official_keys(preset: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The authors' state-dict keys -> shapes, and EMA key -> parameter name, for `preset`."""
    name = CONVERTIBLE[preset]
    folder = resources.files("gtok.model") / "official_keys"
    shapes = {}
    for line in (folder / f"keys_{name}.txt").read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    ema = {}
    for line in (folder / f"ema_keymap_{name}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            shadow, param = line.split("\t")
            ema[shadow] = param
    return shapes, ema


def convert_official(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str | None = None,
    ema: bool = True,
) -> ConversionReport:
    """Convert the authors' checkpoint file into the model directory `output_dir`.

    preset: "cifar" or "imagenet"; None infers it from the number of Gaussians.
    ema: take trainable parameters from the EMA shadows (as the authors' reported metrics
        do); False keeps the live weights.
    Raises `GtokError` for an unreadable file and for any key or shape that does not match.
    """
    from gtok.model.tokenizer import build_from_config

    path = Path(checkpoint).expanduser()
    state = _load_state(path)
    converted, report = convert_state_dict(state, preset, ema=ema, source=str(path))
    model = build_from_config(PRESETS[report.preset])
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()})
    report.model_dir = save_pretrained(model, output_dir)
    return report


def convert_state_dict(
    state: dict[str, torch.Tensor],
    preset: str | None = None,
    ema: bool = True,
    source: str = "the checkpoint",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The authors' `state_dict` -> gtok's state dict for the same preset, and a report.

    Every key of `state` is accounted for: renamed, used as an EMA shadow, or dropped for a
    reason in `_DROPPED`; anything else, a missing key or a wrong shape is a `GtokError`
    naming `source`. Works on meta tensors too (names and shapes only).
    """
    from gtok.model.tokenizer import build_from_config

    preset = preset or _infer_preset(source, state)
    if preset not in CONVERTIBLE:
        raise GtokError(
            f"cannot convert to preset {preset!r}; choose one of: {', '.join(CONVERTIBLE)}."
        )
    shapes, ema_map = official_keys(preset)
    live = _check_against_list(source, preset, state, shapes, ema_map)
    from_ema = _overwrite_with_ema(source, state, live, ema_map) if ema else set()
    report = ConversionReport(preset)
    for key in state.keys() - live.keys():  # EMA shadows, LPIPS, EMA bookkeeping
        if reason := _drop_reason(key) or (_UNUSED_EMA if key in ema_map and not ema else None):
            report.drop(reason)
    converted: dict[str, torch.Tensor] = {}
    for key in sorted(live):
        if reason := _drop_reason(key):
            report.drop(reason)
            continue
        new_key, tensor = _rename(key, live[key])
        converted[new_key] = tensor
        report.taken_from_ema += key in from_ema
    report.tensors_written = len(converted)

    with torch.device("meta"):
        expected = build_from_config(PRESETS[preset]).state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(
        k for k in converted if k in expected and converted[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        raise GtokError(
            f"the conversion map for {preset} does not fit gtok's model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); this is a gtok bug, "
            "please report it."
        )
    return converted, report


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's `state_dict` (or the file itself when it is a bare state dict)."""
    if not path.is_file():
        raise GtokError(f"{path} does not exist or is not a file; give the authors' .ckpt file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None:
            raise GtokError(f"{path} is not a readable PyTorch checkpoint.") from exc
        raise GtokError(
            f"{path} holds pickled Python objects besides tensors (such as {refused[1]}), and "
            "gtok never unpickles those; in a trusted environment re-save just its weights "
            "with `torch.save({'state_dict': torch.load(path)['state_dict']}, 'weights.ckpt')`."
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise GtokError(f"{path} is not a readable PyTorch checkpoint ({exc}).") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GtokError(f"{path} has no state_dict of tensors; it is not a Lightning checkpoint.")
    if odd := [k for k in state if not isinstance(k, str)][:3]:
        raise GtokError(
            f"{path} has a state_dict with keys that are not names (such as {odd}); it is not "
            "a Lightning checkpoint."
        )
    return state


def _infer_preset(source: str, state: dict[str, torch.Tensor]) -> str:
    anchor = state.get("gs_embed.gaussian_lifter.anchor")
    by_count = {PRESETS[p].num_gaussians: p for p in CONVERTIBLE}
    if anchor is None or anchor.dim() != 2 or anchor.shape[0] not in by_count:
        shape = None if anchor is None else list(anchor.shape)
        raise ArgumentError(
            f"{source} is not a GaussianToken checkpoint of a known config (anchor shape "
            f"{shape}); pass preset if it is one.",
            "preset",
        )
    return by_count[anchor.shape[0]]


def _check_against_list(
    source: str,
    preset: str,
    state: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    ema_map: dict[str, str],
) -> dict[str, torch.Tensor]:
    """The listed live keys of `state`, after checking that every key of `state` is listed,
    an EMA shadow in `ema_map`, or dropped for a known reason."""
    live = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    missing = sorted(set(shapes) - set(live))
    if missing:
        raise GtokError(
            f"{source} lacks {len(missing)} key(s) of the authors' {preset} model "
            f"(e.g. {', '.join(missing[:3])}); is it a {preset} checkpoint?"
        )
    extra = sorted(
        k for k in state.keys() - shapes.keys() if not _drop_reason(k) and k not in ema_map
    )
    if extra:
        raise GtokError(
            f"{source} has {len(extra)} key(s) the authors' {preset} model does not "
            f"(e.g. {', '.join(extra[:3])}); it is not a checkpoint gtok knows how to convert."
        )
    wrong = [k for k in shapes if tuple(live[k].shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise GtokError(
            f"{source} has {len(wrong)} tensor(s) of an unexpected shape (e.g. {k} is "
            f"{list(live[k].shape)}, the {preset} model has {list(shapes[k])}); "
            f"is it a {preset} checkpoint?"
        )
    return {k: live[k] for k in shapes}


def _overwrite_with_ema(
    source: str,
    state: dict[str, torch.Tensor],
    live: dict[str, torch.Tensor],
    ema_map: dict[str, str],
) -> set[str]:
    """Replace each shadowed parameter in `live` by its EMA value; returns their names."""
    absent = sorted(k for k in ema_map if k not in state)
    if absent:
        raise ArgumentError(
            f"{source} lacks {len(absent)} EMA weight(s) (e.g. {absent[0]}); convert the live "
            "weights with ema=False if the run had no EMA.",
            "ema",
        )
    for shadow, param in ema_map.items():
        if state[shadow].shape != live[param].shape:
            raise GtokError(
                f"{source}: EMA weight {shadow} has shape {list(state[shadow].shape)} but "
                f"{param} has {list(live[param].shape)}; the checkpoint is inconsistent."
            )
        live[param] = state[shadow]
    return set(ema_map.values())


def _drop_reason(key: str) -> str | None:
    for pattern, reason in _DROPPED:
        if re.fullmatch(pattern, key):
            return reason
    return None


def _rename(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    for pattern, template, transform in _RENAMED:
        if match := re.fullmatch(pattern, key):
            return match.expand(template), transform(tensor) if transform else tensor
    raise GtokError(f"no conversion rule for {key}; this is a gtok bug, please report it.")
