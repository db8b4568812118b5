"""Library errors name Python arguments (`batch_size must be at least 1`); the CLI says the
same with flags (`--batch-size must be at least 1`), through the one table in
`gtok.cli._flags`."""

import ast
from pathlib import Path

import pytest
import typer
from shardmaker import clean_samples, write_tar

import gtok
from gtok.cli._flags import flag, with_flags
from gtok.cli.main import app

GTOK = Path(__file__).resolve().parent.parent / "gtok"


@pytest.fixture
def shard(tmp_path):
    return write_tar(tmp_path / "shard-000000.tar", clean_samples(2))


def _encode(shard, out, **kwargs):
    from gtok.encode.run import encode_shards

    encode_shards([shard], out, None, **kwargs)


def _pack(tmp_path, **kwargs):
    from gtok.pack.run import pack_images

    (tmp_path / "images").mkdir()
    pack_images(tmp_path / "images", tmp_path / "packed", **kwargs)


def _decode(tmp_path, **kwargs):
    from gtok.decode.run import decode_store

    decode_store(tmp_path / "tokens.zarr", tmp_path / "out", **kwargs)


def _device(text):
    from gtok.devices import select_device

    select_device(text)


def _precision(text):
    from gtok.devices import check_inference_precision

    check_inference_precision(text)


def _resize(resize, max_pixels):
    from gtok.data.transforms import check_resize

    check_resize(resize, 16, max_pixels)


def _refine(steps):
    from gtok.encode.model import refine_settings

    refine_settings(steps)


def _select(**kwargs):
    from gtok.decode.select import select_rows

    select_rows(None, **kwargs)  # the arguments are checked before the store is read


def _workers(**kwargs):
    from gtok.encode.split import worker_slice

    worker_slice(**kwargs, environ={})


LIBRARY_CALLS = {  # what a Python caller gets wrong -> the argument its error must name
    "encode batch_size=0": (lambda p, s: _encode(s, p / "t.zarr", batch_size=0), "batch_size"),
    "encode append+overwrite": (
        lambda p, s: _encode(s, p / "t.zarr", append=True, overwrite=True),
        "overwrite",
    ),
    "encode max_member_bytes=0": (
        lambda p, s: _encode(s, p / "t.zarr", max_member_bytes=0),
        "max_member_bytes",
    ),
    "pack per_shard=0": (lambda p, s: _pack(p, per_shard=0), "per_shard"),
    "pack image_format": (lambda p, s: _pack(p, image_format="tiff"), "image_format"),
    "decode format": (lambda p, s: _decode(p, format="gif"), "format"),
    "device mps where only cpu/cuda": (lambda p, s: _device("mps"), "device"),
    "precision": (lambda p, s: _precision("fp8"), "precision"),
    "resize below the crop": (lambda p, s: _resize(8, 10**8), "resize"),
    "max_pixels below the crop": (lambda p, s: _resize(None, 100), "max_pixels"),
    "refine_steps": (lambda p, s: _refine(-1), "refine_steps"),
    "shard_id alone": (lambda p, s: _workers(shard_id=1), "shard_id"),
    "keys and start": (lambda p, s: _select(keys=["a"], start=0), "start"),
    "shard_id out of range": (lambda p, s: _workers(shard_id=3, num_shards=2), "shard_id"),
}


@pytest.mark.parametrize("call, argument", LIBRARY_CALLS.values(), ids=list(LIBRARY_CALLS))
def test_library_errors_name_the_python_argument(call, argument, tmp_path, shard):
    with pytest.raises(gtok.ArgumentError) as raised:
        call(tmp_path, shard)
    message = str(raised.value)
    assert argument in message and argument in raised.value.arguments
    assert "--" not in message and isinstance(raised.value, gtok.GtokError)


CLI_CALLS = [  # the same mistakes on the command line, in the flags' words
    (["--append", "--overwrite"], "--append adds to a store and --overwrite deletes it"),
    (["--max-member-bytes", "0"], "--max-member-bytes must be at least 1"),
    (["--shard-id", "1"], "Give --shard-id and --num-shards together, or neither."),
    (["--refine-steps", "-1"], "--refine-steps must be a non-negative integer"),
]


@pytest.mark.parametrize("flags, sentence", CLI_CALLS, ids=[" ".join(f) for f, _ in CLI_CALLS])
def test_cli_names_the_flags(flags, sentence, tmp_path, shard, runner):
    result = runner.invoke(app, ["encode", str(shard), "-o", str(tmp_path / "t.zarr"), *flags])
    assert result.exit_code == 1 and sentence in result.stderr, result.output


@pytest.mark.parametrize(
    "message, arguments, expected",
    [
        ("use device='cpu'.", ["device"], "use --device cpu."),
        ("with ema=False if", ["ema"], "with --no-ema if"),
        ("or force=True to", ["force"], "or --force to"),
        ("max_pixels=100 would", ["max_pixels"], "--max-pixels 100 would"),
        ("give shards", ["shards"], "give SHARDS"),
        ("`keys` or `start`/`stop`", ["keys", "start", "stop"], "--keys or --start/--stop"),
        ("the default model: pass `model`.", ["model"], "the default model: pass --model."),
        ("runs/model and model.safetensors: pass model.", ["model"], None),
    ],
)
def test_with_flags_rewrites_only_the_arguments(message, arguments, expected):
    expected = expected or "runs/model and model.safetensors: pass --model."
    assert with_flags(message, arguments) == expected


def _named_arguments() -> set[str]:
    """Every argument name that an `ArgumentError(...)` in gtok passes as a literal."""
    names = set()
    for path in GTOK.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ArgumentError":
                literals = [a for a in node.args[1:] if isinstance(a, ast.Constant)]
                names.update(a.value for a in literals)
    return names


def _command_line_names() -> set[str]:
    """Every option (`--batch-size`, `--no-ema`) and argument (`SHARDS`) of every command."""
    names = set()
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            names.update(param.opts + param.secondary_opts)
            if param.param_type_name == "argument":
                names.add(param.metavar or param.name.upper())
    return names


def test_every_library_argument_has_a_flag():
    """A new `ArgumentError` argument whose flag is spelled another way needs a `FLAGS` line."""
    named = _named_arguments()
    assert {"batch_size", "device", "overwrite"} <= named
    missing = sorted(name for name in named if flag(name) not in _command_line_names())
    assert not missing, f"add these to gtok.cli._flags.FLAGS: {missing}"
