"""Loading a feature repo: the definitions found at module level in Python files."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

from flywheel.features._definitions import (
    Definition,
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    StreamFeatureView,
)
from flywheel.features._errors import FeatureStoreError

_KINDS = (Entity, EventStream, FeatureView, StreamFeatureView, OnDemandFeatureView, FeatureService)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FeatureStoreError(f"feature repo {str(path)!r} is neither a .py file nor a folder")
    out = []
    for f in sorted(path.rglob("*.py")):
        parts = f.relative_to(path).parts
        if any(p.startswith((".", "_")) for p in parts) or "__pycache__" in parts:
            continue
        out.append(f)
    return out


def load_definitions(path: str | Path) -> list[Definition]:
    """Import every ``.py`` file of ``path`` (a file or a folder, recursively, skipping names
    starting with ``_`` or ``.``) and return the definitions found at module level, in order.
    """
    root = Path(path).expanduser().resolve()
    found: list[Definition] = []
    seen: set[int] = set()
    for file in _files(root):
        name = f"flywheel_feature_repo_{uuid.uuid4().hex[:8]}_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:  # pragma: no cover
            raise FeatureStoreError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(file.parent))
        try:
            spec.loader.exec_module(module)
        except FeatureStoreError as exc:
            raise FeatureStoreError(f"{file}: {exc}") from None
        except Exception as exc:
            raise FeatureStoreError(
                f"{file}: importing it failed: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            sys.path.remove(str(file.parent))
        for value in vars(module).values():
            if isinstance(value, _KINDS) and id(value) not in seen:
                seen.add(id(value))
                found.append(value)
    if not found:
        raise FeatureStoreError(f"no feature definitions found in {str(root)!r}")
    return found
