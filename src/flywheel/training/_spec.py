"""The job spec: what to run, on what, for whom, and how to checkpoint and register it.

A spec is a frozen dataclass (``JobSpec``) and also a YAML file (``job.yaml``)::

    name: mnist-ddp
    entrypoint: examples.training.train:main     # module:function, or path/to/script.py
    args: ["--epochs", "2"]
    team: research
    priority: 50                                 # 0..100, higher runs first
    max_restarts: 3                              # torchrun restarts after a worker failure
    resources: {nodes: 1, procs_per_node: 2, cpus_per_proc: 1, gpus_per_proc: 0, memory: 2GiB}
    checkpoint: {every_steps: 50, every_seconds: null, keep_last: 3}
    dataset: clicks_train                        # feature-store training dataset or Parquet path
    hyperparameters: {lr: 0.01, batch_size: 32}
    experiment: mnist                            # tracking experiment (default: the job name)
    register: mnist-classifier                   # model name to register on success
    tune:                                        # search space for `flywheel jobs tune`
      lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}

``parse_job_spec`` / ``load_job_spec`` raise ``JobSpecError`` naming the key, the reason and
the allowed values; they never let a YAML or type error through unexplained.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flywheel.training._errors import JobSpecError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENTRYPOINT_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
PRIORITY_RANGE = (0, 100)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2}
_MEMORY_UNITS |= {"mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_MEMORY_UNITS |= {"t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_TUNE_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Resources:
    """What one job needs. All processes of all nodes are granted at once or not at all."""

    nodes: int = 1
    procs_per_node: int = 1
    cpus_per_proc: int = 1
    gpus_per_proc: int = 0
    memory_bytes: int | None = None

    @property
    def procs(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def cpus(self) -> int:
        return self.procs * self.cpus_per_proc

    @property
    def gpus(self) -> int:
        return self.procs * self.gpus_per_proc


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the runtime's ``Checkpointer`` saves, and how many checkpoints it keeps."""

    every_steps: int | None = None
    every_seconds: float | None = None
    keep_last: int = 3


@dataclass(frozen=True)
class TuneParam:
    """One dimension of a search space for ``flywheel jobs tune``."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """A training job. Build it in Python or load it from ``job.yaml`` (``load_job_spec``)."""

    name: str
    entrypoint: str
    args: tuple[str, ...] = ()
    team: str = "default"
    priority: int = 50
    max_restarts: int = 3
    resources: Resources = field(default_factory=Resources)
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    dataset: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None
    register: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    preemptible: bool = True
    tune: dict[str, TuneParam] = field(default_factory=dict)
    # The folder relative script paths and module entrypoints are resolved in (job.yaml's folder).
    workdir: str | None = None

    def __post_init__(self) -> None:
        # Re-validate through the same path as YAML so a hand-built spec gets the same errors.
        _validate_dataclass(self)

    @property
    def is_script(self) -> bool:
        return not ENTRYPOINT_PATTERN.match(self.entrypoint)

    def with_hyperparameters(self, **values: Any) -> JobSpec:
        """A copy with ``values`` merged into ``hyperparameters``."""
        return replace(self, hyperparameters={**self.hyperparameters, **values})

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data; ``parse_job_spec(spec.to_dict()) == spec``."""
        data = asdict(self)
        data["args"] = list(self.args)
        res = data.pop("resources")
        memory = res.pop("memory_bytes")
        data["resources"] = {**res, "memory": memory}
        data["tune"] = {
            k: {kk: (list(vv) if kk == "choices" else vv) for kk, vv in asdict(p).items()}
            for k, p in self.tune.items()
        }
        return data


_TOP_KEYS = (
    "name",
    "entrypoint",
    "args",
    "team",
    "priority",
    "max_restarts",
    "resources",
    "checkpoint",
    "dataset",
    "hyperparameters",
    "experiment",
    "register",
    "env",
    "preemptible",
    "tune",
    "workdir",
)
_RESOURCE_KEYS = ("nodes", "procs_per_node", "cpus_per_proc", "gpus_per_proc", "memory")
_CHECKPOINT_KEYS = ("every_steps", "every_seconds", "keep_last")
_TUNE_KEYS = ("type", "low", "high", "log", "step", "choices")


def _allowed(keys: tuple[str, ...]) -> str:
    return "allowed keys are: " + ", ".join(keys)


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], prefix: str, src: str) -> None:
    for key in data:
        if key not in allowed:
            raise JobSpecError(f"{prefix}{key}", f"unknown key; {_allowed(allowed)}", src)


def _int(value: Any, key: str, low: int, high: int | None, src: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobSpecError(key, f"must be an integer, got {value!r}", src)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise JobSpecError(key, f"must be {bounds}, got {value}", src)
    return value


def _str(value: Any, key: str, src: str) -> str:
    if not isinstance(value, str) or not value:
        raise JobSpecError(key, f"must be a non-empty string, got {value!r}", src)
    return value


def parse_memory(value: Any, key: str = "resources.memory", src: str = "job spec") -> int | None:
    """``"2GiB"``, ``"512M"``, ``1073741824`` -> bytes; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).lower() in _MEMORY_UNITS:
            return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])
    units = "B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB"
    raise JobSpecError(key, f"must be bytes or a size like '2GiB' ({units}), got {value!r}", src)


def _parse_tune(raw: Any, src: str) -> dict[str, TuneParam]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise JobSpecError("tune", "must be a mapping of hyperparameter name to a range", src)
    out: dict[str, TuneParam] = {}
    for name, body in raw.items():
        key = f"tune.{name}"
        if not isinstance(body, dict):
            raise JobSpecError(key, "must be a mapping with 'type' and a range", src)
        _check_keys(body, _TUNE_KEYS, f"{key}.", src)
        kind = body.get("type")
        if kind not in _TUNE_TYPES:
            raise JobSpecError(
                f"{key}.type", f"must be one of {', '.join(_TUNE_TYPES)}, got {kind!r}", src
            )
        if kind == "categorical":
            choices = body.get("choices")
            if not isinstance(choices, list | tuple) or not choices:
                raise JobSpecError(f"{key}.choices", "must be a non-empty list", src)
            out[name] = TuneParam(type=kind, choices=tuple(choices))
            continue
        low, high = body.get("low"), body.get("high")
        for bound, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise JobSpecError(f"{key}.{bound}", f"must be a number, got {value!r}", src)
        low, high = float(low or 0), float(high or 0)
        if low >= high:
            raise JobSpecError(f"{key}.low", f"must be below high ({low} >= {high})", src)
        log = body.get("log", False)
        if not isinstance(log, bool):
            raise JobSpecError(f"{key}.log", f"must be true or false, got {log!r}", src)
        if log and low <= 0:
            raise JobSpecError(f"{key}.low", "must be > 0 when log is true", src)
        step = body.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)):
            raise JobSpecError(f"{key}.step", f"must be a number, got {step!r}", src)
        out[name] = TuneParam(type=kind, low=low, high=high, log=log, step=step)
    return out


def parse_job_spec(data: Any, *, source: str = "job spec", workdir: str | None = None) -> JobSpec:
    """Validate a parsed ``job.yaml`` document into a ``JobSpec``. Raises ``JobSpecError``."""
    src = source
    if not isinstance(data, dict):
        raise JobSpecError("", f"must be a mapping of keys to values, got {type(data).__name__}")
    _check_keys(data, _TOP_KEYS, "", src)
    for required in ("name", "entrypoint"):
        if required not in data:
            raise JobSpecError(required, "is required", src)

    resources_raw = data.get("resources") or {}
    if not isinstance(resources_raw, dict):
        raise JobSpecError("resources", f"must be a mapping; {_allowed(_RESOURCE_KEYS)}", src)
    _check_keys(resources_raw, _RESOURCE_KEYS, "resources.", src)
    checkpoint_raw = data.get("checkpoint") or {}
    if not isinstance(checkpoint_raw, dict):
        raise JobSpecError("checkpoint", f"must be a mapping; {_allowed(_CHECKPOINT_KEYS)}", src)
    _check_keys(checkpoint_raw, _CHECKPOINT_KEYS, "checkpoint.", src)

    args = data.get("args") or []
    if not isinstance(args, list | tuple) or not all(
        isinstance(a, str | int | float) and not isinstance(a, bool) for a in args
    ):
        raise JobSpecError("args", f"must be a list of strings, got {args!r}", src)
    hyper = data.get("hyperparameters") or {}
    if not isinstance(hyper, dict) or not all(isinstance(k, str) for k in hyper):
        raise JobSpecError("hyperparameters", "must be a mapping of name to value", src)
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in env.items()
    ):
        raise JobSpecError("env", "must be a mapping of variable name to string", src)
    preemptible = data.get("preemptible", True)
    if not isinstance(preemptible, bool):
        raise JobSpecError("preemptible", f"must be true or false, got {preemptible!r}", src)
    every_seconds = checkpoint_raw.get("every_seconds")
    if every_seconds is not None and (
        isinstance(every_seconds, bool)
        or not isinstance(every_seconds, int | float)
        or every_seconds <= 0
    ):
        raise JobSpecError(
            "checkpoint.every_seconds", f"must be a positive number, got {every_seconds!r}", src
        )
    every_steps = checkpoint_raw.get("every_steps")
    optional_strs: dict[str, str | None] = {}
    for key in ("dataset", "experiment", "register", "workdir"):
        value = data.get(key)
        optional_strs[key] = None if value is None else _str(value, key, src)

    return JobSpec(
        name=_str(data["name"], "name", src),
        entrypoint=_str(data["entrypoint"], "entrypoint", src),
        args=tuple(str(a) for a in args),
        team=_str(data.get("team", "default"), "team", src),
        priority=_int(data.get("priority", 50), "priority", *PRIORITY_RANGE, src),
        max_restarts=_int(data.get("max_restarts", 3), "max_restarts", 0, 100, src),
        resources=Resources(
            nodes=_int(resources_raw.get("nodes", 1), "resources.nodes", 1, 64, src),
            procs_per_node=_int(
                resources_raw.get("procs_per_node", 1), "resources.procs_per_node", 1, 256, src
            ),
            cpus_per_proc=_int(
                resources_raw.get("cpus_per_proc", 1), "resources.cpus_per_proc", 1, 1024, src
            ),
            gpus_per_proc=_int(
                resources_raw.get("gpus_per_proc", 0), "resources.gpus_per_proc", 0, 16, src
            ),
            memory_bytes=parse_memory(resources_raw.get("memory"), src=src),
        ),
        checkpoint=CheckpointPolicy(
            every_steps=None
            if every_steps is None
            else _int(every_steps, "checkpoint.every_steps", 1, None, src),
            every_seconds=None if every_seconds is None else float(every_seconds),
            keep_last=_int(
                checkpoint_raw.get("keep_last", 3), "checkpoint.keep_last", 1, 1000, src
            ),
        ),
        dataset=optional_strs["dataset"],
        hyperparameters=dict(hyper),
        experiment=optional_strs["experiment"],
        register=optional_strs["register"],
        env={k: str(v) for k, v in env.items()},
        preemptible=preemptible,
        tune=_parse_tune(data.get("tune"), src),
        workdir=optional_strs["workdir"] or workdir,
    )


def _validate_dataclass(spec: JobSpec) -> None:
    src = "job spec"
    if not isinstance(spec.name, str) or not NAME_PATTERN.match(spec.name):
        raise JobSpecError(
            "name",
            f"must be 1-63 letters, digits, '_', '.', '-' starting with a letter or digit, "
            f"got {spec.name!r}",
            src,
        )
    if not isinstance(spec.entrypoint, str) or not spec.entrypoint:
        raise JobSpecError("entrypoint", "must be 'module:function' or a path to a .py script", src)
    if ":" in spec.entrypoint and not ENTRYPOINT_PATTERN.match(spec.entrypoint):
        raise JobSpecError(
            "entrypoint",
            f"must be 'module:function' (like 'pkg.train:main') or a path to a .py script, "
            f"got {spec.entrypoint!r}",
            src,
        )
    if ":" not in spec.entrypoint and not spec.entrypoint.endswith(".py"):
        raise JobSpecError(
            "entrypoint",
            f"must be 'module:function' or a path ending in .py, got {spec.entrypoint!r}",
            src,
        )
    if not NAME_PATTERN.match(spec.team):
        raise JobSpecError(
            "team", f"must be a simple name (letters, digits, _.-), got {spec.team!r}"
        )
    _int(spec.priority, "priority", *PRIORITY_RANGE, src)
    if spec.register is not None and not NAME_PATTERN.match(spec.register):
        raise JobSpecError(
            "register", f"must be a model name (letters, digits, _.-), got {spec.register!r}"
        )


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate ``job.yaml``; relative script paths resolve against its folder."""
    import yaml

    p = Path(path).expanduser()
    source = str(p)
    if not p.is_file():
        raise JobSpecError("", "no such file", source)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise JobSpecError("", f"cannot be read: {exc}", source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobSpecError("", f"not valid YAML: {where}{problem}", source) from None
    return parse_job_spec(data, source=source, workdir=str(p.parent.resolve()))


__all__ = [
    "CheckpointPolicy",
    "JobSpec",
    "Resources",
    "TuneParam",
    "load_job_spec",
    "parse_job_spec",
    "parse_memory",
]
