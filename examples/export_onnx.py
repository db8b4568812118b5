"""Export a gtok tokenizer's encoder and decoder to ONNX and check them with onnxruntime.

    pip install 'gtok[export]'       # onnx and onnxruntime
    python examples/export_onnx.py -o onnx/                    # the default model
    python examples/export_onnx.py -m runs/cifar -o onnx/ --batch 4

ONNX has no Taichi kernels, so the model runs both kernels as their plain PyTorch twins
(`tok.set_implementation("reference")`, the same numbers to float32 rounding) and
`torch.onnx.export` (opset 18; the TorchScript exporter, as the dynamo one needs onnxscript
too) writes `encoder.onnx` (images [B, 3, S, S] in [-1, 1] -> indices [B, G] int64,
geometry [B, G, 5]) and `decoder.onnx` (indices, geometry -> images [B, 3, S, S]), for
batches of `--batch` images (the tracer fixes the shapes; its warnings are silenced).
Both are run by onnxruntime on the CPU against the eager model with the Taichi kernels:
at most 1% of the indices may differ (a code that is nearly as close as another can flip;
the count is reported), the decoded images must agree within `--atol`. Prints one JSON
document; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import gtok
from gtok.model.export import TokenDecoder, TokenEncoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None, help="model directory (default model)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the .onnx files")
    parser.add_argument("--batch", type=int, default=2, help="images in the example batch")
    parser.add_argument("--atol", type=float, default=1e-4, help="decoder tolerance ([-1, 1])")
    args = parser.parse_args(argv)
    try:
        import onnxruntime
    except ImportError:
        sys.exit("examples/export_onnx.py needs onnx and onnxruntime: pip install 'gtok[export]'")

    tok = gtok.load_tokenizer(args.model)
    size = tok.config.image_size
    images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = images * 2 - 1
    tokens = tok.encode(images)  # eager, Taichi kernels: what ONNX must reproduce
    want = tok.decode(tokens)
    tok.set_implementation("reference")
    args.out.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = args.out / "encoder.onnx", args.out / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for module, inputs, path in (
            (TokenEncoder(tok), (images,), encoder_path),
            (TokenDecoder(tok), tuple(tokens), decoder_path),
        ):
            torch.onnx.export(module, inputs, path, dynamo=False, opset_version=18)

    encoder = onnxruntime.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    indices, geometry = encoder.run(None, {encoder.get_inputs()[0].name: images.numpy()})
    names = [i.name for i in decoder.get_inputs()]
    feeds = dict(zip(names, (t.numpy() for t in tokens), strict=True))
    (decoded,) = decoder.run(None, feeds)
    report = {
        "model": tok.config.preset,
        "batch": args.batch,
        "encoder": str(encoder_path),
        "decoder": str(decoder_path),
        "indices_differing": int((indices != tokens.indices.numpy()).sum()),
        "indices_total": int(indices.size),
        "geometry_max_abs_diff": float(np.abs(geometry - tokens.geometry.numpy()).max()),
        "decoder_max_abs_diff": float(np.abs(decoded - want.numpy()).max()),
    }
    report["ok"] = (
        report["indices_differing"] <= indices.size // 100
        and report["decoder_max_abs_diff"] <= args.atol
    )
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
