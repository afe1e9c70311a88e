"""The public API of the package."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["fedge", "fedge.central"])
def test_lazy_public_api_resolves_every_name(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
