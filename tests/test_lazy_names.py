"""The packages that import their names on first use (`gtok._lazy.lazy_names`) behave as if
they imported them at the top: every name of `__all__` is there, `dir()` lists them, and an
unknown name is the usual AttributeError."""

from __future__ import annotations

import importlib

import pytest

LAZY_PACKAGES = ("gtok", "gtok.data", "gtok.model", "gtok.train")


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_every_exported_name_resolves_and_is_listed(name):
    package = importlib.import_module(name)
    missing = [n for n in package.__all__ if n not in dir(package)]
    assert missing == []
    for exported in package.__all__:
        assert getattr(package, exported) is not None


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_an_unknown_name_is_an_attribute_error(name):
    package = importlib.import_module(name)
    with pytest.raises(AttributeError, match=rf"^module '{name}' has no attribute 'nothing'$"):
        package.nothing  # noqa: B018
    assert not hasattr(package, "nothing")
