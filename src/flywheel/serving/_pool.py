"""The version pool: the model versions one server process has loaded, and their batchers.

A version is loaded once however many requests ask for it at the same time (the load runs in a
thread; the registry verifies the artifact's sha256 and places the model on its device), warmed
with its input example, and given a ``DynamicBatcher`` on the pool's inference thread pool. A
version that failed to load is not tried again for ``LOAD_RETRY_SECONDS`` (callers get the same
``ModelUnavailable``). ``retire_later`` closes a version that nothing routes to any more, after a
grace period in which in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flywheel.config import ServingConfig
from flywheel.serving import _metrics as m
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from flywheel.serving._errors import ModelUnavailable, ServingError
from flywheel.serving._heap import freeze_heap
from flywheel.serving._once import LoadOnce
from flywheel.serving._runtime import LoadedRuntime, ModelSource, load_runtime

if TYPE_CHECKING:
    from flywheel.registry import ModelVersion, Signature

log = logging.getLogger("flywheel.serving")

LOAD_RETRY_SECONDS = 2.0  # a version that failed to load is not retried sooner
RETIRE_GRACE_SECONDS = 5.0  # in-flight requests on a retired version finish within this

VersionKey = tuple[str, int]


@dataclass
class ServedVersion:
    """A loaded version with its batcher and cached metric children."""

    name: str
    version: int
    mv: ModelVersion
    runtime: LoadedRuntime
    batcher: DynamicBatcher
    policy: BatchingPolicy
    allow_nan: bool
    feature_names: list[str] | None
    slo_s: float | None = None  # the version's deadline for requests that set none
    loaded_at: float = field(default_factory=time.time)
    queue_gauge: Any = None

    def __post_init__(self) -> None:
        self.queue_gauge = m.QUEUE_DEPTH.labels(self.name, str(self.version))

    @property
    def signature(self) -> Signature:
        return self.mv.signature

    def metadata(self, *, public_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The V2 model metadata of this version, served under ``public_name``."""
        sig = self.mv.signature
        return {
            "name": public_name,
            "versions": [str(self.version)],
            "platform": self.runtime.runtime,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in sig.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in sig.outputs
            ],
            "parameters": {
                "model": self.name,
                "version": self.version,
                "flavor": getattr(self.mv, "flavor", ""),
                "runtime": self.runtime.runtime,
                "device": self.runtime.device,
                **self.runtime.placement,  # device_requested, execution_providers, ...
                "runtime_timings_ms": self.runtime.timings_ms,
                "max_batch_size": self.policy.max_batch_size,
                "max_queue_delay_us": self.policy.max_queue_delay_us,
                "preferred_batch_sizes": list(self.policy.preferred_batch_sizes),
                "max_queue_size": self.policy.max_queue_size,
                "slo_ms": None if self.slo_s is None else self.slo_s * 1000,
                **(extra or {}),
            },
        }


def slo_seconds(config: dict[str, Any]) -> float | None:
    """A version's ``config["slo_ms"]`` in seconds: the deadline of its requests that bring
    none (None: the server's ``serving.request_timeout_ms`` applies)."""
    value = config.get("slo_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ServingError(
            f"config 'slo_ms' must be a positive number of milliseconds, got {value!r}"
        )
    return float(value) / 1000


class VersionPool:
    """Loaded versions by ``(model, version)`` (see the module docstring).

    ``start`` creates the inference thread pool. ``get_version`` of a version that is not
    loaded first awaits ``ensure_started`` (the server starts itself on first use), and raises
    ``ModelUnavailable`` if the pool is still not started. ``close`` drains every batcher and
    forgets everything.
    """

    def __init__(
        self,
        source: ModelSource,
        config: ServingConfig,
        background: BackgroundTasks,
        ensure_started: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.background = background
        self._ensure_started = ensure_started
        self._versions: dict[VersionKey, ServedVersion] = {}
        self._once: LoadOnce[VersionKey, ServedVersion] = LoadOnce(LOAD_RETRY_SECONDS)
        self._executor: ThreadPoolExecutor | None = None
        # Set once a server that owns its process is ready: each later load is frozen (``_heap``).
        self.freeze_after_load = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference threads (after ``reset`` if a previous loop is gone)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.config.worker_threads, thread_name_prefix="flywheel-infer"
            )

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise ModelUnavailable("the inference server is not started")
        return self._executor

    def reset(self) -> None:
        """Forget every version and stop the threads, without draining (the loop is gone)."""
        self._versions.clear()
        self._once.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def close(self) -> None:
        """Drain every batcher, then ``reset``."""
        for served in list(self._versions.values()):
            await served.batcher.close()
        self.reset()

    # -- versions ----------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start the server this pool belongs to, if it is not (the hook given at creation)."""
        if self._ensure_started is not None:
            await self._ensure_started()

    def peek(self, key: VersionKey) -> ServedVersion | None:
        """The version if it is loaded, without loading it."""
        return self._versions.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._versions

    @property
    def loading(self) -> list[asyncio.Task[ServedVersion]]:
        return self._once.loading

    async def get_version(self, name: str, version: int) -> ServedVersion:
        """The loaded version, loading and warming it first if needed (once, however many ask)."""
        key = (name, version)
        served = self._versions.get(key)
        if served is not None:
            return served
        await self.ensure_started()
        self.executor  # noqa: B018  (not started: ModelUnavailable before any load)
        served = await self._once.get(key, lambda: self._load(name, version))
        if key not in self._versions and self.freeze_after_load:
            freeze_heap(collect=False)  # the new model's objects leave the full collections
        self._versions[key] = served
        return served

    def _load_sync(self, name: str, version: int) -> tuple[ModelVersion, LoadedRuntime]:
        mv = self.source.resolve(f"models:/{name}/{version}")
        runtime = load_runtime(self.source, mv, prefer_onnx=self.config.prefer_onnx)
        return mv, runtime

    async def _load(self, name: str, version: int) -> ServedVersion:
        mv, runtime = await asyncio.to_thread(self._load_sync, name, version)
        mv_config = dict(getattr(mv, "config", None) or {})
        policy = BatchingPolicy.from_settings(self.config, mv_config)
        batch_hist = m.BATCH_SIZE.labels(name, str(version))
        batcher = DynamicBatcher(
            runtime.predict,
            policy,
            self.executor,
            name=f"{name}/{version}",
            on_batch=batch_hist.observe,
        )
        names = mv_config.get("feature_names")
        served = ServedVersion(
            name=name,
            version=version,
            mv=mv,
            runtime=runtime,
            batcher=batcher,
            policy=policy,
            allow_nan=bool(mv_config.get("allow_nan", False)),
            feature_names=[str(n) for n in names] if isinstance(names, list) else None,
            slo_s=slo_seconds(mv_config),
        )
        log.info(
            "serving %s/%s with %s on %s (loaded in %.2fs)",
            name, version, runtime.runtime, runtime.device, runtime.load_seconds,
        )  # fmt: skip
        return served

    def retire_later(
        self,
        key: VersionKey,
        in_use: Callable[[VersionKey], bool],
        grace_s: float = RETIRE_GRACE_SECONDS,
    ) -> asyncio.Task[Any]:
        """After ``grace_s``, close the version unless ``in_use(key)`` says it is routed again."""

        async def retire() -> None:
            await asyncio.sleep(grace_s)
            served = self._versions.get(key)
            if served is not None and not in_use(key):
                self._versions.pop(key, None)
                await served.batcher.close()

        return self.background.spawn(retire())

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded: model, version, runtime, device, queue depth, batches run."""
        return [
            {
                "model": s.name,
                "version": s.version,
                "runtime": s.runtime.runtime,
                "device": s.runtime.device,
                "queue_depth": s.batcher.depth,
                "batches_run": s.batcher.batches_run,
            }
            for s in self._versions.values()
        ]


__all__ = ["LOAD_RETRY_SECONDS", "ServedVersion", "VersionKey", "VersionPool"]
