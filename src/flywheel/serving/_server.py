"""The inference server of one process: loaded versions, endpoints, the request path, reconciling.

``InferenceServer.infer`` is the hot path: resolve the target (named endpoint -> a version by
split/canary; a model's name -> its ``production`` version; ``/versions/V`` -> that version),
decode and validate the V2 request against the version's signature, queue it on the version's
``DynamicBatcher``, encode the answer. No database query happens on this path; endpoint state and
stage assignments are kept in memory and refreshed by the reconciler.

The reconciler (one task per process) polls, every ``serving.poll_interval_ms``:
  * the registry's ``audit_log(since_id=...)``: a promotion or rollback of a model served by its
    stage loads the new version, warms it, then swaps it in (in-flight requests finish on the
    old one);
  * ``serving_events``' newest id: any endpoint change reloads the endpoint table and preloads
    its versions;
  * running canaries: this replica's gate statistics are flushed to the store, the totals of
    all replicas are evaluated, and the winner of an optimistic update advances, completes or
    rolls back the rollout (recording the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flywheel.errors import FlywheelError, NotFoundError
from flywheel.project import Project
from flywheel.serving import _metrics as m
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from flywheel.serving._canary import (
    Action,
    GateStats,
    LatencyHistogram,
    RolloutState,
    apply,
    evaluate,
)
from flywheel.serving._codec import (
    V2_DTYPES,
    InferenceRequest,
    _batch_rows,
    _check_shape,
    _names,
    datatype_of,
    decode_request,
    encode_response,
)
from flywheel.serving._endpoints import CanaryCounts, Endpoint, EndpointStore
from flywheel.serving._errors import (
    DeadlineExceeded,
    EndpointConflict,
    InvalidInput,
    ModelUnavailable,
    ServingError,
    UnknownModel,
)
from flywheel.serving._prediction_log import PredictionLogger, PredictionRecord, now_utc
from flywheel.serving._runtime import LoadedRuntime, ModelSource, RegistrySource, load_runtime

log = logging.getLogger("flywheel.serving")
Tensors = dict[str, np.ndarray]
PRODUCTION = "production"
LOAD_RETRY_SECONDS = 2.0  # a version that failed to load is not retried sooner
_TIMEOUT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")


def parse_timeout_header(value: str) -> float:
    """A ``timeout`` header in seconds: ``"250ms"``, ``"2s"``, ``"500us"``, bare = microseconds."""
    match = _TIMEOUT_RE.match(value)
    if not match:
        raise InvalidInput(f"header 'timeout' {value!r} must look like 250ms, 2s or 500us")
    number, unit = float(match.group(1)), match.group(2) or "us"
    return number * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


@dataclass
class ServedVersion:
    """A loaded version with its batcher and cached metric children."""

    name: str
    version: int
    mv: Any
    runtime: LoadedRuntime
    batcher: DynamicBatcher
    policy: BatchingPolicy
    allow_nan: bool
    feature_names: list[str] | None
    loaded_at: float = field(default_factory=time.time)
    queue_gauge: Any = None

    def __post_init__(self) -> None:
        self.queue_gauge = m.QUEUE_DEPTH.labels(self.name, str(self.version))

    @property
    def signature(self) -> Any:
        return self.mv.signature

    def metadata(self, *, public_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
                **(extra or {}),
            },
        }


@dataclass(slots=True)
class _Labels:
    latency: Any
    codes: dict[int, Any]
    queue_full: Any
    deadline: Any


@dataclass(slots=True)
class InferenceResult:
    """What the ASGI layer sends back."""

    status: int
    body: bytes
    header_length: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """What ``InferenceServer.predict`` returns: the outputs and the version that made them."""

    outputs: dict[str, np.ndarray]
    model: str
    version: int


class InferenceServer:
    """Everything one server process needs to serve models (see the module docstring)."""

    def __init__(
        self, project: Project, source: ModelSource | None = None, *, replica_id: str | None = None
    ) -> None:
        self.project = project
        self.config = project.config.serving
        self.source: ModelSource = source or RegistrySource(project)
        self.replica_id = (
            replica_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.store = EndpointStore(project.db)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._versions: dict[tuple[str, int], ServedVersion] = {}
        self._loading: dict[tuple[str, int], asyncio.Task[ServedVersion]] = {}
        self._production: dict[str, int] = {}
        self._failed: dict[tuple[str, int], tuple[float, ModelUnavailable]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._labels: dict[tuple[str, str, int], _Labels] = {}
        self._canary_counts: dict[tuple[str, str, int], CanaryCounts] = {}
        self._canary_hist: dict[tuple[str, str, int], LatencyHistogram] = {}
        self._canary_dirty = False
        self._background: set[asyncio.Task[Any]] = set()
        self._reconciler: asyncio.Task[None] | None = None
        self._audit_id: int | None = None
        self._event_id = -1
        self.logger = PredictionLogger(
            project.config.offline_store_path,
            self.config.prediction_log_sample_rate,
            self.config.prediction_log_flush_seconds,
        )
        self.started_at: float | None = None
        self._preloaded = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start on the running loop (again, if an earlier loop is gone: e.g. a test client)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._reset()
        self._loop = loop
        if self.config.gil_switch_interval_us:
            # Worker threads hand results back through the GIL; at the default 5 ms switch
            # interval a busy event loop delays every batch by up to that much.
            sys.setswitchinterval(self.config.gil_switch_interval_us / 1e6)
        self._executor = ThreadPoolExecutor(
            self.config.worker_threads, thread_name_prefix="flywheel-infer"
        )
        self.logger.start()
        self.started_at = time.time()
        self._preloaded = asyncio.Event()
        await self._refresh_endpoints()
        self._reconciler = loop.create_task(self._reconcile_forever(), name="serving-reconciler")
        self._spawn(self._preload_production())

    async def _preload_production(self) -> None:
        """Load every production version (and endpoint version) before reporting ready."""
        try:
            staged = getattr(self.source, "staged", None)
            pairs = await asyncio.to_thread(staged, PRODUCTION) if staged is not None else []
            for name, version in pairs:
                try:
                    await self.get_version(name, version)
                    self._production.setdefault(name, version)
                except Exception as exc:
                    log.warning("cannot preload %s/%s: %s", name, version, exc)
            if self._loading:
                await asyncio.gather(*self._loading.values(), return_exceptions=True)
        except Exception as exc:
            log.warning("preloading production models failed: %s", exc)
        finally:
            self._preloaded.set()

    @property
    def ready(self) -> bool:
        """True once the production versions known at start are loaded and warm."""
        return self._preloaded.is_set()

    def _reset(self) -> None:
        self._versions.clear()
        self._loading.clear()
        self._failed.clear()
        self._production.clear()
        self._background.clear()
        self._event_id = -1
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def stop(self) -> None:
        """Stop reconciling, drain the batchers, flush canary stats and the prediction log."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
            self._reconciler = None
        for served in list(self._versions.values()):
            await served.batcher.close()
        for task in list(self._background):  # retirements, preloads, shadow mirrors
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._flush_canary_counts)
        await asyncio.to_thread(self.logger.close)
        self._reset()
        self._loop = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            raise ModelUnavailable("the inference server is not started")
        return self._executor

    # -- versions ----------------------------------------------------------------------------------

    def _load_sync(self, name: str, version: int) -> tuple[Any, LoadedRuntime]:
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
        )
        log.info(
            "serving %s/%s with %s on %s (loaded in %.2fs)",
            name, version, runtime.runtime, runtime.device, runtime.load_seconds,
        )  # fmt: skip
        return served

    async def get_version(self, name: str, version: int) -> ServedVersion:
        """The loaded version, loading and warming it first if needed (once, however many ask)."""
        key = (name, version)
        served = self._versions.get(key)
        if served is not None:
            return served
        await self.ensure_started()
        failed = self._failed.get(key)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name, version))
            self._loading[key] = task
        try:
            served = await asyncio.shield(task)
        except ModelUnavailable as exc:
            self._failed[key] = (time.monotonic() + LOAD_RETRY_SECONDS, exc)
            raise
        finally:
            if task.done():
                self._loading.pop(key, None)
        self._versions[key] = served
        return served

    async def production_version(self, name: str) -> ServedVersion:
        """The version of ``name`` in stage production (resolved once, then kept current)."""
        version = self._production.get(name)
        if version is None:
            await self.ensure_started()
            try:
                mv = await asyncio.to_thread(self.source.resolve, f"models:/{name}@{PRODUCTION}")
            except NotFoundError:
                raise UnknownModel(
                    f"no endpoint or model named {name!r} with a {PRODUCTION} version"
                ) from None
            version = int(mv.version)
            served = await self.get_version(name, version)
            self._production[name] = version
            return served
        return await self.get_version(name, version)

    async def target(
        self, name: str, version: str | None, key: str | None
    ) -> tuple[ServedVersion, Endpoint | None]:
        """The version that serves a request to ``name`` (and the endpoint, if ``name`` is one)."""
        if version is not None:
            number = (
                int(version) if version.isascii() and version.isdigit() and len(version) < 10 else 0
            )
            if number < 1:
                raise UnknownModel(f"version {version!r} of {name!r} is not a version number")
            endpoint = self._endpoints.get(name)
            model = endpoint.model if endpoint is not None else name
            if endpoint is not None and number not in endpoint.versions():
                raise UnknownModel(f"endpoint {name!r} does not serve version {number}")
            return await self.get_version(model, number), endpoint
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            chosen = endpoint.choose(key)
            try:
                return await self.get_version(endpoint.model, chosen), endpoint
            except ModelUnavailable:
                self._count_canary(endpoint, chosen, 503, 0.0)  # a candidate that cannot load
                raise
        return await self.production_version(name), None

    # -- the request path --------------------------------------------------------------------------

    def _labels_for(self, endpoint: str, served: ServedVersion) -> _Labels:
        key = (endpoint, served.name, served.version)
        labels = self._labels.get(key)
        if labels is None:
            v = str(served.version)
            labels = _Labels(
                latency=m.LATENCY.labels(endpoint, served.name, v),
                codes={},
                queue_full=m.REJECTED.labels(endpoint, served.name, v, "queue_full"),
                deadline=m.REJECTED.labels(endpoint, served.name, v, "deadline"),
            )
            self._labels[key] = labels
        return labels

    async def infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        header_length: int | None,
        *,
        routing_key: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> InferenceResult:
        """Answer one V2 inference request; never raises for a request-level problem."""
        start = time.perf_counter()
        served: ServedVersion | None = None
        caller_deadline = False
        endpoint: Endpoint | None = None
        request: Any = None
        outputs: Tensors = {}
        try:
            served, endpoint = await self.target(name, version, routing_key)
            batcher = served.batcher
            if batcher.depth >= batcher.policy.max_queue_size:
                batcher.reject_full()  # shed before paying for decoding
            request = decode_request(
                body, header_length, served.signature, model=name, allow_nan=served.allow_nan
            )
            if routing_key is None and endpoint is not None and "routing_key" in request.parameters:
                # The key may also come in the request's parameters; re-route if it does.
                served, endpoint = await self.target(
                    name, version, str(request.parameters["routing_key"])
                )
            if timeout_s is None and request.timeout_us is not None:
                timeout_s = request.timeout_us / 1e6
            caller_deadline = timeout_s is not None
            if timeout_s is None and self.config.request_timeout_ms is not None:
                timeout_s = self.config.request_timeout_ms / 1000
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            served.queue_gauge.set(served.batcher.depth)
            outputs = await served.batcher.submit(request.inputs, request.rows, deadline)
            response, hlen = encode_response(
                model_name=name,
                model_version=str(served.version),
                request_id=request.id or request_id,
                outputs=outputs,
                requested=request.outputs,
                binary_default=request.binary_output,
            )
            result = InferenceResult(200, response, hlen)
        except FlywheelError as exc:
            status = exc.status_code
            if status >= 500:
                log.warning("inference on %s failed: %s", name, exc)
            retry = getattr(exc, "retry_after", None) if status == 429 else None
            result = InferenceResult(status, _error_body(str(exc)), None, retry)
            request = None
            outputs = {}
        except Exception as exc:  # a bug, not a request problem: answer 500, keep serving
            log.exception("unexpected error serving %s", name)
            result = InferenceResult(500, _error_body(f"internal error ({type(exc).__name__})"))
            request = None
            outputs = {}
        elapsed = time.perf_counter() - start
        if served is not None:
            label = endpoint.name if endpoint is not None else name
            self._observe(label, served, result.status, elapsed)
            if endpoint is not None and not (result.status == 504 and caller_deadline):
                # A deadline the caller chose passing is the caller giving up, not a candidate
                # error (the server's own request_timeout_ms passing still counts).
                self._count_canary(endpoint, served.version, result.status, elapsed)
            if result.status == 200 and request is not None:
                self._after_success(label, endpoint, served, request, outputs, elapsed, request_id)
        return result

    def _observe(self, endpoint: str, served: ServedVersion, status: int, elapsed: float) -> None:
        labels = self._labels_for(endpoint, served)
        counter = labels.codes.get(status)
        if counter is None:
            counter = m.REQUESTS.labels(endpoint, served.name, str(served.version), str(status))
            labels.codes[status] = counter
        counter.inc()
        if status == 200:
            labels.latency.observe(elapsed)
        elif status == 429:
            labels.queue_full.inc()
        elif status == 504:
            labels.deadline.inc()

    def _count_canary(self, endpoint: Endpoint, version: int, status: int, elapsed: float) -> None:
        plan = endpoint.canary
        if plan is None or plan.state is not RolloutState.running or version != plan.candidate:
            return
        if 400 <= status < 500 and status != 429:
            return  # the client's fault, not the candidate's
        key = (endpoint.name, plan.rollout_id, plan.step)
        counts = self._canary_counts.get(key)
        if counts is None:
            counts = self._canary_counts[key] = CanaryCounts()
            self._canary_hist[key] = LatencyHistogram()
        counts.requests += 1
        if status >= 500:
            counts.errors += 1
        else:
            self._canary_hist[key].observe(elapsed * 1000)
        self._canary_dirty = True

    def _after_success(
        self,
        label: str,
        endpoint: Endpoint | None,
        served: ServedVersion,
        request: Any,
        outputs: Tensors,
        elapsed: float,
        request_id: str | None,
    ) -> None:
        shadow = endpoint.shadow if endpoint is not None else None
        log_it = self.logger.sampled()
        if shadow is None and not log_it:
            return
        rid = request.id or request_id or uuid.uuid4().hex
        if (
            shadow is not None
            and shadow.version != served.version
            and (shadow.share >= 1.0 or np.random.random() < shadow.share)
        ):
            task = asyncio.get_running_loop().create_task(
                self._run_shadow(
                    label, served, shadow.version, request.inputs, request.rows, outputs, rid
                )
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if log_it:
            self.logger.log(
                PredictionRecord(
                    request_id=rid,
                    ts=now_utc(),
                    endpoint=label,
                    model=served.name,
                    version=served.version,
                    kind="primary",
                    latency_ms=elapsed * 1000,
                    inputs=request.inputs,
                    outputs=outputs,
                    feature_names=served.feature_names,
                )
            )

    async def _run_shadow(
        self,
        label: str,
        primary: ServedVersion,
        version: int,
        inputs: Tensors,
        rows: int,
        primary_outputs: Tensors,
        request_id: str,
    ) -> None:
        """Mirror one request; every failure is recorded and swallowed (never reaches a client)."""
        start = time.perf_counter()
        v = str(version)
        try:
            shadow = await self.get_version(primary.name, version)
            wanted = {s.name for s in shadow.signature.inputs}
            if wanted != set(inputs):
                raise InvalidInput(f"shadow v{version} takes inputs {sorted(wanted)}")
            outputs = await shadow.batcher.submit(inputs, rows, time.monotonic() + 30.0)
        except Exception as exc:
            m.SHADOW_REQUESTS.labels(label, primary.name, v, "error").inc()
            log.info("shadow v%s of %s failed: %s", version, label, exc)
            return
        score = disagreement(primary_outputs, outputs)
        m.SHADOW_REQUESTS.labels(label, primary.name, v, "ok").inc()
        m.SHADOW_DISAGREEMENT.labels(label, primary.name, v).observe(score)
        self.logger.log(
            PredictionRecord(
                request_id=request_id,
                ts=now_utc(),
                endpoint=label,
                model=primary.name,
                version=primary.version,
                kind="shadow",
                latency_ms=(time.perf_counter() - start) * 1000,
                inputs=inputs,
                outputs=primary_outputs,
                feature_names=primary.feature_names,
                shadow_version=version,
                shadow_outputs=outputs,
                disagreement=score,
            )
        )

    # -- in-process prediction (no JSON) ---------------------------------------------------------

    async def predict(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        routing_key: str | None = None,
        timeout_s: float | None = None,
        version: int | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Run numpy ``inputs`` through the version that serves ``name``, in this process.

        Same path as HTTP inference without the JSON: the target is resolved the same way (an
        endpoint by ``routing_key``, else the model's production version, or ``version``), the
        inputs are checked against its signature (numeric inputs are cast within their kind,
        e.g. float64 to FP32), the request joins the version's dynamic batch, and the request
        metrics, canary counts, shadow mirror and prediction log are kept as for HTTP.

        Raises the ``ServingError`` HTTP would answer with (``UnknownModel``, ``InvalidInput``,
        ``QueueFull``, ``DeadlineExceeded``, ``InferenceFailed``, ``ModelUnavailable``).
        """
        start = time.perf_counter()
        served: ServedVersion | None = None
        caller_deadline = False
        endpoint: Endpoint | None = None
        request: InferenceRequest | None = None
        outputs: Tensors = {}
        status = 500
        try:
            await self.ensure_started()  # endpoints are known before the first target lookup
            served, endpoint = await self.target(
                name, None if version is None else str(version), routing_key
            )
            batcher = served.batcher
            if batcher.depth >= batcher.policy.max_queue_size:
                batcher.reject_full()
            request = _request_from_arrays(
                inputs, served.signature, model=name, allow_nan=served.allow_nan
            )
            request.id = request_id
            caller_deadline = timeout_s is not None
            if timeout_s is None and self.config.request_timeout_ms is not None:
                timeout_s = self.config.request_timeout_ms / 1000
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            served.queue_gauge.set(batcher.depth)
            outputs = await batcher.submit(request.inputs, request.rows, deadline)
            status = 200
        except asyncio.CancelledError:
            status = 0  # the caller gave up (predict_blocking's timeout): not the model's fault
            raise
        except FlywheelError as exc:
            status = exc.status_code
            if status >= 500:
                log.warning("prediction on %s failed: %s", name, exc)
            raise
        except Exception:
            log.exception("unexpected error predicting with %s", name)
            raise
        finally:
            if served is not None and status:
                label = endpoint.name if endpoint is not None else name
                elapsed = time.perf_counter() - start
                self._observe(label, served, status, elapsed)
                if endpoint is not None and not (status == 504 and caller_deadline):
                    self._count_canary(endpoint, served.version, status, elapsed)
                if status == 200 and request is not None:
                    self._after_success(
                        label, endpoint, served, request, outputs, elapsed, request_id
                    )
        return Prediction(outputs=outputs, model=served.name, version=served.version)

    def predict_blocking(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        routing_key: str | None = None,
        timeout_s: float | None = None,
        version: int | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """``predict`` from synchronous code in any thread except the server's event loop.

        Runs on the server's loop when it is running (``flywheel up``), else on a private loop
        in a background thread (started on first use; ``stop_blocking`` ends it). With
        ``timeout_s`` the call returns or raises ``DeadlineExceeded`` within that time, model
        loading included (a load that was started goes on in the background).
        """
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._private_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise ServingError(
                "predict_blocking() was called on the server's event loop; await predict()"
            )
        future = asyncio.run_coroutine_threadsafe(
            self.predict(
                name,
                inputs,
                routing_key=routing_key,
                timeout_s=timeout_s,
                version=version,
                request_id=request_id,
            ),
            loop,
        )
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(
                f"no prediction from {name!r} within {(timeout_s or 0.0) * 1000:.0f} ms"
            ) from None

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        """The loop ``predict_blocking`` uses when no server loop runs (one per server)."""
        with _PRIVATE_LOCK:
            held = _PRIVATE_LOOPS.get(self)
            if held is not None and held[0].is_running():
                return held[0]
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="flywheel-serving-loop", daemon=True)
            thread.start()
            ready.wait()
            _PRIVATE_LOOPS[self] = (loop, thread)
            return loop

    def stop_blocking(self, timeout_s: float = 30.0) -> None:
        """Stop the server and the private loop ``predict_blocking`` started (if any)."""
        with _PRIVATE_LOCK:
            held = _PRIVATE_LOOPS.pop(self, None)
        if held is None:
            return
        loop, thread = held
        if self._loop is loop:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=timeout_s)
        # Whatever is left there (a server that moved to another loop left its reconciler).
        asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout=timeout_s)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(
            timeout=timeout_s
        )
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        loop.close()

    # -- metadata ----------------------------------------------------------------------------------

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        served, endpoint = await self.target(name, version, None)
        extra: dict[str, Any] = {}
        if endpoint is not None:
            extra["endpoint"] = endpoint.name
            extra["routes"] = [
                {"version": r.version, "weight": r.weight} for r in endpoint.effective_routes()
            ]
            if endpoint.canary is not None:
                extra["canary"] = endpoint.canary.to_dict()
            meta = served.metadata(public_name=name, extra=extra)
            meta["versions"] = [str(v) for v in sorted(endpoint.versions())]
            return meta
        if version is None:
            extra["stage"] = PRODUCTION
        return served.metadata(public_name=name, extra=extra)

    def endpoint_names(self) -> list[str]:
        return sorted(self._endpoints)

    def loaded(self) -> list[dict[str, Any]]:
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

    # -- reconciling -------------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        interval = self.config.poll_interval_ms / 1000
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("serving reconciler: %s", exc)
            await asyncio.sleep(interval)

    async def reconcile_once(self) -> None:
        """One pass: stages, endpoints, canaries (see the module docstring)."""
        for step in (self._refresh_stages, self._refresh_endpoints, self._drive_canaries):
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one failing source must not stop the others
                log.warning("serving reconciler (%s): %s", step.__name__, exc)

    async def _refresh_stages(self) -> None:
        since = self._audit_id if self._audit_id is not None else 0
        entries = await asyncio.to_thread(self.source.audit_log, since)
        if not entries:
            if self._audit_id is None:
                self._audit_id = 0
            return
        self._audit_id = max(int(e.id) for e in entries)
        if since == 0 and not self._production:
            return
        changed = {e.model for e in entries if e.model in self._production}
        for name in changed:
            try:
                mv = await asyncio.to_thread(self.source.resolve, f"models:/{name}@{PRODUCTION}")
            except NotFoundError:
                self._production.pop(name, None)
                log.info("model %s has no %s version any more", name, PRODUCTION)
                continue
            new = int(mv.version)
            if self._production.get(name) != new:
                await self.get_version(name, new)  # load and warm before switching
                old = self._production.get(name)
                self._production[name] = new
                log.info("model %s: %s is now v%s (was v%s)", name, PRODUCTION, new, old)
                if old is not None:
                    self._retire_later((name, old))

    def _in_use(self, key: tuple[str, int]) -> bool:
        name, version = key
        if self._production.get(name) == version:
            return True
        return any(ep.model == name and version in ep.versions() for ep in self._endpoints.values())

    def _retire_later(self, key: tuple[str, int]) -> None:
        async def retire() -> None:
            await asyncio.sleep(5.0)
            served = self._versions.get(key)
            if served is not None and not self._in_use(key):
                self._versions.pop(key, None)
                await served.batcher.close()

        task = asyncio.get_running_loop().create_task(retire())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_endpoints(self) -> None:
        last = await asyncio.to_thread(self.store.last_event_id)
        if last == self._event_id:
            return
        endpoints = await asyncio.to_thread(self.store.list)
        previous = self._endpoints
        self._endpoints = {ep.name: ep for ep in endpoints}
        self._event_id = last
        for ep in endpoints:
            plan = ep.canary
            if plan is not None:
                m.CANARY_STEP.labels(ep.name, ep.model, str(plan.candidate)).set(plan.weight)
            for version in ep.versions():
                if (ep.model, version) not in self._versions:
                    self._spawn(self._preload(ep.model, version))
        for name, ep in previous.items():
            for version in ep.versions():
                if not self._in_use((ep.model, version)):
                    self._retire_later((ep.model, version))
            if name not in self._endpoints:
                log.info("endpoint %s removed", name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _preload(self, model: str, version: int) -> None:
        try:
            await self.get_version(model, version)
        except Exception as exc:
            log.warning("cannot preload %s/%s: %s", model, version, exc)

    def _flush_canary_counts(self) -> None:
        counts = {
            key: CanaryCounts(c.requests, c.errors, list(self._canary_hist[key].counts))
            for key, c in self._canary_counts.items()
        }
        self.store.flush_canary_counts(self.replica_id, counts)

    async def _drive_canaries(self) -> None:
        if self._canary_dirty:
            self._canary_dirty = False
            await asyncio.to_thread(self._flush_canary_counts)
        for ep in list(self._endpoints.values()):
            plan = ep.canary
            if plan is None or plan.state is not RolloutState.running:
                continue
            requests, errors, hists = await asyncio.to_thread(
                self.store.canary_totals, ep.name, plan.rollout_id, plan.step
            )
            latency = LatencyHistogram()
            for counts in hists:
                latency.merge(LatencyHistogram(counts))
            decision = evaluate(plan, GateStats(requests, errors, latency))
            if decision.action is Action.hold:
                continue
            new_plan = apply(plan, decision)
            routes = ep.routes
            if new_plan.state is RolloutState.succeeded:
                from flywheel.serving._endpoints import Route

                routes = (Route(plan.candidate, 100.0),)
            elif new_plan.state is RolloutState.rolled_back:
                from flywheel.serving._endpoints import Route

                routes = (Route(plan.baseline, 100.0),)
            updated = replace(ep, routes=routes, canary=new_plan)
            try:
                await asyncio.to_thread(
                    self.store.put,
                    updated,
                    kind=f"canary_{decision.action.value}",
                    actor=f"canary@{self.replica_id}",
                    expect_revision=ep.revision,
                    detail={"reason": decision.reason},
                )
            except EndpointConflict:
                continue  # another replica moved it first
            log.info("endpoint %s: canary %s: %s", ep.name, decision.action.value, decision.reason)
        # Refresh now so that this replica routes by the new state without waiting a tick.
        await self._refresh_endpoints()


def disagreement(a: Tensors, b: Tensors) -> float:
    """How much two sets of outputs differ, in [0, 1] for labels (share differing)."""
    worst = 0.0
    for name, x in a.items():
        if name not in b:
            continue
        x, y = np.asarray(x), np.asarray(b[name])
        if x.shape != y.shape:
            return 1.0
        if x.size == 0:
            continue
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            scale = float(np.mean(np.abs(xf))) + 1e-12
            worst = max(worst, min(1.0, float(np.mean(np.abs(xf - yf))) / scale))
        else:
            worst = max(worst, float(np.mean(x != y)))
    return worst


async def _cancel_other_tasks() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _request_from_arrays(
    inputs: Mapping[str, np.ndarray], signature: Any, *, model: str, allow_nan: bool
) -> InferenceRequest:
    """Check in-process inputs against ``signature`` the way ``decode_request`` checks V2 ones."""
    specs = {s.name: s for s in signature.inputs}
    arrays: dict[str, np.ndarray] = {}
    for key, value in inputs.items():
        where = f"input {key!r}"
        spec = specs.get(key)
        if spec is None:
            raise InvalidInput(
                f"{where} is not an input of {model!r}; its inputs are {_names(specs)}"
            )
        arr = np.asarray(value)
        target = V2_DTYPES[spec.datatype]
        if arr.dtype != target:
            if arr.dtype.kind in "USO" or target.kind == "O":
                same = arr.dtype.kind in "USO" and target.kind == "O"
            else:
                same = np.can_cast(arr.dtype, target, casting="same_kind")
            if not same:
                given = datatype_of(arr)
                raise InvalidInput(
                    f"{where}: datatype {given} given; {model!r} expects {spec.datatype}"
                )
            arr = arr.astype(target)
        _check_shape(tuple(arr.shape), spec, where)
        if not allow_nan and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            raise InvalidInput(f"{where} contains NaN or infinity, which {model!r} does not accept")
        arrays[key] = arr
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing; {model!r} needs {_names(specs)}")
    return InferenceRequest(inputs=arrays, rows=_batch_rows(arrays, signature))


def _error_body(message: str) -> bytes:
    import orjson

    return orjson.dumps({"error": message})


_SERVERS: weakref.WeakKeyDictionary[Project, InferenceServer] = weakref.WeakKeyDictionary()
# predict_blocking's private event loops (and their threads), for servers not run by an app.
_PRIVATE_LOOPS: weakref.WeakKeyDictionary[
    InferenceServer, tuple[asyncio.AbstractEventLoop, threading.Thread]
] = weakref.WeakKeyDictionary()
_PRIVATE_LOCK = threading.Lock()


def server_for(project: Project, source: ModelSource | None = None) -> InferenceServer:
    """The process's ``InferenceServer`` for ``project`` (created on first use).

    Passing ``source`` replaces the model source (tests and embedding applications).
    """
    server = _SERVERS.get(project)
    if server is None:
        server = InferenceServer(project, source)
        _SERVERS[project] = server
    elif source is not None:
        server.source = source
    return server


@contextlib.asynccontextmanager
async def serving_service(project: Project) -> AsyncIterator[InferenceServer]:
    """``SYSTEM_SERVICES`` entry: start the reconciler with the app, drain and flush at exit."""
    server = server_for(project)
    await server.ensure_started()
    try:
        yield server
    finally:
        await server.stop()


__all__ = [
    "InferenceResult",
    "InferenceServer",
    "Prediction",
    "ServedVersion",
    "disagreement",
    "parse_timeout_header",
    "server_for",
    "serving_service",
]
