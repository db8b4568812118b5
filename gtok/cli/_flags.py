"""The flag of each library argument, for the messages of `ArgumentError`s: the library names
an argument as Python does (`batch_size`, `device='cpu'`), the CLI says `--batch-size` and
`--device cpu`. An argument is the flag of its name (`batch_size` -> `--batch-size`) unless
`FLAGS` says otherwise; a new library argument whose flag is spelled another way gets a line
there."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gtok.errors import ArgumentError

__all__ = ["FLAGS", "error_message", "flag", "with_flags"]

FLAGS = {  # library argument -> its flag (or argument) on the command line, where they differ
    "shards": "SHARDS",
    "out": "--output",
    "address": "--ray-address",
    "columns.image": "--image-column",  # gtok.data.parquetio.Columns
    "columns.caption": "--caption-column",
    "columns.key": "--key-column",
    "lpips_weights": "--lpips-vgg-weights",
    "vgg_weights": "--vgg16-weights",
}


def flag(argument: str) -> str:
    """The command line's name of the library argument `argument`."""
    return FLAGS.get(argument, "--" + argument.replace("_", "-"))


def with_flags(message: str, arguments: Iterable[str]) -> str:
    """`message` with each of `arguments` named by its flag, and a value written
    `argument='value'` (or `argument=3`) as the command line takes it: `--flag value`
    (`argument=True`: the on/off flag alone; `argument=False`: its `--no-` form). An
    argument that the message also uses as a word ("the default model") is written in
    backticks (`` `model` ``), and only those are replaced."""
    quoted = [name for name in arguments if f"`{name}`" in message]
    for name in quoted:  # named in backticks: the word elsewhere is prose ("the model")
        message = message.replace(f"`{name}`", flag(name))
    names = sorted(set(arguments) - set(quoted), key=len, reverse=True)
    if not names:
        return message
    # a name not inside a path or a file name (`runs/model`, `model.safetensors`)
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(rf"(?<![\w/.-])({alternatives})(?![\w/-]|\.\w)(?:=(?:'([^']*)'|(\w+)))?")

    def spelled(match: re.Match[str]) -> str:
        name, value = flag(match[1]), match[2] if match[2] is not None else match[3]
        if value == "False":
            return name.replace("--", "--no-", 1)
        return name + ("" if value in (None, "True") else f" {value}")

    return pattern.sub(spelled, message)


def error_message(error: Exception) -> str:
    """The one sentence the CLI prints for a user error: an `ArgumentError` with flags."""
    if isinstance(error, ArgumentError):
        return with_flags(str(error), error.arguments)
    return str(error)
