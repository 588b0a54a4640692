"""Experiment definitions: what an A/B test or a bandit is, validated once, as frozen data.

An experiment is written as YAML (``flywheel experiments create FILE.yaml``), JSON (HTTP) or
Python (``ExperimentSpec(...)``); all three go through ``ExperimentSpec.from_dict`` /
``to_dict``, so they accept exactly the same fields and give the same error messages, each naming
the field and the reason.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from flywheel.experiments._errors import InvalidExperiment
from flywheel.experiments._targeting import compile_targeting

_E = TypeVar("_E", bound=enum.StrEnum)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class MetricKind(enum.StrEnum):
    """How a metric summarises each unit's events.

    * ``proportion``: the share of units with at least one ``event`` (conversion).
    * ``mean``: the mean per unit of the sum (or count) of ``event`` values (revenue per user).
    * ``ratio``: sum of ``event`` over sum of ``denominator`` events (CTR = clicks/impressions),
      analysed per unit with the delta method.
    """

    proportion = "proportion"
    mean = "mean"
    ratio = "ratio"


class PolicyKind(enum.StrEnum):
    """Bandit policies: non-contextual (first three) and contextual (linear, last two)."""

    thompson = "thompson"
    ucb1 = "ucb1"
    epsilon_greedy = "epsilon_greedy"
    linucb = "linucb"
    lin_thompson = "lin_thompson"

    @property
    def contextual(self) -> bool:
        return self in (PolicyKind.linucb, PolicyKind.lin_thompson)


class ExperimentStatus(enum.StrEnum):
    draft = "draft"
    running = "running"
    stopped = "stopped"


@dataclass(frozen=True)
class Metric:
    """A metric over event types; ``direction`` says which way is good."""

    name: str
    kind: MetricKind
    event: str
    denominator: str | None = None
    value: str = "sum"  # "sum" of event values or "count" of events, per unit
    direction: str = "increase"
    tolerance: float = 0.0  # guardrails: the relative harm allowed before a breach

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Metric:
        data = _mapping(data, where)
        _known(
            data, where, {"name", "kind", "event", "denominator", "value", "direction", "tolerance"}
        )
        name = _name(data.get("name"), f"{where}.name")
        kind = _enum(MetricKind, data.get("kind", "mean"), f"{where}.kind")
        event = _name(data.get("event"), f"{where}.event")
        denominator = data.get("denominator")
        if kind is MetricKind.ratio:
            denominator = _name(denominator, f"{where}.denominator")
        elif denominator is not None:
            raise InvalidExperiment(f"{where}.denominator", "only ratio metrics have a denominator")
        value = str(data.get("value", "sum"))
        if value not in ("sum", "count"):
            raise InvalidExperiment(f"{where}.value", f"must be 'sum' or 'count', got {value!r}")
        direction = str(data.get("direction", "increase"))
        if direction not in ("increase", "decrease"):
            raise InvalidExperiment(
                f"{where}.direction", f"must be 'increase' or 'decrease', got {direction!r}"
            )
        tolerance = _number(data.get("tolerance", 0.0), f"{where}.tolerance", low=0.0)
        return cls(name, kind, event, denominator, value, direction, tolerance)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "event": self.event}
        if self.denominator:
            out["denominator"] = self.denominator
        out.update(value=self.value, direction=self.direction, tolerance=self.tolerance)
        return out


@dataclass(frozen=True)
class Variant:
    """One arm of an A/B test and its traffic weight (weights need not sum to 1)."""

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class BanditConfig:
    """A bandit policy over ``arms``.

    ``min_exploration`` is the floor on every arm's assignment probability (so no arm starves and
    every logged propensity is positive for off-policy evaluation); ``context`` lists the numeric
    context attributes a contextual policy uses (an intercept is added); ``alpha`` is LinUCB's
    confidence width and linear Thompson's posterior scale; ``prior`` the ridge / prior strength.
    """

    policy: PolicyKind
    arms: tuple[str, ...]
    reward: str = (
        "bernoulli"  # Thompson's likelihood: "bernoulli" (rewards in [0, 1]) or "gaussian"
    )
    min_exploration: float = 0.01
    epsilon: float = 0.1
    alpha: float = 1.0
    prior: float = 1.0
    context: tuple[str, ...] = ()
    sticky: bool = False
    reward_event: str = "reward"

    @classmethod
    def from_dict(cls, data: Any, where: str = "bandit") -> BanditConfig:
        data = _mapping(data, where)
        _known(
            data,
            where,
            {
                "policy",
                "arms",
                "reward",
                "min_exploration",
                "epsilon",
                "alpha",
                "prior",
                "context",
                "sticky",
                "reward_event",
            },
        )
        policy = _enum(PolicyKind, data.get("policy", "thompson"), f"{where}.policy")
        arms_raw = data.get("arms")
        if not isinstance(arms_raw, list) or len(arms_raw) < 2:
            raise InvalidExperiment(f"{where}.arms", "needs a list of at least 2 arm names")
        arms = tuple(_name(a, f"{where}.arms[{i}]") for i, a in enumerate(arms_raw))
        if len(set(arms)) != len(arms):
            raise InvalidExperiment(f"{where}.arms", "arm names must be unique")
        if len(arms) > 200:
            raise InvalidExperiment(f"{where}.arms", "at most 200 arms")
        reward = str(data.get("reward", "bernoulli"))
        if reward not in ("bernoulli", "gaussian"):
            raise InvalidExperiment(
                f"{where}.reward", f"must be bernoulli or gaussian, got {reward!r}"
            )
        floor = _number(data.get("min_exploration", 0.01), f"{where}.min_exploration", low=0.0)
        if floor * len(arms) >= 1.0:
            raise InvalidExperiment(
                f"{where}.min_exploration", f"{floor} x {len(arms)} arms must be below 1"
            )
        context_raw = data.get("context", [])
        if not isinstance(context_raw, list):
            raise InvalidExperiment(f"{where}.context", "must be a list of attribute names")
        context = tuple(_name(c, f"{where}.context[{i}]") for i, c in enumerate(context_raw))
        if policy.contextual and not context:
            raise InvalidExperiment(
                f"{where}.context", f"policy {policy.value} needs context features"
            )
        if context and not policy.contextual:
            raise InvalidExperiment(f"{where}.context", f"policy {policy.value} is not contextual")
        sticky = data.get("sticky", False)
        if not isinstance(sticky, bool):
            raise InvalidExperiment(f"{where}.sticky", "must be true or false")
        return cls(
            policy=policy,
            arms=arms,
            reward=reward,
            min_exploration=floor,
            epsilon=_number(data.get("epsilon", 0.1), f"{where}.epsilon", low=0.0, high=1.0),
            alpha=_number(data.get("alpha", 1.0), f"{where}.alpha", low=0.0),
            prior=_number(data.get("prior", 1.0), f"{where}.prior", low=1e-9),
            context=context,
            sticky=sticky,
            reward_event=_name(data.get("reward_event", "reward"), f"{where}.reward_event"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.value,
            "arms": list(self.arms),
            "reward": self.reward,
            "min_exploration": self.min_exploration,
            "epsilon": self.epsilon,
            "alpha": self.alpha,
            "prior": self.prior,
            "context": list(self.context),
            "sticky": self.sticky,
            "reward_event": self.reward_event,
        }


@dataclass(frozen=True)
class ExperimentSpec:
    """The definition of an experiment: an A/B test (``variants``) or a bandit (``bandit``).

    Units outside the experiment (targeting, traffic, layer, before start / after end or after a
    stop) get the ``control`` variant (the first one unless named) and log no exposure.
    """

    name: str
    variants: tuple[Variant, ...] = ()
    bandit: BanditConfig | None = None
    unit: str = "user_id"
    description: str = ""
    control: str | None = None
    layer: str | None = None
    traffic: float = 1.0
    targeting: dict[str, Any] | None = None
    metrics: tuple[Metric, ...] = ()
    guardrails: tuple[Metric, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    alpha: float = 0.05
    salt: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()  # lineage: "endpoint:ranker", "model_version:ranker/3", ...

    @property
    def is_bandit(self) -> bool:
        return self.bandit is not None

    @property
    def arms(self) -> tuple[str, ...]:
        """Variant names (A/B) or arm names (bandit), in definition order."""
        if self.bandit is not None:
            return self.bandit.arms
        return tuple(v.name for v in self.variants)

    @property
    def control_arm(self) -> str:
        return self.control or self.arms[0]

    @property
    def layer_name(self) -> str:
        """The layer: experiments in one layer never share a unit. Default: its own layer."""
        return self.layer or f"experiment:{self.name}"

    @property
    def effective_salt(self) -> str:
        return self.salt or self.name

    def all_metrics(self) -> tuple[Metric, ...]:
        """Primary and secondary metrics, then guardrails (a bandit's reward comes first)."""
        metrics = self.metrics
        if self.bandit is not None and not any(
            m.event == self.bandit.reward_event for m in metrics
        ):
            metrics = (Metric("reward", MetricKind.mean, self.bandit.reward_event),) + metrics
        return metrics + self.guardrails

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentSpec:
        """Read a definition from a YAML file."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidExperiment("file", f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InvalidExperiment("file", f"{path} is not valid YAML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> ExperimentSpec:
        """Validate a definition given as plain data (YAML/JSON); raise ``InvalidExperiment``."""
        data = _mapping(data, "experiment")
        _known(
            data,
            "experiment",
            {
                "name",
                "variants",
                "bandit",
                "unit",
                "description",
                "control",
                "layer",
                "traffic",
                "targeting",
                "metrics",
                "guardrails",
                "start",
                "end",
                "alpha",
                "salt",
                "tags",
                "upstream",
            },
        )
        name = _name(data.get("name"), "name")
        try:
            return cls._from_dict(name, data)
        except InvalidExperiment as exc:
            if exc.experiment is None:
                raise InvalidExperiment(exc.field, exc.reason, name) from None
            raise

    @classmethod
    def _from_dict(cls, name: str, data: Mapping[str, Any]) -> ExperimentSpec:
        variants: tuple[Variant, ...] = ()
        bandit = None
        if "bandit" in data:
            if "variants" in data:
                raise InvalidExperiment("variants", "give either variants or bandit, not both")
            bandit = BanditConfig.from_dict(data["bandit"])
        else:
            raw = data.get("variants")
            if not isinstance(raw, list) or len(raw) < 2:
                raise InvalidExperiment("variants", "needs a list of at least 2 variants")
            variants = tuple(_variant(v, f"variants[{i}]") for i, v in enumerate(raw))
            names = [v.name for v in variants]
            if len(set(names)) != len(names):
                raise InvalidExperiment("variants", "variant names must be unique")
            if len(variants) > 200:
                raise InvalidExperiment("variants", "at most 200 variants")
            if sum(v.weight for v in variants) <= 0:
                raise InvalidExperiment("variants", "at least one weight must be positive")
        arms = bandit.arms if bandit else tuple(v.name for v in variants)
        control = data.get("control")
        if control is not None and control not in arms:
            raise InvalidExperiment("control", f"{control!r} is not one of {list(arms)}")
        targeting = data.get("targeting")
        compile_targeting(targeting)  # validates
        metrics = _metrics(data.get("metrics", []), "metrics")
        guardrails = _metrics(data.get("guardrails", []), "guardrails")
        names_seen = [m.name for m in metrics + guardrails]
        if len(set(names_seen)) != len(names_seen):
            raise InvalidExperiment(
                "metrics", "metric names must be unique across metrics and guardrails"
            )
        start, end = _time(data.get("start"), "start"), _time(data.get("end"), "end")
        if start and end and end <= start:
            raise InvalidExperiment("end", "must be after start")
        tags = data.get("tags", {}) or {}
        if not isinstance(tags, Mapping):
            raise InvalidExperiment("tags", "must be a mapping of strings")
        layer = data.get("layer")
        salt = data.get("salt")
        upstream = _upstream(data.get("upstream", []))
        return cls(
            name=name,
            variants=variants,
            bandit=bandit,
            unit=_name(data.get("unit", "user_id"), "unit"),
            description=str(data.get("description", "") or ""),
            control=control,
            layer=None if layer is None else _name(layer, "layer"),
            traffic=_number(data.get("traffic", 1.0), "traffic", low=0.0, high=1.0, open_low=True),
            targeting=dict(targeting) if targeting else None,
            metrics=metrics,
            guardrails=guardrails,
            start=start,
            end=end,
            alpha=_number(data.get("alpha", 0.05), "alpha", low=0.0, high=0.5, open_low=True),
            salt=None if salt is None else str(salt),
            tags={str(k): str(v) for k, v in tags.items()},
            upstream=upstream,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` reads back to an equal spec."""
        out: dict[str, Any] = {"name": self.name, "unit": self.unit}
        if self.description:
            out["description"] = self.description
        if self.bandit is not None:
            out["bandit"] = self.bandit.to_dict()
        else:
            out["variants"] = [{"name": v.name, "weight": v.weight} for v in self.variants]
        for key in ("control", "layer", "salt"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["traffic"] = self.traffic
        if self.targeting:
            out["targeting"] = self.targeting
        out["metrics"] = [m.to_dict() for m in self.metrics]
        out["guardrails"] = [m.to_dict() for m in self.guardrails]
        if self.start:
            out["start"] = self.start.isoformat()
        if self.end:
            out["end"] = self.end.isoformat()
        out["alpha"] = self.alpha
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.upstream:
            out["upstream"] = list(self.upstream)
        return out


# -- validation helpers --------------------------------------------------------------------------


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidExperiment(where, f"must be a mapping, got {type(data).__name__}")
    return data


def _known(data: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise InvalidExperiment(
            where, f"unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
        )


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidExperiment(
            where, f"must be 1-100 characters of letters, digits, '_', '.', '-', got {value!r}"
        )
    return value


def _number(
    value: Any,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidExperiment(where, f"must be a finite number, got {value!r}")
    if low is not None and (value < low or (open_low and value == low)):
        raise InvalidExperiment(where, f"must be {'>' if open_low else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise InvalidExperiment(where, f"must be <= {high}, got {value}")
    return float(value)


def _enum(kind: type[_E], value: Any, where: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(k.value for k in kind)
        raise InvalidExperiment(where, f"{value!r} is not one of: {allowed}") from None


def _variant(value: Any, where: str) -> Variant:
    if isinstance(value, str):
        return Variant(_name(value, where), 1.0)
    data = _mapping(value, where)
    _known(data, where, {"name", "weight"})
    return Variant(
        _name(data.get("name"), f"{where}.name"),
        _number(data.get("weight", 1.0), f"{where}.weight", low=0.0),
    )


def _metrics(value: Any, where: str) -> tuple[Metric, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidExperiment(where, "must be a list of metrics")
    return tuple(Metric.from_dict(m, f"{where}[{i}]") for i, m in enumerate(value))


def _upstream(value: Any) -> tuple[str, ...]:
    from flywheel.lineage import NODE_KINDS

    if not isinstance(value, list):
        raise InvalidExperiment("upstream", "must be a list of 'kind:id' strings")
    out = []
    for i, item in enumerate(value):
        kind, sep, node_id = str(item).partition(":")
        if not sep or not node_id or kind not in NODE_KINDS:
            raise InvalidExperiment(
                f"upstream[{i}]", f"{item!r} is not 'kind:id' with kind one of {list(NODE_KINDS)}"
            )
        out.append(f"{kind}:{node_id}")
    return tuple(out)


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidExperiment(where, f"must be an ISO 8601 time, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


__all__ = [
    "BanditConfig",
    "ExperimentSpec",
    "ExperimentStatus",
    "Metric",
    "MetricKind",
    "PolicyKind",
    "Variant",
]
