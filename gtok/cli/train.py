"""`gtok train`: train a tokenizer from WebDataset shards into a run directory (resumable)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

from gtok.cli._common import ConfigOption, JsonFlag, UsageProblem, choices, print_json
from gtok.cli._flags import with_flags
from gtok.cli._signals import INTERRUPTED, RESUME, TERMINATED, resumable, stop_terminated
from gtok.console import console, is_quiet
from gtok.errors import GtokError
from gtok.model.config import PRESETS
from gtok.safeload import TooDeep, Unreadable, parse_json
from gtok.train.config import OPTIMIZERS, PRECISIONS, Precision, TrainConfig
from gtok.train.recipe import RECIPES

if TYPE_CHECKING:
    from gtok.train import TrainResult

_RUN = "Run"
_DATA = "Data"
_LOSS = "Loss and optimizer"
_REPORT = "Logging and checkpoints"
_REQUIRED = " [required]"

if TYPE_CHECKING:  # enumerations built at run time: a type checker sees StrEnums
    Preset = StrEnum
    Optimizer = StrEnum
    Recipe = StrEnum
    TrainPrecision = StrEnum
else:
    Preset = choices("Preset", PRESETS)
    Optimizer = choices("Optimizer", OPTIMIZERS)
    Recipe = choices("Recipe", RECIPES)
    TrainPrecision = choices("TrainPrecision", PRECISIONS)
_AUTO = TrainPrecision("auto")
_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))  # named in its messages


def _opt(help: str, panel: str, *names: str, **checks: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=panel, **checks)


def _model_overrides(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs -> TokenizerConfig overrides (values read as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE (e.g. --model codebook_size=512).")
        try:
            out[key.strip()] = parse_json(value, f"--model {key}")
        except TooDeep as exc:
            raise typer.BadParameter(str(exc)) from exc
        except Unreadable:
            out[key.strip()] = value
    return out


def train(
    shards: Annotated[
        list[str] | None,
        typer.Argument(
            help="Training shards: folders of .tar shards, .parquet files or images, .tar or "
            ".parquet files, globs, {a..b} patterns.",
            metavar="SHARDS",
        ),
    ] = None,
    preset: Annotated[
        Preset | None, _opt("Model preset (see docs/training.md)." + _REQUIRED, _RUN)
    ] = None,
    output: Annotated[
        Path | None,
        _opt(
            "Run directory; an existing run there is resumed." + _REQUIRED,
            _RUN,
            "--output",
            "-o",
            file_okay=False,
        ),
    ] = None,
    config: ConfigOption = None,
    steps: Annotated[
        int | None, _opt("Optimizer steps of the whole run. [required: this or --epochs]", _RUN)
    ] = None,
    epochs: Annotated[
        float | None, _opt("Passes over the training samples (instead of --steps).", _RUN)
    ] = None,
    batch_size: Annotated[int, _opt("Images per process and step.", _RUN)] = 16,
    lr: Annotated[float, _opt("Peak learning rate (tokenizer and discriminator).", _LOSS)] = 2e-4,
    image_size: Annotated[
        int | None, _opt("Training image side in pixels (default: the preset's).", _DATA)
    ] = None,
    val_shards: Annotated[
        list[str] | None, _opt("Validation shards (repeat the flag for several).", _DATA)
    ] = None,
    image_column: Annotated[
        str | None,
        _opt(
            "The column of Parquet inputs that holds the images (default: the Hugging Face "
            "Image column, a {bytes, path} struct column or a binary jpg/png/webp column).",
            _DATA,
        ),
    ] = None,
    seed: Annotated[int, _opt("Seed of weights, data order and augmentation.", _RUN)] = 0,
    device: Annotated[str, _opt("auto, cpu, cuda or cuda:N.", _RUN)] = "auto",
    workers: Annotated[int, _opt("Data loading processes per training process.", _DATA)] = 2,
    precision: Annotated[
        TrainPrecision, _opt("auto: bf16 on CUDA, else fp32; bf16 also runs on the CPU.", _RUN)
    ] = _AUTO,
    optimizer: Annotated[
        Optimizer | None, _opt("Default: per preset, see docs/training.md.", _LOSS)
    ] = None,
    grad_clip: Annotated[
        float, _opt("Max gradient norm per network; 0 turns clipping off.", _LOSS)
    ] = 1.0,
    l1_weight: Annotated[float, _opt("Weight of the L1 loss.", _LOSS)] = 1.0,
    lpips_weight: Annotated[float, _opt("Weight of the LPIPS-VGG loss.", _LOSS)] = 1.0,
    commit_weight: Annotated[float, _opt("Weight of the commitment loss.", _LOSS)] = 0.25,
    gan_weight: Annotated[
        float,
        _opt(
            "Weight of the generator (GAN) loss; 0 also leaves the discriminator untrained.", _LOSS
        ),
    ] = 0.1,
    lecam_weight: Annotated[float, _opt("Weight of the LeCam regularizer.", _LOSS)] = 0.05,
    gan_start_step: Annotated[
        int | None, _opt("First step with the GAN loss (default: 1/6 of the steps).", _LOSS)
    ] = None,
    warmup_steps: Annotated[
        int | None, _opt("Linear warm-up steps (default: 1/30 of the steps).", _LOSS)
    ] = None,
    ema_decay: Annotated[float, _opt("Decay of the exported EMA weights.", _LOSS)] = 0.999,
    recipe: Annotated[
        Recipe | None,
        _opt(
            "Quantizer restart rule, GaussianEmbed dropout and lr, GroupNorm "
            "groups (default: small for tiny and vq-tiny, else authors; see docs/results.md).",
            _LOSS,
        ),
    ] = None,
    embed_lr_scale: Annotated[
        float | None, _opt("GaussianEmbed learning rate / --lr (default: the recipe's, 1).", _LOSS)
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Random-resized-crop + flip (default: on, off for cifar presets).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    crop_scale: Annotated[
        tuple[float, float], _opt("Area range of the random-resized crop.", _DATA)
    ] = (0.08, 1.0),
    hue_jitter: Annotated[
        float, _opt("Colour augmentation: max hue rotation in turns (0-0.5; 0: off).", _DATA)
    ] = 0.0,
    saturation_jitter: Annotated[
        float, _opt("Colour augmentation: saturation factor in [1-S, 1+S] (0: off).", _DATA)
    ] = 0.0,
    grayscale_p: Annotated[
        float, _opt("Colour augmentation: probability of a grayscale crop (0: off).", _DATA)
    ] = 0.0,
    val_images: Annotated[int, _opt("Validation images per evaluation (at most).", _DATA)] = 1000,
    log_every: Annotated[
        int, _opt("Steps between log lines (and a line after the first step).", _REPORT)
    ] = 10,
    eval_every: Annotated[int, _opt("Steps between validations.", _REPORT)] = 500,
    checkpoint_every: Annotated[int, _opt("Steps between training states.", _REPORT)] = 500,
    sample_every: Annotated[int, _opt("Steps between sample grids.", _REPORT)] = 500,
    keep_last: Annotated[int, _opt("Training states kept (besides the best).", _REPORT)] = 3,
    lpips_vgg_weights: Annotated[
        str | None,
        _opt("Path of vgg.pth (LPIPS v0.1 VGG heads; default: looked up, see `gtok env`).", _LOSS),
    ] = None,
    vgg16_weights: Annotated[
        str | None,
        _opt(
            "Path of vgg16-397923af.pth (LPIPS-VGG backbone; default: looked up, see `gtok env`).",
            _LOSS,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        _opt("Architecture override KEY=VALUE (repeatable), e.g. codebook_size=512.", _RUN),
    ] = None,
    init_from: Annotated[
        str | None,
        _opt(
            "Model or run directory whose weights start the run (fine-tuning); its "
            "architecture must equal the run's.",
            _RUN,
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Train a tokenizer on WebDataset shards; rerun the same command to resume.

    Writes RUN_DIR/model (EMA weights; gtok.load_tokenizer(RUN_DIR) loads it), best/,
    checkpoints/, metrics.jsonl, skipped.jsonl, samples/ and train.json.

    Several processes: torchrun --nproc-per-node N $(which gtok) train ...

    Example: gtok train data/train --val-shards data/val --preset tiny --steps 20000 -o runs/a

    Example (a first try on a CPU, a few minutes): gtok train data/train --preset tiny
    --steps 200 -o runs/first
    """
    _check_required(shards, preset, steps, epochs, output)
    assert shards and preset is not None  # `_check_required` refuses a run without them
    from gtok.train import train as run_training  # imports torch: only when the command runs

    try:
        cfg = TrainConfig(
            preset=preset.value,
            shards=tuple(shards),
            val_shards=tuple(val_shards or ()),
            image_column=image_column,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            image_size=image_size,
            seed=seed,
            device=device,
            workers=workers,
            precision=cast(Precision, precision.value),  # one of PRECISIONS
            optimizer=cast(Literal["adamw", "adam"] | None, optimizer and optimizer.value),
            grad_clip=grad_clip,
            l1_weight=l1_weight,
            lpips_weight=lpips_weight,
            commit_weight=commit_weight,
            gan_weight=gan_weight,
            lecam_weight=lecam_weight,
            gan_start_step=gan_start_step,
            warmup_steps=warmup_steps,
            ema_decay=ema_decay,
            recipe=recipe and recipe.value,
            embed_lr_scale=embed_lr_scale,
            augment=augment,
            crop_scale=crop_scale,
            hue_jitter=hue_jitter,
            saturation_jitter=saturation_jitter,
            grayscale_p=grayscale_p,
            log_every=log_every,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            sample_every=sample_every,
            keep_last=keep_last,
            val_images=val_images,
            lpips_weights=lpips_vgg_weights,
            vgg_weights=vgg16_weights,
            model=_model_overrides(model or []),
            init_from=init_from,
        )
    except GtokError as exc:
        raise UsageProblem(with_flags(str(exc), _SETTINGS)) from exc
    with resumable():  # stopped before the training loop; the loop saves, then stops
        result = run_training(cfg, output)
    terminated = result.stopped == "terminated"  # exit 143 then, for Slurm and Kubernetes
    if result.rank != 0:  # the other processes of a torchrun job: rank 0 reports
        if terminated:
            raise typer.Exit(TERMINATED)
        return
    document = {
        "run_dir": str(result.run_dir),
        "model_dir": str(result.run_dir / "model"),
        "step": result.step,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "stopped": result.stopped,
        "images_per_s": round(result.images_per_s, 2),
        "skipped_samples": result.skipped,
        "lpips_loss": result.lpips,
        "val": result.val,
        "best": result.best,
    }
    if json_output:
        print_json(document)
    else:
        _print_result(result, document)
    if terminated:
        stop_terminated(RESUME)
    if result.stopped == "interrupted":  # Ctrl-C: saved, and exit 130 as encode's
        console.print(f"interrupted; {RESUME}.", soft_wrap=True)
        raise typer.Exit(INTERRUPTED)


def _check_required(
    shards: list[str] | None,
    preset: StrEnum | None,
    steps: int | None,
    epochs: float | None,
    output: Path | None,
) -> None:
    """One usage error that lists every required setting not given, or nothing."""
    missing = [
        "SHARDS (folders of .tar shards, .parquet files or images, or globs)" if not shards else "",
        f"--preset ({', '.join(Preset)})" if preset is None else "",
        "--steps N or --epochs E" if steps is None and epochs is None else "",
        "-o/--output RUN_DIR" if output is None else "",
    ]
    if missing := [m for m in missing if m]:
        raise UsageProblem(
            f"gtok train needs {'; '.join(missing)}. Example: gtok train data/train "
            "--preset tiny --steps 200 -o runs/first"
        )


def _print_result(result: TrainResult, document: dict) -> None:
    """The result of `gtok train` for a person: state, validation, skipped samples."""
    state = "stopped early" if result.stopped else "done"
    print(f"{state}: step {result.step}/{result.steps}, model in {document['model_dir']}")
    if result.val:
        print(f"validation: PSNR {result.val['psnr']:.2f} dB, SSIM {result.val['ssim']:.4f}")
    if result.skipped and not is_quiet():
        console.print(f"{result.skipped} samples skipped; see {result.run_dir}/skipped.jsonl")
