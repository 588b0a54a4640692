"""``flywheel.yaml``: one file per project, parsed once at the edge into typed objects.

Every store is chosen by a URL whose scheme picks the backend (docs: architecture). Relative paths,
including the path inside a ``sqlite:///`` URL, are resolved against the folder that holds the
config file, so a project works from any current directory.

``load_config`` raises ``ConfigError`` naming the file, the key and what is allowed; it never
lets a pydantic or YAML traceback reach the user.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flywheel.errors import ConfigError

CONFIG_FILENAME = "flywheel.yaml"
CONFIG_ENV_VAR = "FLYWHEEL_CONFIG"

# Scheme -> what it means, per role. Adding a backend adds a scheme here and a module in its system.
METADATA_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
ONLINE_STORE_SCHEMES = ("sqlite", "redis", "rediss")
EVENT_LOG_SCHEMES = ("sqlite", "redis", "rediss")
OFFLINE_STORE_SCHEMES = ("", "file")
# The artifact store accepts a local path or any fsspec protocol; these are the ones we test.
ARTIFACT_SCHEMES = ("", "file", "memory", "s3", "gs", "gcs", "az", "abfs", "hdfs", "sftp")


def _scheme(url: str) -> str:
    """The URL scheme, or "" for a plain path (Windows drive letters count as paths)."""
    if "://" not in url:
        return ""
    return urlsplit(url).scheme.lower()


def _check_scheme(url: str, allowed: tuple[str, ...]) -> str:
    scheme = _scheme(url)
    if scheme not in allowed:
        shown = ", ".join(s or "a local path" for s in allowed)
        raise ValueError(f"scheme {scheme or 'path'!r} is not supported here; use one of: {shown}")
    return url


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Section):
    """``auth:`` — bearer tokens. Writes always need a ``writer`` token.

    With ``required: false`` (the default) reads are open to clients on the loopback address and
    need a ``reader`` token from anywhere else; with ``required: true`` every read needs one.
    """

    required: bool = False


class ServerConfig(_Section):
    """``server:`` — where ``flywheel up`` listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # true: ``/metrics`` answers anyone (a Prometheus scraper without a token); false: it is a
    # read like any other (open on 127.0.0.1 unless ``auth.required``, else a reader token).
    public_metrics: bool = False


class TrainingConfig(_Section):
    """``training:`` — the scheduler's inventory, team quotas and timings.

    ``nodes`` unset means this machine alone: its CPUs, and its GPUs found with ``nvidia-smi`` or
    ``torch.cuda``. Teams without an entry in ``quotas`` get ``default_quota``.
    """

    class Node(_Section):
        name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
        cpus: int = Field(ge=1)
        gpus: int | list[int] = 0
        host: str = "127.0.0.1"

    class Quota(_Section):
        cpus: int | None = Field(default=None, ge=0)
        gpus: int | None = Field(default=None, ge=0)
        jobs: int | None = Field(default=None, ge=0)
        weight: float = Field(default=1.0, gt=0)

    class Ray(_Section):
        """``training.ray:`` — the Ray cluster the ``ray`` executor places jobs on."""

        # ``auto`` (the cluster this machine's ``ray start`` joined, or ``$RAY_ADDRESS``),
        # ``host:port`` (the GCS of a head node) or ``ray://host:10001`` (Ray Client).
        address: str = "auto"
        namespace: str = Field(default="flywheel", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
        # How long a placement group may stay pending before the launch is given up (seconds).
        placement_timeout: float = Field(default=120.0, gt=0)

    # ``local``: torchrun agents on this machine; ``ray``: on the nodes of a Ray cluster (then
    # ``artifacts`` must be ``file:///...`` on a filesystem every Ray node mounts, see docs).
    executor: Literal["local", "ray"] = "local"
    ray: Ray = Ray()
    nodes: list[Node] | None = None
    quotas: dict[str, Quota] = {}
    default_quota: Quota = Quota()
    preemption: bool = True
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    grace_period: float = Field(default=60.0, ge=0)


class ServingConfig(_Section):
    """``serving:`` — inference server defaults (a model version's config may override batching)."""

    max_batch_size: int = Field(default=32, ge=1, le=65536)
    max_queue_delay_us: int = Field(default=500, ge=0, le=10_000_000)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = Field(default=512, ge=1)
    shed_delay_ms: int = Field(default=0, ge=0, le=10_000)  # hold a 429 this long
    instances: int = Field(default=1, ge=1, le=64)
    worker_threads: int = Field(default=4, ge=1, le=256)
    request_timeout_ms: int | None = Field(default=1000, ge=1)  # deadline of requests with none
    # Share of the time left to an HTTP request's own deadline (timeout header) that its expected
    # answer may take (the rest covers what admission cannot see: the burst it arrived in, parsed
    # and shed ahead of its answer).
    admission_headroom: float = Field(default=0.5, gt=0.0, le=1.0)
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    poll_interval_ms: int = Field(default=200, ge=10, le=60_000)
    prefer_onnx: bool = True
    gil_switch_interval_us: int | None = Field(default=500, ge=50, le=100_000)
    gc_freeze: bool = True  # keep loaded models out of the collector's full passes (_heap)
    native_threads: int | None = Field(default=1, ge=1, le=256)  # BLAS/OpenMP/torch per process
    prediction_log_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    prediction_log_flush_seconds: float = Field(default=2.0, gt=0.0)
    drift_psi_threshold: float = Field(default=0.2, gt=0.0)
    drift_ks_threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    drift_p_value: float = Field(default=0.01, gt=0.0, lt=1.0)
    drift_webhook: str | None = None


class ExperimentsConfig(_Section):
    """``experiments:`` — event-log streams whose JSON events feed experiment metrics and bandit
    rewards while ``flywheel up`` runs (see ``flywheel.experiments.EventStreamConsumer``)."""

    event_streams: tuple[str, ...] = ()
    unit_field: str = "user_id"
    type_field: str = "event_type"


class RecsysConfig(_Section):
    """``recsys:`` — the recommender's request path (``GET /recommendations``)."""

    deadline_ms: float = Field(default=50.0, gt=0.0, le=10_000.0)
    feature_budget: float = Field(default=0.5, gt=0.0, le=1.0)
    experiment: str | None = None  # an A/B test or bandit whose variants name strategies
    strategy: Literal["ranked", "hybrid", "content", "popularity", "session"] = "ranked"
    explore_experiment: str | None = "recs-explore"  # bandit over exploration sources; null: off
    explore_slots: tuple[int, ...] = (4, 11)  # 0-based positions of the exploration items
    # MMR: 0 = relevance order only; None = the value tune_pipeline chose (registered)
    diversity: float | None = Field(default=None, ge=0.0, le=1.0)
    blocked_items: tuple[str, ...] = ()
    content_method: Literal["auto", "minilm", "tfidf"] = "auto"
    two_tower_model: str | None = "recs-two-tower"  # registered model; null: no two-tower
    ranker_endpoint: str | None = "recs-ranker"  # serving endpoint or model; null: no ranker
    ranker_budget: float = Field(default=0.35, gt=0.0, le=1.0)  # share of the deadline


class TelemetryConfig(_Section):
    """``telemetry:`` — OpenTelemetry spans that Flywheel emits (agent, LLM API, recommendations,
    model inference).

    ``exporter`` picks where they go: ``store`` (the metadata store, searchable under
    ``/traces``), ``otlp`` (an external collector such as Jaeger or Tempo at ``otlp_endpoint``,
    OTLP/HTTP protobuf), ``both``, or ``none`` (spans are not recorded at all). ``sample_rate`` is
    the share of request traces kept (parent-based: a trace is kept or dropped whole); agent and
    LLM traces (GenAI operations) are always kept.
    """

    exporter: Literal["store", "otlp", "both", "none"] = "store"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    otlp_headers: dict[str, str] = {}
    service_name: str = Field(default="flywheel", min_length=1, max_length=200)
    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_scheme(cls, v: str) -> str:
        return _check_scheme(v, ("http", "https"))


class AgentConfig(_Section):
    """``agent:`` — the chat model behind ``flywheel ask`` / ``POST /agent/ask``.

    ``base_url`` unset means Flywheel's own OpenAI-compatible ``/v1`` on the server that runs
    the agent; any OpenAI-compatible server works (its key read from ``api_key_env``). ``model``
    names a registered model (``name``, ``name@production``) or the external server's model.
    """

    base_url: str | None = None
    model: str = "flywheel-ops"
    api_key_env: str | None = None
    max_steps: int = Field(default=8, ge=1, le=50)
    max_tokens: int = Field(default=20_000, ge=100)
    request_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _base_url_scheme(cls, v: str | None) -> str | None:
        return None if v is None else _check_scheme(v, ("http", "https"))


class FlywheelConfig(_Section):
    """The whole of ``flywheel.yaml``. Every key is optional; defaults are the embedded stores."""

    project: str = Field(default="flywheel", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    metadata: str = "sqlite:///.flywheel/metadata.db"
    online_store: str = "sqlite:///.flywheel/online.db"
    offline_store: str = ".flywheel/offline"
    event_log: str = "sqlite:///.flywheel/events.db"
    artifacts: str = ".flywheel/artifacts"
    auth: AuthConfig = AuthConfig()
    server: ServerConfig = ServerConfig()
    training: TrainingConfig = TrainingConfig()
    serving: ServingConfig = ServingConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    recsys: RecsysConfig = RecsysConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    agent: AgentConfig = AgentConfig()
    # The folder that holds flywheel.yaml; relative paths are resolved against it. Not a YAML key.
    root: Path = Field(default=Path("."), exclude=True)

    @field_validator("metadata")
    @classmethod
    def _metadata_scheme(cls, v: str) -> str:
        return _check_scheme(v, METADATA_SCHEMES)

    @field_validator("online_store")
    @classmethod
    def _online_scheme(cls, v: str) -> str:
        return _check_scheme(v, ONLINE_STORE_SCHEMES)

    @field_validator("event_log")
    @classmethod
    def _event_log_scheme(cls, v: str) -> str:
        return _check_scheme(v, EVENT_LOG_SCHEMES)

    @field_validator("offline_store")
    @classmethod
    def _offline_scheme(cls, v: str) -> str:
        return _check_scheme(v, OFFLINE_STORE_SCHEMES)

    @field_validator("artifacts")
    @classmethod
    def _artifacts_scheme(cls, v: str) -> str:
        return _check_scheme(v, ARTIFACT_SCHEMES)

    # -- resolved locations -------------------------------------------------------------------

    def resolve_path(self, path: str | Path) -> Path:
        """A path from the config, made absolute against the project root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()

    def resolve_url(self, url: str) -> str:
        """A store URL with relative paths made absolute (``sqlite:///rel`` and plain paths)."""
        scheme = _scheme(url)
        if scheme == "":
            return str(self.resolve_path(url))
        if scheme == "file":
            return "file://" + str(self.resolve_path(url[len("file://") :]))
        if scheme == "sqlite":
            rest = url.split(":///", 1)
            if len(rest) == 2 and rest[1] and not rest[1].startswith(":memory:"):
                path, _, query = rest[1].partition("?")
                resolved = str(self.resolve_path(path))
                return f"sqlite:///{resolved}" + (f"?{query}" if query else "")
        return url

    @property
    def metadata_url(self) -> str:
        return self.resolve_url(self.metadata)

    @property
    def online_store_url(self) -> str:
        return self.resolve_url(self.online_store)

    @property
    def event_log_url(self) -> str:
        return self.resolve_url(self.event_log)

    @property
    def offline_store_path(self) -> Path:
        url = self.offline_store
        return self.resolve_path(url[len("file://") :] if url.startswith("file://") else url)

    @property
    def artifacts_url(self) -> str:
        return self.resolve_url(self.artifacts)

    @property
    def state_dir(self) -> Path:
        """``.flywheel/`` under the project root: local state that is not a configured store."""
        return self.root / ".flywheel"


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def _describe(error: Any, model: type[BaseModel]) -> tuple[str, str]:
    """Turn one pydantic error into (key, reason) in the words a user needs."""
    loc = tuple(error.get("loc", ()))
    key = _format_loc(loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        section: type[BaseModel] = model
        for part in loc[:-1]:
            field = section.model_fields.get(str(part))
            ann = field.annotation if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                section = ann
        allowed = ", ".join(k for k, f in section.model_fields.items() if not f.exclude)
        return key, f"unknown key; allowed keys are: {allowed}"
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    got = error.get("input")
    if kind not in ("missing",) and not isinstance(got, dict):
        msg = f"{msg} (got {got!r})"
    return key, msg


def parse_config(data: Any, *, file: str, root: Path) -> FlywheelConfig:
    """Validate an already-parsed YAML document. Raises ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            file, "", f"must be a mapping of keys to values, got {type(data).__name__}"
        )
    if "root" in data:
        raise ConfigError(file, "root", "unknown key; the project root is the file's folder")
    try:
        return FlywheelConfig(**data, root=root)
    except ValidationError as exc:
        key, reason = _describe(exc.errors()[0], FlywheelConfig)
        raise ConfigError(file, key, reason) from None


def find_config_file(start: Path | None = None) -> Path | None:
    """``$FLYWHEEL_CONFIG`` if set, else ``flywheel.yaml`` in ``start`` or its parents."""
    named = os.environ.get(CONFIG_ENV_VAR)
    if named:
        return Path(named).expanduser()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None = None) -> FlywheelConfig:
    """Load and validate a config file.

    Args:
        path: a ``flywheel.yaml`` file or a folder holding one. ``None`` looks at
            ``$FLYWHEEL_CONFIG``, then ``./flywheel.yaml`` and its parent folders; with no file at
            all, the embedded defaults rooted at the current directory are returned.

    Raises:
        ConfigError: the file is missing (when named), unreadable, not YAML, or invalid.
    """
    if path is None:
        found = find_config_file()
        if found is None:
            return FlywheelConfig(root=Path.cwd().resolve())
        path = found
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CONFIG_FILENAME
    file = str(p)
    if not p.is_file():
        raise ConfigError(file, "", "no such file; run `flywheel init` to create one")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(file, "", f"not valid YAML: {where}{problem}") from None
    return parse_config(data, file=file, root=p.parent.resolve())


DEFAULT_CONFIG_TEXT = """\
# flywheel.yaml: one file per project. Every key is optional; these are the embedded defaults.
# Each store is chosen by a URL; relative paths are relative to this file's folder.
project: {project}

# Metadata (catalogs, runs, registry, jobs, experiments):
#   sqlite:///.flywheel/metadata.db  or  postgresql+psycopg://user@127.0.0.1:5432/db
metadata: sqlite:///.flywheel/metadata.db

# Online feature store:  sqlite:///.flywheel/online.db  or  redis://127.0.0.1:6379/0
online_store: sqlite:///.flywheel/online.db

# Offline feature store: a folder of Parquet files, queried with DuckDB.
offline_store: .flywheel/offline

# Event log for streaming features:  sqlite:///.flywheel/events.db  or  redis://127.0.0.1:6379/1
event_log: sqlite:///.flywheel/events.db

# Artifact store (models, checkpoints, logs): a folder, or any fsspec URL (s3://bucket/prefix).
artifacts: .flywheel/artifacts

auth:
  # false: reads are open to clients on 127.0.0.1; writes always need a writer token.
  required: false

server:
  host: 127.0.0.1
  port: 8000
  # true: /metrics needs no token even when auth.required is true (for a Prometheus scraper).
  public_metrics: false
"""

__all__ = [
    "CONFIG_ENV_VAR",
    "CONFIG_FILENAME",
    "DEFAULT_CONFIG_TEXT",
    "AgentConfig",
    "AuthConfig",
    "FlywheelConfig",
    "ServerConfig",
    "ServingConfig",
    "TelemetryConfig",
    "TrainingConfig",
    "find_config_file",
    "load_config",
    "parse_config",
]
