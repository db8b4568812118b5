"""Load a script that is not part of a package (`bench/*.py`, `examples/*.py`) as a module."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@contextmanager
def script_module(path: Path) -> Iterator[ModuleType]:
    """The script at `path`, executed as a module named after its file. While in use it is
    in `sys.modules` (its dataclasses look themselves up there) and its folder is on
    `sys.path` (scripts import their siblings, e.g. `bench/_images.py`)."""
    name, folder = path.stem, str(path.parent)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(folder)
