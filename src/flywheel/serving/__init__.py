"""Model serving: Open Inference Protocol (V2) REST, dynamic batching, endpoints, monitoring.

Public API::

    server_for(project) -> InferenceServer       # the project's server (started by the app)
    server.predict / predict_blocking -> Prediction   # in-process inference (numpy, no JSON)
    serving_service(project)                      # SYSTEM_SERVICES entry (reconciler lifetime)
    flywheel.serving._api:router                  # SYSTEM_ROUTERS entry (/v2/..., /serving/...)
    deploy / set_routes / set_shadow / rollback / pause / resume / describe   # endpoint ops
    EndpointStore, Endpoint, Route, Shadow, CanaryPlan, RolloutState   # what they store
    drift_report(project, endpoint, window="1h") -> DriftReport   # PSI / chi-square / KS
    alert(report)                                 # the drift webhook
    traffic_history(project, endpoint, since=, until=)   # logged requests, p99 per version
    encode_request / decode_response              # V2 tensors for clients and benchmarks
    with_inference_fast_path(app)                 # V2 inference bypasses framework middleware
    ModelSource                                   # the seam to the registry (tests may fake it)

Errors: ``ServingError`` and below (``flywheel.serving._errors``).
"""

from flywheel.serving._asgi import with_inference_fast_path
from flywheel.serving._canary import CanaryPlan, RolloutState
from flywheel.serving._codec import decode_response, encode_request
from flywheel.serving._control import (
    deploy,
    describe,
    pause,
    resume,
    rollback,
    set_routes,
    set_shadow,
)
from flywheel.serving._drift import DriftReport, FeatureDrift, alert, drift_report
from flywheel.serving._endpoints import Endpoint, EndpointStore, Route, Shadow
from flywheel.serving._errors import (
    DeadlineExceeded,
    EndpointConflict,
    InferenceFailed,
    InvalidInput,
    ModelUnavailable,
    PayloadTooLarge,
    QueueFull,
    ServingError,
    UnknownModel,
)
from flywheel.serving._history import traffic_history
from flywheel.serving._runtime import ModelSource
from flywheel.serving._server import InferenceServer, Prediction, server_for, serving_service
from flywheel.serving._threads import limit_native_threads

__all__ = [
    "CanaryPlan",
    "DeadlineExceeded",
    "DriftReport",
    "Endpoint",
    "EndpointConflict",
    "EndpointStore",
    "FeatureDrift",
    "InferenceFailed",
    "InferenceServer",
    "InvalidInput",
    "ModelSource",
    "ModelUnavailable",
    "PayloadTooLarge",
    "Prediction",
    "QueueFull",
    "RolloutState",
    "Route",
    "ServingError",
    "Shadow",
    "UnknownModel",
    "alert",
    "decode_response",
    "deploy",
    "describe",
    "drift_report",
    "encode_request",
    "limit_native_threads",
    "pause",
    "resume",
    "rollback",
    "server_for",
    "serving_service",
    "set_routes",
    "set_shadow",
    "traffic_history",
    "with_inference_fast_path",
]
