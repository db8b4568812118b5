"""`gtok train` end to end on generated shards, on the CPU: the loss goes down, a resumed run
ends where an uninterrupted one does, a kill while writing a checkpoint loses nothing, two
gloo processes agree, bad samples are counted, NaN and mismatched resumes stop cleanly.

Models are the `tiny` preset shrunk by overrides (32x32 images, 16 Gaussians, 64 codes) so
the whole file runs in about two minutes on two cores.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shardmaker import encode, write_tar
from test_model_io import _re_export, _sha256_of_the_weights_in

import gtok.train.session as session_module
import gtok.train.step as step_module
from gtok.cli.main import app
from gtok.data.shards import expand_shards
from gtok.errors import GtokError
from gtok.model.io import load_tokenizer
from gtok.model.tokenizer import build_from_config
from gtok.train import TrainConfig, train
from gtok.train.config import tokenizer_config
from gtok.train.discriminator import PatchDiscriminator
from gtok.train.distributed import Dist
from gtok.train.losses import LeCam
from gtok.train.rundir import RunDir
from gtok.train.session import Session, determinism
from gtok.train.step import TrainStep

SMALL = {"num_gaussians": 16, "codebook_size": 64}
BAD = [(f"broken-{i}", {"jpg": b"not a jpeg"}) for i in range(3)]
BAD += [(f"nothing-{i}", {"txt": b"a caption only"}) for i in range(3)]


def _gradients(count: int, start: int) -> list[tuple[str, dict[str, bytes]]]:
    """Smooth pictures (a colour ramp between two random colours) as 40x36 PNG samples."""
    out = []
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        left, right = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ramp = np.linspace(0, 1, 40)[None, :, None]  # [1, W, 1]
        pixels = np.broadcast_to(left + (right - left) * ramp, (36, 40, 3)).astype(np.uint8)
        out.append((f"{i:06d}", {"png": encode(Image.fromarray(pixels), "PNG")}))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    for s in range(2):  # 6 good and 6 bad samples each: 4 steps of 2 images pass over 6+
        samples = _gradients(6, start=20 * s)
        write_tar(root / "train" / f"train-{s}.tar", samples[:3] + BAD + samples[3:])
    write_tar(root / "val" / "val-0.tar", _gradients(6, start=100))
    return {"train": root / "train", "val": root / "val"}


def _config(data, **overrides) -> TrainConfig:
    settings = dict(
        preset="tiny",
        shards=(str(data["train"]),),
        val_shards=(str(data["val"]),),
        steps=4,
        batch_size=2,
        image_size=32,
        model=SMALL,
        workers=0,
        log_every=1,
        eval_every=100,
        sample_every=100,
        checkpoint_every=2,
        val_images=4,
    )
    return TrainConfig(**{**settings, **overrides})


def _final_state(run_dir: Path) -> dict:
    path = max((run_dir / "checkpoints").glob("step-*.pt"))
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_equal(a, b, where: str = "state") -> None:
    """Bitwise equality of nested dicts / lists of tensors and plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _assert_same_training(a: dict, b: dict) -> None:
    """Same weights, EMA, discriminator, optimizer moments, data positions and counts."""
    parts = ("model", "ema", "disc", "lecam", "model_extra", "optim", "data", "skipped", "rng")
    for part in parts:
        _assert_equal(a[part], b[part], part)


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train(_config(data), run_dir)
    assert (result.step, result.stopped, result.resumed_from) == (4, None, None)
    return run_dir


@pytest.mark.slow
def test_thirty_steps_of_tiny_lower_the_loss_through_the_cli(data, tmp_path, runner):
    run_dir = tmp_path / "run"
    write_tar(tmp_path / "four.tar", _gradients(4, start=50))  # steady batches: a clear trend
    settings = tmp_path / "run.toml"
    settings.write_text("[train]\nbatch-size = 2\nlog-every = 1\nworkers = 0\naugment = false\n")
    args = [str(tmp_path / "four.tar"), "--preset", "tiny", "--out", str(run_dir)]
    args += ["--config", str(settings), "--steps", "30", "--image-size", "32", "--lr", "2e-3"]
    args += ["--model", "num_gaussians=16", "--model", "codebook_size=64", "--warmup-steps", "2"]
    args += ["--gan-start-step", "30", "--val-shards", str(data["val"]), "--val-images", "4"]
    # the authors' 32 GroupNorm groups: with the small recipe's 8 these colour ramps start
    # near the loss they end at (first steps 0.39, last 0.36), too little room for a trend
    args += ["--model", "norm_groups=32"]
    result = runner.invoke(app, ["train", *args, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["step"] == 30 and document["lpips_loss"] is False
    losses = [r["l1"] for r in _records(run_dir, "train")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5  # 0.79 here: seeded, repeatable
    assert "training without the LPIPS loss" in result.stderr
    record = json.loads((run_dir / "train.json").read_text())
    assert record["lpips"]["used"] is False and "vgg16-397923af.pth" in record["lpips"]["reason"]
    assert record["settings"]["optimizer"] == "adamw"
    assert (record["settings"]["recipe"], record["settings"]["embed_lr_scale"]) == ("small", 1.0)
    assert record["data"]["train_preprocess"].endswith("centre crop 32x32")  # --no-augment
    assert (run_dir / "samples" / "step-000030.png").is_file()
    assert document["best"]["step"] == 30 and (run_dir / "best" / "model.safetensors").is_file()
    model = load_tokenizer(run_dir)  # the exported EMA model
    ema = _final_state(run_dir)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_interrupted_run_resumed_with_the_same_command_matches_an_uninterrupted_one(
    data, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    original = step_module.l1_loss
    calls = []

    def interrupt_in_step_one(recon, target):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C while step 1 runs
        return original(recon, target)

    monkeypatch.setattr(step_module, "l1_loss", interrupt_in_step_one)
    first = train(_config(data), run_dir)
    monkeypatch.undo()
    assert (first.step, first.stopped) == (1, "interrupted")
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["step-000001.pt"]
    second = train(_config(data), run_dir)
    assert (second.step, second.resumed_from, second.stopped) == (4, 1, None)
    _assert_same_training(_final_state(run_dir), _final_state(reference))
    steps = [r["step"] for r in _records(run_dir, "train")]
    assert steps == [1, 2, 3, 4]  # the log reads as one run
    skipped = [json.loads(line) for line in (run_dir / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == second.skipped >= 6
    assert {r["key"].split("-")[0] for r in skipped} == {"broken", "nothing"}
    assert all(r["shard"].startswith("train-") and r["reason"] for r in skipped)


@pytest.mark.slow
def test_a_kill_while_writing_a_checkpoint_keeps_the_last_one_and_resume_finishes(
    data, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    real_save = torch.save

    def killed_at_step_four(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4:
            handle.write(b"PK\x03\x04 the first bytes of a zip")
            raise KeyboardInterrupt  # the process dies here
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data), run_dir)
    monkeypatch.undo()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002.pt"]
    assert torch.load(checkpoints / "step-000002.pt", weights_only=True)["step"] == 2
    resumed = train(_config(data), run_dir)
    assert (resumed.resumed_from, resumed.step) == (2, 4)
    _assert_same_training(_final_state(run_dir), _final_state(reference))
    for folder in (run_dir, reference):  # skip records of steps 3-4 written once, not twice
        lines = (folder / "skipped.jsonl").read_text().splitlines()
        assert len(lines) == resumed.skipped


def test_colour_augmentation_and_recipe_flags_are_recorded_in_train_json(data, tmp_path, runner):
    run_dir = tmp_path / "run"
    args = [str(data["train"]), "--preset", "tiny", "--out", str(run_dir), "--steps", "1"]
    args += ["--batch-size", "2", "--image-size", "32", "--workers", "0", "--val-images", "2"]
    args += ["--model", "num_gaussians=16", "--model", "codebook_size=64"]
    args += ["--val-shards", str(data["val"]), "--hue-jitter", "0.1", "--grayscale-p", "0.5"]
    args += ["--recipe", "authors", "--embed-lr-scale", "0.5"]
    result = runner.invoke(app, ["train", *args, "--saturation-jitter", "0.3"])
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "train.json").read_text())
    settings = record["settings"]
    assert (settings["recipe"], settings["embed_lr_scale"]) == ("authors", 0.5)
    assert settings["architecture"]["restart_used_codes"] is True  # the authors' rule
    assert (settings["hue_jitter"], settings["saturation_jitter"]) == (0.1, 0.3)
    assert settings["grayscale_p"] == 0.5
    assert record["data"]["train_preprocess"].endswith(
        "hue rotation (YIQ) uniform in +-0.1 turns + saturation factor uniform in [0.7, 1.3]"
        " + grayscale p=0.5"
    )


def test_a_resume_with_other_settings_is_refused_naming_them(data, reference, tmp_path):
    moved = shutil.copytree(data["train"], tmp_path / "moved")  # same shards elsewhere: fine
    done = train(_config(data, shards=(str(moved),), log_every=2), reference)
    assert (done.resumed_from, done.step) == (4, 4)
    with pytest.raises(GtokError, match=r"lr: 0\.0002 -> 0\.001; .*seed: 0 -> 5"):
        train(_config(data, lr=1e-3, seed=5, workers=1, log_every=2), reference)


def test_lpips_weight_files_given_by_flag_make_it_a_loss_and_a_metric(data, tmp_path):
    """Random weights in the torchvision and lpips layouts: the files load, LPIPS enters the
    loss and the validation, and the run records which files it used."""
    from gtok.metrics.lpips import LPIPS

    untrained = LPIPS("vgg")
    vgg, heads = tmp_path / "vgg16-features.pth", tmp_path / "heads.pth"
    torch.save(untrained.net.state_dict(), vgg)
    torch.save({k: v for k, v in untrained.state_dict().items() if k.startswith("lin")}, heads)
    config = _config(data, steps=2, lpips_weights=str(heads), vgg_weights=str(vgg))
    result = train(config, tmp_path / "run")
    assert result.lpips is True and "lpips" in result.val
    assert all("lpips" in r for r in _records(tmp_path / "run", "train"))
    record = json.loads((tmp_path / "run" / "train.json").read_text())["lpips"]
    assert record == {"used": True, "files": {"vgg16": str(vgg), "lpips-vgg": str(heads)}}
    with pytest.raises(GtokError, match=r"vgg\.pth was not found at .*missing\.pth"):
        train(_config(data, lpips_weights=str(tmp_path / "missing.pth")), tmp_path / "other")


@pytest.mark.parametrize("gan_weight", [0.0, 0.1])
def test_the_discriminator_trains_only_when_the_gan_loss_has_a_weight(data, gan_weight):
    cfg = _config(data, gan_weight=gan_weight, gan_start_step=0).resolve(None, 1)
    torch.manual_seed(0)
    model = build_from_config(tokenizer_config(cfg)).train()
    disc = PatchDiscriminator().train()
    before = [p.detach().clone() for p in disc.parameters()]
    step = TrainStep(model, disc, LeCam(), None, cfg, Dist(0, 1, torch.device("cpu")), "fp32")
    out = step(torch.rand(2, 3, 32, 32) * 2 - 1, 0)
    changed = any(not torch.equal(a, b) for a, b in zip(before, disc.parameters(), strict=True))
    assert out.finite and changed == (gan_weight > 0)
    assert ("d_loss" in out.values) == ("gen" in out.values) == (gan_weight > 0)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = []
    real_l1 = step_module.l1_loss

    def l1_then_nan(recon, target):
        calls.append(1)
        loss = real_l1(recon, target)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(step_module, "l1_loss", l1_then_nan)
    with pytest.raises(GtokError, match="not finite in step 3") as caught:
        train(_config(data), tmp_path / "run")
    assert "step 2" in str(caught.value)  # names the checkpoint that is kept
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.pt")) == ["step-000002.pt"]
    events = _records(tmp_path / "run", "event")
    assert events[-1]["event"] == "diverged" and events[-1]["step"] == 3


def test_the_save_refuses_when_ranks_hold_different_weights():
    """The check every save runs under torchrun, fed another rank's different digest."""
    from types import SimpleNamespace

    from gtok.train.ema import ModelEMA

    model = torch.nn.Linear(2, 2)

    class TwoRanks:
        active, world = True, 2

        def gather(self, digest):
            return [digest, digest.replace(digest[0], "x")]

    fake = SimpleNamespace(model=model, ema=ModelEMA(model), disc=model, dist=TwoRanks())
    with pytest.raises(RuntimeError, match="2 processes hold different weights at step 7"):
        Session._check_ranks_agree(fake, 7)
    TwoRanks.gather = lambda self, digest: [digest, digest]
    Session._check_ranks_agree(fake, 7)  # equal digests pass


@pytest.mark.subprocess
def test_two_gloo_processes_under_torchrun_agree(data, tmp_path):
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    gtok = shutil.which("gtok", path=str(Path(sys.executable).parent))
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", gtok]
    command += ["-q", "train", str(data["train"]), "--preset", "tiny", "--out", str(run_dir)]
    command += ["--steps", "3", "--batch-size", "2", "--image-size", "32", "--workers", "0"]
    command += ["--model", "num_gaussians=16", "--model", "codebook_size=64", "--json"]
    command += ["--checkpoint-every", "2", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["step"] == 3  # one JSON document: rank 0 alone reports
    state = _final_state(run_dir)
    assert json.loads(state["settings"])["world_size"] == 2
    assert len(state["rng"]) == 2 and len(state["data"]["positions"]) == 2
    # the saves at steps 2 and 3 compared every rank's weights bit for bit before writing
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [
        "step-000002.pt",
        "step-000003.pt",
    ]


def test_each_step_reduces_its_stop_flags_once_and_train_json_says_deterministic(
    data, tmp_path, monkeypatch
):
    """The NaN check, Ctrl-C and a failed data stream travel in one reduction per step (one
    more for the first batch); on the CPU a resume is bitwise (`deterministic`)."""
    calls = []
    real = Dist.any_of
    monkeypatch.setattr(Dist, "any_of", lambda self, *flags: calls.append(1) or real(self, *flags))
    done = train(_config(data, steps=3, checkpoint_every=100), tmp_path / "run")
    assert done.step == 3 and len(calls) == 1 + 3
    resolved = json.loads((tmp_path / "run" / "train.json").read_text())["resolved"]
    assert resolved["deterministic"] is True
    assert set(resolved["tf32"]) == {"cudnn", "matmul"}
    on_cuda = determinism(torch.device("cuda", 0))
    assert on_cuda["deterministic"] is False and len(on_cuda["nondeterministic_ops"]) == 4


def test_a_stream_that_fails_mid_run_stops_training_at_its_batch(data, tmp_path, monkeypatch):
    """Batch t + 1's failure is reduced with step t's flags; training stops before step t + 1."""
    import gtok.train.loop as loop_module
    from gtok.train.data import TrainBatch

    real_loader = loop_module.train_loader

    def two_then_broken(*args, **kwargs):
        batches = iter(real_loader(*args, **kwargs))
        yield next(batches)
        yield next(batches)
        yield TrainBatch(None, 0, (9, 0), [], error="the shards went away")

    monkeypatch.setattr(loop_module, "train_loader", two_then_broken)
    with pytest.raises(GtokError, match="Training stopped at step 2: the shards went away"):
        train(_config(data, checkpoint_every=100), tmp_path / "run")


def _session(cfg: TrainConfig, run_dir: Path) -> Session:
    arch = tokenizer_config(cfg)
    resolved = cfg.resolve(None, 1).replace(image_size=arch.image_size)
    dist = Dist(0, 1, torch.device("cpu"))
    return Session(resolved, arch, dist, RunDir(run_dir), expand_shards(cfg.shards))


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_models_weights_and_records_them(
    data, reference, tmp_path
):
    trained = load_tokenizer(reference).state_dict()
    fresh = _session(_config(data), tmp_path / "fresh").model.state_dict()
    started = _session(_config(data, init_from=str(reference)), tmp_path / "ft")
    state = started.model.state_dict()
    assert state.keys() == trained.keys()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    assert not all(torch.equal(fresh[k], trained[k]) for k in trained)
    sha = started.settings["init_weights_sha256"]
    assert len(sha) == 64 and started.model.training

    run_dir = tmp_path / "run"
    train(_config(data, init_from=str(reference)), run_dir)
    settings = json.loads((run_dir / "train.json").read_text())["settings"]
    assert settings["init_weights_sha256"] == sha
    with pytest.raises(GtokError, match=r"init_weights_sha256: '[0-9a-f]{64}' -> None"):
        train(_config(data, steps=6), run_dir)  # a resume must start from the same weights


def test_init_from_records_the_sha256_of_the_weights_it_starts_from(
    data, reference, tmp_path, monkeypatch
):
    """--init-from a run that exports a newer model while this run starts: train.json names
    the weights this run started from."""
    start, original, newer = tmp_path / "start", tmp_path / "original", tmp_path / "newer"
    for folder in (start, original):
        shutil.copytree(reference / "model", folder)
    _session(_config(data), tmp_path / "fresh").model.save_pretrained(newer)  # other weights
    build = session_module.build_from_config

    def re_exported_meanwhile(arch):
        _re_export(start, newer)
        return build(arch)

    monkeypatch.setattr(session_module, "build_from_config", re_exported_meanwhile)
    started = _session(_config(data, init_from=str(start)), tmp_path / "run")
    recorded = started.settings["init_weights_sha256"]
    assert recorded == _sha256_of_the_weights_in(started.model, original, newer)


def test_init_from_a_model_of_another_architecture_is_one_sentence(data, reference, tmp_path):
    other = _config(data, init_from=str(reference), model={**SMALL, "codebook_size": 32})
    with pytest.raises(GtokError, match=r"another architecture .*codebook_size: 64 there, 32"):
        train(other, tmp_path / "run")
    with pytest.raises(GtokError, match="does not exist"):
        train(_config(data, init_from=str(tmp_path / "nowhere")), tmp_path / "run2")
