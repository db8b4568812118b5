"""`gtok eval`: scores equal independent computations (numpy PSNR, scikit-image SSIM) of the
model's own reconstructions; `--reference` mode gives the model mode's numbers on the same
images; `--compare`; missing metric weights are reported unavailable while the rest run;
stand-in weight files make LPIPS and rFID available; `--json` keys; `--report` contents."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from evalkit import WEIGHT_VARS, crops
from PIL import Image
from skimage.metrics import structural_similarity

import gtok
from gtok.cli.main import app
from gtok.decode import PngFolder, png_bytes
from gtok.metrics import to_uint8
from gtok.model.io import weights_sha256

SKIPPED_KEYS = {"bad.tar/broken", "bad.tar/cut"}


def model_outputs(
    shards: Path, model_path: Path, limit: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """key -> (uint8 [3, S, S] decode(encode(crop)), indices [G]) for the first `limit` usable
    images, batched per shard as eval batches them (`--batch-size 8` holds a whole shard)."""
    tok = gtok.load_tokenizer(model_path)
    images = crops(shards)
    recon, indices = {}, {}
    for shard in ("bad.tar", "shard-0000.tar", "shard-0001.tar"):
        keys = [k for k in images if k.startswith(shard)]
        if limit is not None:
            keys = keys[: limit - len(recon)]
        if not keys:
            break
        tokens = tok.encode(torch.stack([images[k] for k in keys]))
        recon.update(zip(keys, to_uint8(tok.decode(tokens)), strict=True))
        indices.update(zip(keys, tokens.indices, strict=True))
    return recon, indices


def reconstructions(shards: Path, model_path: Path, limit: int | None = None):
    return model_outputs(shards, model_path, limit)[0]


def originals(shards: Path) -> dict[str, torch.Tensor]:
    return {k: to_uint8(v) for k, v in crops(shards).items()}


def numpy_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = np.mean((a.numpy().astype(np.float64) - b.numpy().astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = (t.permute(1, 2, 0).numpy() for t in (a, b))
    return structural_similarity(x, y, gaussian_weights=True, data_range=255, channel_axis=-1)


def run_eval(runner, *args: str) -> dict:
    result = runner.invoke(
        app, ["eval", *args, "--json", "--workers", "0", "--batch-size", "8", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def model_mode(tmp_path_factory, shards, model) -> tuple[dict, Path]:
    """`gtok eval SHARDS --model M --report R --json`, with no metric weights anywhere."""
    from typer.testing import CliRunner

    report = tmp_path_factory.mktemp("report")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tests (module fixtures start before `one_thread`)
    with pytest.MonkeyPatch.context() as patch:
        empty = tmp_path_factory.mktemp("empty")
        patch.setenv("GTOK_WEIGHTS", str(empty / "gtok"))
        patch.setenv("TORCH_HOME", str(empty / "torch"))
        for var in WEIGHT_VARS:
            patch.delenv(var, raising=False)
        document = run_eval(CliRunner(), str(shards), "-m", str(model), "--report", str(report))
    torch.set_num_threads(threads)
    return document, report


@pytest.mark.slow
def test_model_mode_scores_equal_independent_computations(model_mode, shards, model):
    document, _ = model_mode
    recon, indices = model_outputs(shards, model)
    orig = originals(shards)
    assert document["n"] == len(recon) == 11
    psnrs = [numpy_psnr(orig[k], recon[k]) for k in recon]
    ssims = [skimage_ssim(orig[k], recon[k]) for k in recon]
    assert document["psnr"] == pytest.approx(float(np.mean(psnrs)), abs=1e-9)
    assert document["ssim"] == pytest.approx(float(np.mean(ssims)), abs=1e-4)
    used = len(torch.unique(torch.stack(list(indices.values()))))
    assert document["codebook"]["used"] == used and document["codebook"]["size"] == 64
    assert document["codebook"]["tokens"] == 11 * 8
    assert document["geometry"]["images"] == 11 and document["geometry"]["gaussians_per_image"] == 8


def test_json_keys_skipped_samples_and_missing_weights(model_mode):
    document, _ = model_mode
    assert {"n", "psnr", "ssim", "codebook", "geometry", "unavailable", "protocol"} <= set(document)
    assert not {"lpips_vgg", "lpips_alex", "rfid"} & set(document)
    reasons = document["unavailable"]
    assert "vgg16-397923af.pth" in reasons["lpips_vgg"] and "vgg.pth" in reasons["lpips_vgg"]
    assert "alexnet-owt-7be5be79.pth" in reasons["lpips_alex"]
    assert "pt_inception-2015-12-05-6726825d.pth" in reasons["rfid"]
    assert "GTOK_INCEPTION_WEIGHTS" in reasons["rfid"] and "/gtok" in reasons["rfid"]
    assert document["skipped"] == 2
    assert {s["key"] for s in document["skipped_samples"]} == SKIPPED_KEYS
    assert all(s["reason"] for s in document["skipped_samples"])


def test_report_contents(model_mode, model):
    document, report = model_mode
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["psnr"] == document["psnr"]
    protocol = metrics["protocol"]
    assert protocol["images"] == 11 and protocol["image_size"] == 32
    assert "center crop 32x32" in protocol["preprocessing"]["method"]
    assert protocol["gtok_version"] == gtok.__version__
    assert metrics["model"]["weights_sha256"] == weights_sha256(model)
    assert protocol["metric_weights"] == {}
    assert "skimage" in protocol["ssim"] and "pytorch-fid" in protocol["rfid"]
    grid = metrics["grid"]
    assert grid["columns"] == ["original", "reconstruction", "gaussians"]
    assert grid["roles"] == ["best"] * 3 + ["median"] * 3 + ["worst"] * 3
    with Image.open(report / "grid.png") as image:  # 9 rows of 3 images of 256 px, 2 px apart
        assert image.size == (3 * 258 + 2, 16 + 9 * (258 + 16) + 2)  # + header, row labels
    with open(report / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and set(rows[0]) == {"tokenizer", "key", "psnr", "ssim"}
    assert {r["tokenizer"] for r in rows} == {model.name}
    assert np.mean([float(r["psnr"]) for r in rows]) == pytest.approx(document["psnr"])
    # the grid: the 3 best, the 3 nearest the median and the 3 worst of the 11 by PSNR
    psnr = {r["key"]: float(r["psnr"]) for r in rows}
    ranked = sorted(psnr, key=lambda k: -psnr[k])
    median = psnr[ranked[5]]
    middle = sorted(ranked[3:-3], key=lambda k: abs(psnr[k] - median))[:3]
    assert grid["keys"][:3] == ranked[:3] and grid["keys"][-3:] == ranked[-3:]
    assert sorted(grid["keys"][3:6]) == sorted(middle)
    assert grid["ranks"] == [ranked.index(k) + 1 for k in grid["keys"]]
    page = (report / "index.html").read_text()
    assert all(f"images/row0{i}-gaussians.png" in page for i in range(1, 10))


def test_reference_folder_matches_model_mode(tmp_path, model_mode, shards, model, runner):
    """The model's reconstructions saved as `<key>.png` (as gtok decode lays them out) score
    exactly as the model mode scored them."""
    document, _ = model_mode
    writer = PngFolder(tmp_path / "recon")
    for key, pixels in reconstructions(shards, model).items():
        writer.write(key, png_bytes(pixels), None, -1)
    stray = png_bytes(torch.zeros(3, 32, 32, dtype=torch.uint8))
    (tmp_path / "recon" / "stray.png").write_bytes(stray)
    pairs = run_eval(runner, "--reference", str(shards), "--reconstructed", str(tmp_path / "recon"))
    assert pairs["n"] == document["n"] and pairs["psnr"] == document["psnr"]
    assert pairs["ssim"] == document["ssim"]
    assert pairs["unmatched_reconstructions"] == 1
    assert "needs tokens" in pairs["unavailable"]["codebook"]
    assert {s["key"] for s in pairs["skipped_samples"]} == SKIPPED_KEYS


@pytest.mark.slow
def test_reference_store_and_decoded_folder_match_model_mode(
    tmp_path, model_mode, shards, store, runner
):
    """A token store of the same model (float32 geometry) and its `gtok decode` output score as
    the model mode, up to float rounding of batched decoding."""
    document, _ = model_mode
    from_store = run_eval(runner, "--reference", str(shards), "--reconstructed", str(store))
    out = tmp_path / "decoded"
    assert runner.invoke(app, ["decode", str(store), "-o", str(out)]).exit_code == 0
    from_folder = run_eval(runner, "--reference", str(shards), "--reconstructed", str(out))
    wds = tmp_path / "decoded-wds"
    decoded = runner.invoke(
        app, ["decode", str(store), "-o", str(wds), "--format", "wds", "--shard-size", "4"]
    )
    assert decoded.exit_code == 0, decoded.stderr
    from_wds = run_eval(runner, "--reference", str(shards), "--reconstructed", str(wds))
    assert {k: from_wds[k] for k in ("n", "psnr", "ssim", "unmatched_reconstructions")} == {
        k: from_folder[k] for k in ("n", "psnr", "ssim", "unmatched_reconstructions")
    }
    for pairs in (from_store, from_folder):
        assert pairs["n"] == 11
        assert pairs["psnr"] == pytest.approx(document["psnr"], abs=1e-3)
        assert pairs["ssim"] == pytest.approx(document["ssim"], abs=1e-4)
    assert from_store["codebook"] == document["codebook"]
    assert from_store["geometry"]["scale"]["mean"] == pytest.approx(
        document["geometry"]["scale"]["mean"], rel=1e-6
    )


@pytest.mark.slow
def test_compare_scores_both_models_on_the_same_images(
    no_weights, model_mode, shards, model, other_model, runner
):
    both = run_eval(runner, str(shards), "-m", str(model), "--compare", str(other_model))
    alone = run_eval(runner, str(shards), "-m", str(other_model))
    first, _ = model_mode
    for key in ("n", "psnr", "ssim", "codebook"):
        assert both[key] == first[key]
        assert both["compare"][key] == alone[key]
    assert both["psnr"] != both["compare"]["psnr"]
    assert both["compare"]["model"]["weights_sha256"] == weights_sha256(other_model)
    args = ["-m", str(model), "--compare", str(other_model), "--workers", "0", "--limit", "3"]
    table = runner.invoke(app, ["eval", str(shards), *args])
    assert table.exit_code == 0
    assert "difference" in table.stdout and "PSNR (dB)" in table.stdout
    assert "lpips_vgg unavailable: no vgg16-397923af.pth" in table.stderr  # not a result


def test_limit_default_model_and_usage_errors(no_weights, shards, model, runner, monkeypatch):
    assert run_eval(runner, str(shards), "-m", str(model), "--limit", "4")["n"] == 4
    monkeypatch.setenv("GTOK_DEFAULT_MODEL", str(model))  # what runs without --model
    default = run_eval(runner, str(shards), "--limit", "2")
    assert default["model"]["path"] == str(model.resolve()) and default["n"] == 2
    nothing = runner.invoke(app, ["eval"])
    assert nothing.exit_code == 2
    mixed = runner.invoke(app, ["eval", str(shards), "--reference", str(shards)])
    assert mixed.exit_code == 2 and "--reconstructed" in mixed.stderr
    monkeypatch.setenv("GTOK_DEFAULT_MODEL", str(no_weights / "no-model"))
    no_model = runner.invoke(app, ["eval", str(shards), "--workers", "0"])
    assert no_model.exit_code == 1 and "does not exist" in no_model.stderr


@pytest.mark.slow
def test_standin_weights_make_lpips_and_rfid_available(standin_weights, shards, model, runner):
    document = run_eval(runner, str(shards), "-m", str(model), "--limit", "3")
    assert document["unavailable"] == {}
    for name in ("lpips_vgg", "lpips_alex", "rfid"):
        assert math.isfinite(document[name]) and document[name] > 0, name
    # LPIPS-VGG equals the network applied here to the same pairs
    from gtok.metrics import load_lpips

    lpips = load_lpips("vgg")
    recon, orig = reconstructions(shards, model, limit=3), originals(shards)
    keys = list(recon)  # bad.tar's good sample, then shard-0000's first two
    x = torch.stack([orig[k] for k in keys]).float() / 127.5 - 1
    y = torch.stack([recon[k] for k in keys]).float() / 127.5 - 1
    with torch.no_grad():
        assert document["lpips_vgg"] == pytest.approx(lpips(x, y).mean().item(), rel=1e-5)
    files = document["protocol"]["metric_weights"]
    inception = files["rfid"]["inception"]
    assert Path(inception["file"]) == standin_weights / "pt_inception-2015-12-05-6726825d.pth"
    digest = hashlib.sha256(Path(inception["file"]).read_bytes()).hexdigest()
    assert inception["sha256"] == digest
    assert set(files["lpips_vgg"]) == {"vgg16", "lpips-vgg"}


@pytest.mark.slow
def test_identical_reconstructions_score_perfectly(tmp_path, standin_weights, shards, runner):
    writer = PngFolder(tmp_path / "same")
    for key, pixels in originals(shards).items():
        writer.write(key, png_bytes(pixels), None, -1)
    document = run_eval(
        runner, "--reference", str(shards), "--reconstructed", str(tmp_path / "same"),
        "--limit", "3", "--skip", "lpips-alex",
    )  # fmt: skip
    assert document["psnr"] == 100.0 and document["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert document["lpips_vgg"] == pytest.approx(0.0, abs=1e-6)
    assert document["rfid"] == pytest.approx(0.0, abs=1e-3)
    assert document["unavailable"]["lpips_alex"] == "skipped on request"


def test_explicit_weight_paths(no_weights, standin_folder, shards, model, runner):
    args = ["--vgg16-weights", str(standin_folder / "vgg16-397923af.pth"),
            "--lpips-vgg-weights", str(standin_folder / "vgg.pth")]  # fmt: skip
    document = run_eval(runner, str(shards), "-m", str(model), "--limit", "2", *args)
    assert math.isfinite(document["lpips_vgg"])
    assert set(document["unavailable"]) == {"lpips_alex", "rfid"}
    bad = run_eval(runner, str(shards), "-m", str(model), "--limit", "2",
                   "--inception-weights", str(no_weights / "nowhere.pth"))  # fmt: skip
    assert "was not found" in bad["unavailable"]["rfid"] and "psnr" in bad


def test_vq_baseline_has_codes_but_no_gaussians(tmp_path, no_weights, shards, vq_model, runner):
    report = tmp_path / "report"
    document = run_eval(runner, str(shards), "-m", str(vq_model), "--report", str(report))
    assert document["codebook"]["tokens"] == 11 * 64 and "geometry" not in document
    assert document["unavailable"]["geometry"] == "the tokenizer has no Gaussians"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["grid"]["columns"] == ["original", "reconstruction"]
    assert metrics["model"]["kind"] == "vq"


def test_chunks_come_back_in_shard_order():
    from gtok.data import ShardChunk, ShardEnd
    from gtok.evaluate.sources import in_shard_order

    def chunk(shard: int, part: int, last: bool = False) -> ShardChunk:
        c = ShardChunk(shard, torch.empty(0, 4, 4, 3), keys=[f"{shard}-{part}"])
        c.end = ShardEnd(samples=part + 1) if last else None
        return c

    # two workers: shards 0 and 2 on one, 1 and 3 on the other, interleaved by the loader
    interleaved = [chunk(1, 0), chunk(0, 0), chunk(1, 1, True), chunk(0, 1), chunk(3, 0, True),
                   chunk(0, 2, True), chunk(2, 0, True)]  # fmt: skip
    order = [c.keys[0] for c in in_shard_order(interleaved)]
    assert order == ["0-0", "0-1", "0-2", "1-0", "1-1", "2-0", "3-0"]


def test_lpips_too_small_images_are_unavailable_not_an_error():
    from gtok.evaluate import MetricNets, Scorer
    from gtok.metrics import LPIPS

    nets = MetricNets(lpips={"lpips_alex": LPIPS("alex")})  # AlexNet needs 31 px
    scorer = Scorer(nets, codebook_size=None, has_geometry=False)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    scorer.add(["a", "b"], images, images.flip(-1))
    result = scorer.result()
    assert "31 px" in result["unavailable"]["lpips_alex"] and "lpips_alex" not in result
    assert result["psnr"] == pytest.approx(float(psnr_reference(images, images.flip(-1))))
    assert [set(row) for row in scorer.rows()] == [{"key", "psnr", "ssim"}] * 2
    assert "needs tokens" in result["unavailable"]["codebook"]


def psnr_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([numpy_psnr(x, y) for x, y in zip(a, b, strict=True)]))
