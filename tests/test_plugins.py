"""The one scheme/name registry loader and the one lazy-export helper."""

from __future__ import annotations

import sys

import pytest

from flywheel._plugins import lazy_exports, load, load_for_url, load_target
from flywheel.errors import FlywheelError


def test_load_target_imports_the_named_attribute() -> None:
    assert load_target("flywheel.events:open_event_log").__name__ == "open_event_log"
    with pytest.raises(ValueError, match=r"package\.module:attribute"):
        load_target("flywheel.events")


def test_unknown_names_and_schemes_name_the_known_ones() -> None:
    registry = {"a": "flywheel.errors:FlywheelError"}
    assert load(registry, "a", what="thing") is FlywheelError
    with pytest.raises(FlywheelError, match=r"thing 'b' is not one of \['a'\]"):
        load(registry, "b", what="thing", error=FlywheelError)
    with pytest.raises(ValueError, match=r"store URL 'x://y': scheme 'x' is not one of"):
        load_for_url(registry, "x://y", what="store")


def test_lazy_exports_import_on_first_access() -> None:
    import flywheel.training as training

    assert "flywheel.training._tuning" not in sys.modules or training.run_study
    getattr_, dir_ = lazy_exports("flywheel.training", {"run_study": "flywheel.training._tuning"})
    assert getattr_("run_study").__name__ == "run_study"
    assert "run_study" in dir_()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr_("nope")
