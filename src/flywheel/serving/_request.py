"""The request path: one inference request from arrival to answer, over HTTP or in process.

``RequestPath.infer`` is the hot path of V2 HTTP inference: resolve the target through the
reconciler's routing state (named endpoint -> a version by split/canary; a model's name -> its
``production`` version; ``/versions/V`` -> that version), decode and validate the request against
the version's signature, queue it on the version's ``DynamicBatcher``, encode the answer. No
database query happens on this path. ``predict`` is the same without the JSON (numpy in, numpy
out). Both keep the request metrics and the canary counts, mirror to a shadow version and sample
into the prediction log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from opentelemetry.trace import SpanKind

from flywheel import telemetry
from flywheel.config import ServingConfig
from flywheel.errors import FlywheelError
from flywheel.serving import _metrics as m
from flywheel.serving._admission import LoopLoad
from flywheel.serving._background import BackgroundTasks
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
from flywheel.serving._endpoints import Endpoint
from flywheel.serving._errors import DeadlineExceeded, InvalidInput, QueueFull
from flywheel.serving._pool import ServedVersion, VersionPool
from flywheel.serving._prediction_log import PredictionLogger, PredictionRecord, now_utc
from flywheel.serving._reconciler import Reconciler
from flywheel.serving._types import Tensors

log = logging.getLogger("flywheel.serving")

_TIMEOUT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
SHADOW_TIMEOUT_S = 30.0


def parse_timeout_header(value: str, *, header: str = "timeout", bare: str = "us") -> float:
    """A timeout header in seconds: ``"250ms"``, ``"2s"``, ``"500us"``; a bare number is in
    ``bare`` units (microseconds for V2's ``timeout``, seconds for ``X-Request-Timeout``)."""
    match = _TIMEOUT_RE.match(value)
    if not match:
        raise InvalidInput(f"header {header!r} {value!r} must look like 250ms, 2s or 500us")
    number, unit = float(match.group(1)), match.group(2) or bare
    return number * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def _check_late(deadline: float | None, name: str) -> None:
    """Raise ``DeadlineExceeded`` if ``deadline`` has passed: an answer is never sent late."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"model {name!r}: the request's deadline passed")


def _inference_span(served: ServedVersion, endpoint: Endpoint | None, rows: int) -> Any:
    """One span per model inference (queue wait + batched run), a child of the caller's span;
    a shared no-op while tracing is off."""
    return telemetry.span(
        f"predict {served.name}",
        kind=SpanKind.INTERNAL,
        **{
            "flywheel.model": served.name,
            "flywheel.model.version": served.version,
            "flywheel.model.flavor": served.mv.flavor,
            "flywheel.endpoint": endpoint.name if endpoint is not None else None,
            "flywheel.rows": rows,
        },
    )


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


@dataclass(slots=True)
class _Labels:
    latency: Any
    codes: dict[int, Any]
    queue_full: Any
    expected_wait: Any
    deadline: Any


class RequestPath:
    """Answers requests with the reconciler's routes and the pool's versions (see the module
    docstring). ``predict`` awaits ``started`` first (the server starts on first use, so that
    endpoints are known before the first lookup); V2 requests reach a started server.
    """

    def __init__(
        self,
        routes: Reconciler,
        pool: VersionPool,
        logger: PredictionLogger,
        config: ServingConfig,
        background: BackgroundTasks,
        started: Callable[[], Awaitable[None]],
    ) -> None:
        self.routes = routes
        self.pool = pool
        self.logger = logger
        self.config = config
        self.background = background
        self._started = started
        self._labels: dict[tuple[str, str, int], _Labels] = {}

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
        arrived = time.monotonic()
        reason: str | None = None
        load: LoopLoad | None = None  # the admitted request's version's load, once admitted
        token = 0
        try:
            served, endpoint = await self.routes.target(name, version, routing_key)
            routed = time.monotonic()
            # Shed before paying for decoding: a full queue, or a wait beyond the deadline.
            first = self._deadline(served, arrived, routed, timeout_s)
            # A deadline the caller chose is kept with headroom (see ``admit``); the server's own
            # (SLO or request_timeout_ms, a backstop of a second) is spent in full, as before.
            headroom = self.config.admission_headroom if timeout_s is not None else 1.0
            served.batcher.admit(1, first, headroom=headroom)
            load = served.batcher.load
            token = load.started()
            request = decode_request(
                body, header_length, served.signature, model=name, allow_nan=served.allow_nan
            )
            if routing_key is None and endpoint is not None and "routing_key" in request.parameters:
                # The key may also come in the request's parameters; re-route if it does.
                served, endpoint = await self.routes.target(
                    name, version, str(request.parameters["routing_key"])
                )
            if timeout_s is None and request.timeout_us is not None:
                timeout_s = request.timeout_us / 1e6
            caller_deadline = timeout_s is not None
            deadline = self._deadline(served, arrived, routed, timeout_s)
            served.queue_gauge.set(served.batcher.depth)
            with _inference_span(served, endpoint, request.rows):
                outputs = await served.batcher.submit(request.inputs, request.rows, deadline)
            response, hlen = encode_response(
                model_name=name,
                model_version=str(served.version),
                request_id=request.id or request_id,
                outputs=outputs,
                requested=request.outputs,
                binary_default=request.binary_output,
            )
            _check_late(deadline, name)
            result = InferenceResult(200, response, hlen)
        except FlywheelError as exc:
            status = exc.status_code
            reason = exc.reason if isinstance(exc, QueueFull) else None
            if status >= 500 and status != 504:  # a passed deadline is counted, not logged
                log.warning("inference on %s failed: %s", name, exc)
            retry = getattr(exc, "retry_after", None) if status == 429 else None
            result = InferenceResult(status, error_body(str(exc)), None, retry)
            request = None
            outputs = {}
        except Exception as exc:  # a bug, not a request problem: answer 500, keep serving
            log.exception("unexpected error serving %s", name)
            result = InferenceResult(500, error_body(f"internal error ({type(exc).__name__})"))
            request = None
            outputs = {}
        finally:
            if load is not None:
                load.finished(token)
        elapsed = time.perf_counter() - start
        if served is not None:
            self._account(
                name, endpoint, served, result.status, elapsed, caller_deadline,
                request, outputs, request_id, reason,
            )  # fmt: skip
        return result

    def _deadline(
        self, served: ServedVersion, arrived: float, routed: float, timeout_s: float | None
    ) -> float | None:
        """When the request stops wanting its answer (``time.monotonic()``): the caller's timeout
        from its arrival; else the version's SLO (``config["slo_ms"]``), else
        ``serving.request_timeout_ms``, from when the version was ready for it (``routed``: a
        cold load is not held against the server's own deadline)."""
        if timeout_s is not None:
            return arrived + timeout_s
        slo = served.slo_s
        if slo is None and self.config.request_timeout_ms is not None:
            slo = self.config.request_timeout_ms / 1000
        return None if slo is None else routed + slo

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
        arrived = time.monotonic()
        reason: str | None = None
        load: LoopLoad | None = None  # the admitted request's version's load, once admitted
        token = 0
        try:
            await self._started()  # endpoints are known before the first target lookup
            served, endpoint = await self.routes.target(
                name, None if version is None else str(version), routing_key
            )
            batcher = served.batcher
            deadline = self._deadline(served, arrived, time.monotonic(), timeout_s)
            batcher.admit(1, deadline)
            load = batcher.load
            token = load.started()
            request = request_from_arrays(
                inputs, served.signature, model=name, allow_nan=served.allow_nan
            )
            request.id = request_id
            caller_deadline = timeout_s is not None
            served.queue_gauge.set(batcher.depth)
            with _inference_span(served, endpoint, request.rows):
                outputs = await batcher.submit(request.inputs, request.rows, deadline)
            _check_late(deadline, name)
            status = 200
        except asyncio.CancelledError:
            status = 0  # the caller gave up (predict_blocking's timeout): not the model's fault
            raise
        except FlywheelError as exc:
            status = exc.status_code
            reason = exc.reason if isinstance(exc, QueueFull) else None
            if status >= 500 and status != 504:
                log.warning("prediction on %s failed: %s", name, exc)
            raise
        except Exception:
            log.exception("unexpected error predicting with %s", name)
            raise
        finally:
            if load is not None:
                load.finished(token)
            if served is not None and status:
                self._account(
                    name, endpoint, served, status, time.perf_counter() - start,
                    caller_deadline, request, outputs, request_id, reason,
                )  # fmt: skip
        return Prediction(outputs=outputs, model=served.name, version=served.version)

    # -- after the answer ------------------------------------------------------------------------

    def _account(
        self,
        name: str,
        endpoint: Endpoint | None,
        served: ServedVersion,
        status: int,
        elapsed: float,
        caller_deadline: bool,
        request: Any,
        outputs: Tensors,
        request_id: str | None,
        reason: str | None = None,
    ) -> None:
        label = endpoint.name if endpoint is not None else name
        self._observe(label, served, status, elapsed, reason)
        if endpoint is not None and status != 429 and not (status == 504 and caller_deadline):
            # A deadline the caller chose passing is the caller giving up, not a candidate
            # error (the server's own request_timeout_ms passing still counts); a request shed
            # with 429 never ran, so it says nothing about the version either way.
            self.routes.count_canary(endpoint, served.version, status, elapsed)
        if status == 200 and request is not None:
            self._after_success(label, endpoint, served, request, outputs, elapsed, request_id)

    def _labels_for(self, endpoint: str, served: ServedVersion) -> _Labels:
        key = (endpoint, served.name, served.version)
        labels = self._labels.get(key)
        if labels is None:
            v = str(served.version)
            labels = _Labels(
                latency=m.LATENCY.labels(endpoint, served.name, v),
                codes={},
                queue_full=m.REJECTED.labels(endpoint, served.name, v, "queue_full"),
                expected_wait=m.REJECTED.labels(endpoint, served.name, v, "expected_wait"),
                deadline=m.REJECTED.labels(endpoint, served.name, v, "deadline"),
            )
            self._labels[key] = labels
        return labels

    def _observe(
        self,
        endpoint: str,
        served: ServedVersion,
        status: int,
        elapsed: float,
        reason: str | None = None,
    ) -> None:
        labels = self._labels_for(endpoint, served)
        counter = labels.codes.get(status)
        if counter is None:
            counter = m.REQUESTS.labels(endpoint, served.name, str(served.version), str(status))
            labels.codes[status] = counter
        counter.inc()
        if status == 200:
            labels.latency.observe(elapsed)
        elif status == 429:
            (labels.expected_wait if reason == "expected_wait" else labels.queue_full).inc()
        elif status == 504:
            labels.deadline.inc()

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
            self.background.spawn(
                self._run_shadow(
                    label, served, shadow.version, request.inputs, request.rows, outputs, rid
                )
            )
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
            shadow = await self.pool.get_version(primary.name, version)
            wanted = {s.name for s in shadow.signature.inputs}
            if wanted != set(inputs):
                raise InvalidInput(f"shadow v{version} takes inputs {sorted(wanted)}")
            outputs = await shadow.batcher.submit(inputs, rows, time.monotonic() + SHADOW_TIMEOUT_S)
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


def request_from_arrays(
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


def error_body(message: str) -> bytes:
    """The JSON error body every serving error answers with."""
    return orjson.dumps({"error": message})


__all__ = [
    "InferenceResult",
    "Prediction",
    "RequestPath",
    "disagreement",
    "error_body",
    "parse_timeout_header",
    "request_from_arrays",
]
