"""Targeting filters: a small, safe condition language compiled once into a Python closure.

A filter is a mapping from context attribute to a condition, all of which must hold::

    country: {in: [US, CA]}        # operators: eq, ne, in, nin, gt, gte, lt, lte, exists, regex
    app_version: {gte: 3}
    plan: premium                  # a bare value means {eq: value}
    any: [{country: US}, {beta: true}]   # combinators: all, any, not

A missing attribute fails every operator except ``ne``, ``nin`` and ``exists: false``. Filters
are data (YAML/JSON), never code, so they are safe to accept over HTTP.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from flywheel.experiments._errors import InvalidExperiment

Predicate = Callable[[Mapping[str, Any]], bool]
_MISSING = object()

_ORDER_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _always(_context: Mapping[str, Any]) -> bool:
    return True


def compile_targeting(spec: Mapping[str, Any] | None, *, field: str = "targeting") -> Predicate:
    """Compile a filter into ``predicate(context) -> bool``; raise ``InvalidExperiment`` if bad."""
    if not spec:
        return _always
    if not isinstance(spec, Mapping):
        raise InvalidExperiment(field, f"must be a mapping of attribute -> condition, got {spec!r}")
    parts = [_compile_entry(str(key), value, f"{field}.{key}") for key, value in spec.items()]
    if len(parts) == 1:
        return parts[0]
    return lambda ctx: all(p(ctx) for p in parts)


def _compile_entry(key: str, value: Any, field: str) -> Predicate:
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise InvalidExperiment(field, "must be a non-empty list of filters")
        subs = [compile_targeting(v, field=f"{field}[{i}]") for i, v in enumerate(value)]
        if key == "all":
            return lambda ctx: all(p(ctx) for p in subs)
        return lambda ctx: any(p(ctx) for p in subs)
    if key == "not":
        sub = compile_targeting(value, field=field)
        return lambda ctx: not sub(ctx)
    if isinstance(value, Mapping):
        conds = [
            _compile_condition(key, str(op), arg, f"{field}.{op}") for op, arg in value.items()
        ]
        if not conds:
            raise InvalidExperiment(field, "needs at least one operator")
        return conds[0] if len(conds) == 1 else (lambda ctx: all(c(ctx) for c in conds))
    return _compile_condition(key, "eq", value, field)


def _compile_condition(key: str, op: str, arg: Any, field: str) -> Predicate:
    if op == "eq":
        return lambda ctx: ctx.get(key, _MISSING) == arg
    if op == "ne":
        return lambda ctx: ctx.get(key, _MISSING) != arg
    if op in ("in", "nin"):
        if not isinstance(arg, list):
            raise InvalidExperiment(field, f"{op} needs a list, got {arg!r}")
        try:
            allowed: frozenset[Any] | list[Any] = frozenset(arg)
        except TypeError:
            allowed = list(arg)
        if op == "in":
            return lambda ctx: _safe_in(ctx.get(key, _MISSING), allowed)
        return lambda ctx: not _safe_in(ctx.get(key, _MISSING), allowed)
    if op in _ORDER_OPS:
        if isinstance(arg, bool) or not isinstance(arg, int | float | str):
            raise InvalidExperiment(field, f"{op} needs a number or a string, got {arg!r}")
        compare = _ORDER_OPS[op]
        kind = str if isinstance(arg, str) else float

        def ordered(ctx: Mapping[str, Any]) -> bool:
            value = ctx.get(key, _MISSING)
            if value is _MISSING or isinstance(value, bool):
                return False
            if kind is float and not isinstance(value, int | float):
                return False
            if kind is str and not isinstance(value, str):
                return False
            return bool(compare(value, arg))

        return ordered
    if op == "exists":
        if not isinstance(arg, bool):
            raise InvalidExperiment(field, f"exists needs true or false, got {arg!r}")
        return lambda ctx: (ctx.get(key, _MISSING) is not _MISSING) == arg
    if op == "regex":
        if not isinstance(arg, str):
            raise InvalidExperiment(field, f"regex needs a string, got {arg!r}")
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise InvalidExperiment(field, f"invalid regular expression: {exc}") from None
        return lambda ctx: isinstance(v := ctx.get(key), str) and pattern.search(v) is not None
    allowed_ops = "eq, ne, in, nin, gt, gte, lt, lte, exists, regex"
    raise InvalidExperiment(field, f"unknown operator {op!r}; use one of: {allowed_ops}")


def _safe_in(value: Any, allowed: frozenset[Any] | list[Any]) -> bool:
    try:
        return value in allowed
    except TypeError:  # an unhashable context value
        return False


__all__ = ["Predicate", "compile_targeting"]
