"""A package's names imported on first use (PEP 562), from a table of where each is defined.

A package `__init__` that re-exports names of heavy submodules (torch, Zarr) keeps
`import package` cheap with::

    _HOMES = {"load_tokenizer": "gtok.model.io", ...}  # name -> the module that defines it
    __getattr__, __dir__ = lazy_names(__name__, _HOMES)

`tests/test_layering.py` reads such a table (a dict literal whose values are module names) as
the package's imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for the module `package`: a name of `homes` is looked up in
    the module `homes[name]` (imported then, once), any other name is an AttributeError; `dir()`
    lists the module's own names and those of `homes`."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(homes[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
