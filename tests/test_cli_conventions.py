"""The conventions every command shares (cli/_common.py), tested on a small app built the
same way as `gtok`'s root, plus the real `gtok` entry point."""

import json
import subprocess
import sys
from typing import Annotated

import pytest
import typer

from cli._common import ConfigOption, JsonFlag, new_app, print_json, state
from cli.main import app as gtok_app
from gtok import GtokError, __version__


def _demo_app() -> typer.Typer:
    app = new_app(name="demo")

    @app.callback()
    def root(verbose: Annotated[bool, typer.Option("-v")] = False) -> None:
        state.verbose = verbose

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


def test_gtok_env_json_from_the_installed_script(tmp_path):
    """The real console script: stdout must be one JSON document (Taichi prints nothing)."""
    gtok = [sys.executable, "-c", "from cli.main import main; main()"]
    out = subprocess.run([*gtok, "env", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["gtok"] == __version__
    assert report["taichi"]["arch"] == "cpu"
    assert report["taichi"]["kernels"] == "ok"
    assert set(report["weights"]) == {"vgg16", "lpips-vgg", "alexnet", "lpips-alex", "inception"}
    assert report["packages"]["torch"].startswith("2.")
