"""One way to name a pluggable implementation, and one way to export a name lazily.

Every pluggable role (event log and online store backends by URL scheme, model flavors, the
API's system routers and services, artifact backends) keeps one readable registry of short
name -> ``"package.module:attribute"``; ``load`` imports the module on first use, so choosing a
backend costs only that backend's imports. ``lazy_exports`` gives a package the PEP 562
``__getattr__``/``__dir__`` for public names whose modules are expensive to import (torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit


def load_target(target: str) -> Any:
    """The attribute that ``"package.module:attribute"`` names (importing the module)."""
    module, sep, attribute = target.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{target!r} is not 'package.module:attribute'")
    return getattr(importlib.import_module(module), attribute)


def load(
    registry: Mapping[str, str],
    key: str,
    *,
    what: str,
    error: Callable[[str], Exception] = ValueError,
) -> Any:
    """The implementation registered under ``key``; ``error`` names ``what`` and the known keys."""
    target = registry.get(key)
    if target is None:
        raise error(f"{what} {key!r} is not one of {sorted(registry)}")
    return load_target(target)


def load_for_url(
    registry: Mapping[str, str],
    url: str,
    *,
    what: str,
    error: Callable[[str], Exception] = ValueError,
) -> Any:
    """The backend class registered for ``url``'s scheme (``what`` names the role in errors)."""
    scheme = urlsplit(url).scheme.lower()
    return load(registry, scheme, what=f"{what} URL {url!r}: scheme", error=error)


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 ``(__getattr__, __dir__)`` for ``package``: each name in ``exports`` (name ->
    module) is imported from its module on first access and then kept in the package."""
    namespace = importlib.import_module(package).__dict__

    def get_attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def list_names() -> list[str]:
        return sorted([*namespace, *exports])

    return get_attribute, list_names


__all__ = ["lazy_exports", "load", "load_for_url", "load_target"]
