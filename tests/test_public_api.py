"""Pin the public surface: every `__all__` name exists, and nothing public is missing."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import flywheel

PACKAGES = sorted(
    m.name
    for m in pkgutil.walk_packages(flywheel.__path__, "flywheel.")
    if m.ispkg and not any(part.startswith("_") for part in m.name.split("."))
)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ lists {item!r}, which does not exist"
    public = {
        k
        for k, v in vars(module).items()
        if not k.startswith("_")
        and getattr(v, "__module__", "").startswith(name + ".")
        and not isinstance(v, type(importlib))
    }
    missing = public - set(exported)
    assert not missing, f"{name} defines public names missing from __all__: {sorted(missing)}"


def test_systems_exist() -> None:
    for system in (
        "features",
        "tracking",
        "registry",
        "training",
        "serving",
        "experiments",
        "recsys",
        "ui",
    ):
        assert importlib.import_module(f"flywheel.{system}").__doc__


@pytest.mark.parametrize("name", ["flywheel.features", "flywheel.registry", "flywheel.training"])
def test_exports_are_what_the_docstring_calls_the_api(name: str) -> None:
    """A system's ``__all__`` holds what its docstring names as its API, and nothing more: a
    name exported without being documented there is either API to document or private."""
    module = importlib.import_module(name)
    documented = set(re.findall(r"\w+", module.__doc__ or ""))
    undocumented = sorted(set(module.__all__) - documented)
    assert not undocumented, f"{name} exports names its docstring does not call API: {undocumented}"
