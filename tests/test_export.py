"""Compile and export: the Taichi kernels are `torch.library` custom ops with fake
implementations and autograd (`torch.library.opcheck`), so `torch.compile(fullgraph=True)`
and `torch.export` trace both halves of a tokenizer with the kernels kept as opaque ops;
with `set_implementation("reference")` the graphs hold plain PyTorch, and
`examples/export_onnx.py` exports and checks them with onnxruntime (when installed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_encode import SMALL, _save_model

import gtok
from gtok import kernels
from gtok.kernels.reference import rasterize as reference_rasterize
from gtok.model.export import TokenDecoder, TokenEncoder

REPO = Path(__file__).resolve().parents[1]
KERNEL_OPS = {"gtok.deform_attn_forward.default", "gtok.rasterize_forward.default"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture
def tok(small):
    return gtok.load_tokenizer(small)


@pytest.fixture
def example(tok):
    """images [2, 3, 16, 16], their tokens and decoded images (eager, Taichi kernels)."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = tok.encode(images)
    return images, tokens, tok.decode(tokens)


def _ops(program: torch.export.ExportedProgram) -> set[str]:
    """The gtok custom ops anywhere in an exported program (subgraphs included)."""
    graphs = [
        m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
    ]
    return {str(n.target) for g in graphs for n in g.nodes if str(n.target).startswith("gtok.")}


def _args(n_b=2, n_g=5, n_c=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    raster = (
        torch.rand(n_b, n_g, 2, generator=gen, dtype=dtype) * 2 - 1,
        0.5 + torch.rand(n_b, n_g, 2, generator=gen, dtype=dtype) * 2,
        torch.rand(n_b, n_g, generator=gen, dtype=dtype) * 3,
        torch.randn(n_b, n_g, n_c, generator=gen, dtype=dtype),
        None,
        8,
        8,
    )
    deform = (
        torch.randn(n_b, 4 * 4, 2, 3, generator=gen, dtype=dtype),  # value [B, HW, M, Dh]
        torch.rand(n_b, 6, 2, generator=gen, dtype=dtype),  # reference [B, Nq, 2]
        torch.randn(n_b, 6, 2, 3, 2, generator=gen, dtype=dtype),  # offsets [B, Nq, M, P, 2]
        torch.randn(n_b, 6, 2, 4, generator=gen, dtype=dtype),  # logits [B, Nq, M, 1 + P]
        torch.zeros(1, 2, dtype=dtype),  # fixed offsets
        4,
        4,
    )
    return raster, deform


@pytest.mark.slow
def test_custom_ops_pass_opcheck():
    """Fake implementations, schemas and autograd registrations agree with the kernels."""
    raster, deform = _args()
    for op, args in (
        (torch.ops.gtok.rasterize_forward.default, raster),
        (torch.ops.gtok.deform_attn_forward.default, deform),
    ):
        grads = [isinstance(a, torch.Tensor) and a is not deform[4] for a in args]
        args = tuple(a.requires_grad_() if g else a for a, g in zip(args, grads, strict=True))
        torch.library.opcheck(op, args)


@pytest.mark.slow
def test_compile_fullgraph_traces_the_kernels_and_their_gradients():
    """Dynamo without graph breaks, AOT autograd through the ops' fake implementations."""
    raster, _ = _args(dtype=torch.float32)
    leaves = [t.clone().requires_grad_() for t in raster[:4]]

    def render(means, scales, rotations, features):
        return kernels.rasterize(means, scales, rotations, features, 8, 8)

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    out = compiled(*leaves)
    out.square().sum().backward()
    want_leaves = [t.detach().clone().requires_grad_() for t in raster[:4]]
    want = reference_rasterize(*want_leaves, 8, 8)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(leaves, want_leaves, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_fullgraph_of_both_halves_without_graph_breaks(tok, example):
    images, tokens, decoded = example
    encode = torch.compile(TokenEncoder(tok), fullgraph=True, backend="aot_eager")
    decode = torch.compile(tok.decode, fullgraph=True, backend="aot_eager")
    indices, geometry = encode(images)
    assert torch.equal(indices, tokens.indices)
    torch.testing.assert_close(geometry, tokens.geometry, rtol=0, atol=1e-5)
    torch.testing.assert_close(decode(tokens), decoded, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compile_with_inductor_matches_eager(tok, example):
    images, tokens, decoded = example
    indices, geometry = torch.compile(TokenEncoder(tok), fullgraph=True)(images)
    assert torch.equal(indices, tokens.indices)
    torch.testing.assert_close(geometry, tokens.geometry, rtol=0, atol=1e-4)
    decode = torch.compile(tok.decode, fullgraph=True)
    torch.testing.assert_close(decode(tokens), decoded, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["taichi", "reference"])
def test_torch_export_of_both_halves(tok, example, implementation):
    images, tokens, decoded = example
    tok.set_implementation(implementation)
    encoder = torch.export.export(TokenEncoder(tok), (images,))
    decoder = torch.export.export(TokenDecoder(tok), tuple(tokens))
    if implementation == "taichi":  # the kernels stay opaque ops
        assert _ops(encoder) | _ops(decoder) == KERNEL_OPS
    else:  # plain PyTorch, what ONNX takes
        assert _ops(encoder) | _ops(decoder) == set()
    indices, geometry = encoder.module()(images)
    assert torch.equal(indices, tokens.indices)
    torch.testing.assert_close(geometry, tokens.geometry, rtol=0, atol=1e-5)
    torch.testing.assert_close(decoder.module()(*tokens), decoded, rtol=0, atol=1e-5)


def test_implementation_switch_refuses_unknown_names(tok):
    with pytest.raises(ValueError, match=r"one of \('taichi', 'reference'\), got 'cuda'"):
        tok.set_implementation("cuda")


@pytest.mark.subprocess
@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx and onnxruntime are not installed (pip install 'gtok[export]')",
)
def test_onnx_example_exports_and_checks_both_halves(tmp_path, small):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "export_onnx.py"),
            "-m",
            str(small),
            "-o",
            str(tmp_path),
            "--batch",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["indices_total"] == 3 * SMALL["num_gaussians"]
    assert (tmp_path / "encoder.onnx").is_file() and (tmp_path / "decoder.onnx").is_file()
