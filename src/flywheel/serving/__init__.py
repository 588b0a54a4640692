"""Model serving: Open Inference Protocol (V2) REST, dynamic batching, endpoints, monitoring.

Public API::

    server_for(project) -> InferenceServer       # the process's server (started by the app)
    server.predict / predict_blocking -> Prediction   # in-process inference (numpy, no JSON)
    serving_service(project)                      # SYSTEM_SERVICES entry (reconciler lifetime)
    flywheel.serving._api:router                  # SYSTEM_ROUTERS entry (/v2/..., /serving/...)
    deploy / set_routes / set_shadow / rollback   # endpoint operations (CLI and HTTP use them)
    drift_report(project, endpoint, window="1h")  # PSI / chi-square / KS against the reference
    encode_request / decode_response              # V2 tensors for clients and benchmarks
    with_inference_fast_path(app)                 # V2 inference bypasses framework middleware

Errors: see ``flywheel.serving._errors`` (``ServingError`` and below).
"""

from flywheel.serving._asgi import with_inference_fast_path
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from flywheel.serving._canary import CanaryPlan, LatencyHistogram, RolloutState
from flywheel.serving._codec import (
    InferenceRequest,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from flywheel.serving._control import deploy, describe, rollback, set_routes, set_shadow
from flywheel.serving._drift import DriftReport, FeatureDrift, alert, drift_report, psi
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
from flywheel.serving._prediction_log import PredictionLogger
from flywheel.serving._runtime import ModelSource, RegistrySource, load_runtime
from flywheel.serving._server import InferenceServer, Prediction, server_for, serving_service

__all__ = [
    "BatchingPolicy",
    "CanaryPlan",
    "DeadlineExceeded",
    "DriftReport",
    "DynamicBatcher",
    "Endpoint",
    "EndpointConflict",
    "EndpointStore",
    "FeatureDrift",
    "InferenceFailed",
    "InferenceRequest",
    "InferenceServer",
    "InvalidInput",
    "LatencyHistogram",
    "ModelSource",
    "ModelUnavailable",
    "PayloadTooLarge",
    "Prediction",
    "PredictionLogger",
    "QueueFull",
    "RegistrySource",
    "RolloutState",
    "Route",
    "ServingError",
    "Shadow",
    "UnknownModel",
    "alert",
    "decode_request",
    "decode_response",
    "deploy",
    "describe",
    "drift_report",
    "encode_request",
    "encode_response",
    "load_runtime",
    "psi",
    "rollback",
    "server_for",
    "serving_service",
    "set_routes",
    "set_shadow",
    "with_inference_fast_path",
]
