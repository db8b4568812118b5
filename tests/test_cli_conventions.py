"""The conventions every command shares (gtok/cli/_common.py), tested on a small app built the
same way as `gtok`'s root, plus the real `gtok` entry point."""

import json
import subprocess
import sys
from typing import Annotated

import pytest
import typer

from gtok import GtokError, __version__
from gtok.cli._common import GLOBAL_FLAGS, ConfigOption, JsonFlag, new_app, print_json, state
from gtok.cli.main import app as gtok_app
from gtok.console import is_quiet
from gtok.kernels import runtime

GTOK = typer.main.get_command(gtok_app)


def _demo_app() -> typer.Typer:
    app = new_app(name="demo")

    @app.command("flags")
    def flags() -> None:
        print(f"quiet={is_quiet()} verbose={state.verbose} arch={runtime.requested_arch()}")

    @app.command("size")
    def size(
        config: ConfigOption = None,
        batch_size: Annotated[int, typer.Option()] = 1,
        json_output: JsonFlag = False,
    ) -> None:
        print_json({"batch_size": batch_size}) if json_output else print(batch_size)

    @app.command("broken")
    def broken() -> None:
        raise GtokError("The folder ./nowhere does not exist; pass a folder of .tar shards.")

    return app


def test_user_error_is_one_red_line_and_exit_1(runner):
    result = runner.invoke(_demo_app(), ["broken"])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: The folder ./nowhere does not exist; pass a folder of .tar shards."]


def test_verbose_shows_the_exception(runner):
    result = runner.invoke(_demo_app(), ["-v", "broken"])
    state.verbose = False
    assert isinstance(result.exception, GtokError)


def test_usage_error_exits_2(runner):
    result = runner.invoke(_demo_app(), ["size", "--batch-size", "many"])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_json_prints_only_json_on_stdout(runner):
    result = runner.invoke(_demo_app(), ["size", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"batch_size": 1}


@pytest.mark.parametrize(
    ("use_config", "use_env", "use_flag", "expected"),
    [
        (False, False, False, 1),
        (True, False, False, 2),
        (True, True, False, 3),
        (True, True, True, 4),
        (False, True, False, 3),
    ],
)
def test_config_precedence(runner, tmp_path, use_config, use_env, use_flag, expected):
    config = tmp_path / "run.toml"
    config.write_text("[size]\nbatch-size = 2\n")
    args = ["size"]
    args += ["--config", str(config)] if use_config else []
    args += ["--batch-size", "4"] if use_flag else []
    env = {"GTOK_SIZE_BATCH_SIZE": "3"} if use_env else {}
    result = runner.invoke(_demo_app(), args, env=env)
    assert result.exit_code == 0, result.stderr
    assert int(result.stdout) == expected


def test_config_flat_table_and_unknown_key(runner, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("batch_size = 7\n")
    assert runner.invoke(_demo_app(), ["size", "--config", str(good)]).stdout.strip() == "7"
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_sise = 7\n")
    result = runner.invoke(_demo_app(), ["size", "--config", str(bad)])
    assert result.exit_code == 2
    assert "batch_sise" in result.stderr


def test_config_file_missing_or_invalid(runner, tmp_path):
    assert runner.invoke(_demo_app(), ["size", "--config", str(tmp_path / "x.toml")]).exit_code == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = [")
    result = runner.invoke(_demo_app(), ["size", "--config", str(broken)])
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr


def test_gtok_help_and_version(runner):
    result = runner.invoke(gtok_app, ["--help"])
    assert result.exit_code == 0
    assert "env" in result.stdout
    assert runner.invoke(gtok_app, ["--version"]).stdout == f"gtok {__version__}\n"
    assert runner.invoke(gtok_app, []).exit_code in (0, 2)  # no_args_is_help shows help


@pytest.mark.subprocess
def test_gtok_env_json_from_the_installed_script(tmp_path):
    """The real console script: stdout must be one JSON document (Taichi prints nothing)."""
    gtok = [sys.executable, "-c", "from gtok.cli.main import main; main()"]
    out = subprocess.run([*gtok, "env", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["gtok"] == __version__
    assert report["taichi"]["arch"] == "cpu"
    assert report["taichi"]["kernels"] == "ok"
    arches = report["taichi"]["arches"]
    assert arches["cpu"] == {"starts": True, "kernels": "ok", "error": None}
    if sys.platform != "darwin":
        assert not arches["metal"]["starts"] and "macOS" in arches["metal"]["error"]
    assert arches["vulkan"]["kernels"] == ("ok" if arches["vulkan"]["starts"] else None)
    assert set(report["weights"]) == {"vgg16", "lpips-vgg", "alexnet", "lpips-alex", "inception"}
    assert report["packages"]["torch"].startswith("2.")


# ---- global flags and environment variables --------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["flags"], {}, "quiet=False verbose=False arch=auto"),
        (["-q", "flags"], {}, "quiet=True verbose=False arch=auto"),
        (["flags", "-q"], {}, "quiet=True verbose=False arch=auto"),
        (["flags", "--quiet", "-v"], {}, "quiet=True verbose=True arch=auto"),
        (["--verbose", "flags"], {}, "quiet=False verbose=True arch=auto"),
        (["flags"], {"GTOK_QUIET": "1", "GTOK_VERBOSE": "1"}, "quiet=True verbose=True arch=auto"),
        (["--kernel-arch", "vulkan", "flags"], {}, "quiet=False verbose=False arch=vulkan"),
        (["flags", "--kernel-arch", "METAL"], {}, "quiet=False verbose=False arch=metal"),
        (["flags"], {"GTOK_KERNEL_ARCH": "cpu"}, "quiet=False verbose=False arch=cpu"),
        (
            ["--kernel-arch", "cuda", "flags"],
            {"GTOK_KERNEL_ARCH": "vulkan"},
            "quiet=False verbose=False arch=cuda",
        ),
        (["flags"], {}, "quiet=False verbose=False arch=auto"),  # nothing left over from above
    ],
)
def test_global_flags_before_or_after_the_command(runner, args, env, expected):
    result = runner.invoke(_demo_app(), args, env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == expected


def test_an_unknown_kernel_arch_is_a_usage_error(runner):
    result = runner.invoke(_demo_app(), ["flags", "--kernel-arch", "opengl"])
    assert result.exit_code == 2 and "--kernel-arch" in result.stderr
    from_env = runner.invoke(_demo_app(), ["flags"], env={"GTOK_KERNEL_ARCH": "opengl"})
    assert from_env.exit_code == 2 and "opengl" in from_env.stderr


def test_verbose_after_a_real_command_shows_the_exception(runner, tmp_path):
    result = runner.invoke(gtok_app, ["info", str(tmp_path / "none.zarr"), "-v"])
    state.verbose = False
    assert isinstance(result.exception, GtokError)
    quiet = runner.invoke(gtok_app, ["info", str(tmp_path / "none.zarr"), "-q"])
    assert quiet.exit_code == 1 and quiet.stderr.startswith("error: ")


def _variables(command) -> dict[str, str | None]:
    """Long name -> environment variable of every option of `command`, --help included."""
    params = command.get_params(GTOK.context_class(command))
    options = [p for p in params if p.param_type_name == "option"]
    return {next(o for o in p.opts if o.startswith("--")): p.envvar for p in options}


def _commands():
    """(command path, click command) of the root and every command."""
    return [([], GTOK), *(([name], command) for name, command in GTOK.commands.items())]


def test_every_option_is_bound_to_gtok_command_option():
    """GTOK_<COMMAND>_<OPTION>, from the option's long name; the global flags GTOK_<OPTION>;
    --help and --version never."""
    checked = 0
    for path, command in _commands():
        for long, variable in _variables(command).items():
            if long in ("--help", "--version"):
                assert variable is None, (path, long)
                continue
            scope = [] if long in GLOBAL_FLAGS else path
            expected = "_".join(["GTOK", *scope, long[2:]]).upper().replace("-", "_")
            assert variable == expected, (path, long)
            checked += 1
    assert checked > 100
    assert _variables(GTOK.commands["decode"])["--format"] == "GTOK_DECODE_FORMAT"
    convert = _variables(GTOK.commands["convert-official"])
    assert convert["--output"] == "GTOK_CONVERT_OFFICIAL_OUTPUT"
    assert GTOK.context_settings.get("auto_envvar_prefix") is None


def test_an_option_takes_its_documented_variable(runner, tmp_path):
    args = ["decode", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "out")]
    bad = runner.invoke(gtok_app, args, env={"GTOK_DECODE_FORMAT": "jpeg"})
    assert bad.exit_code == 2 and "--format" in bad.stderr and "jpeg" in bad.stderr
    old_name = runner.invoke(gtok_app, args, env={"GTOK_DECODE_OUTPUT_FORMAT": "jpeg"})
    assert old_name.exit_code == 1  # no such variable: the missing store is the error


@pytest.mark.parametrize(
    "variable", ["GTOK_VERSION", "GTOK_HELP", "GTOK_INFO_HELP", "GTOK_INFO_VERSION"]
)
def test_version_and_help_are_never_read_from_the_environment(runner, tmp_path, variable):
    result = runner.invoke(gtok_app, ["info", str(tmp_path / "none.zarr")], env={variable: "1"})
    assert result.exit_code == 1, result.stdout
    assert result.stdout == "" and "is not a gtok token store" in result.stderr


# ---- help at 80 and 120 columns --------------------------------------


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", ["", *GTOK.commands])
def test_help_is_readable_at_the_terminal_width(runner, command, width):
    args = [command, "--help"] if command else ["--help"]
    result = runner.invoke(gtok_app, args, env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "…" not in text and "<bool>" not in text
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide
    assert not [line for line in text.splitlines() if line != line.rstrip()]
    for variable in _variables(GTOK.commands[command] if command else GTOK).values():
        assert variable is None or variable in text, variable  # whole, on one line
    if not command:  # the command list: each command's first paragraph, not cut short
        flat = " ".join(text.split())
        for sub in GTOK.commands.values():
            assert " ".join(sub.help.split("\n\n")[0].split()) in flat, sub.name
