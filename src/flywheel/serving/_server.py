"""The inference server of one process: a small composition of four parts.

* ``VersionPool`` (``_pool``): the loaded versions — load once, warm, batch, retire, device;
* ``Reconciler`` (``_reconciler``): which version serves which name — stages, endpoints,
  canaries — kept current by polling the stores every ``serving.poll_interval_ms``;
* ``RequestPath`` (``_request``): one request from arrival to answer, over HTTP (``infer``) or
  in process (``predict``), with metrics, canary counts, shadows and the prediction log;
* ``BlockingBridge`` (``_bridge``): ``predict_blocking`` for synchronous callers in any thread.

``InferenceServer`` starts them on the running loop (again, when a test client's loop is gone)
and stops them. The server of a project is kept on the project (``server_for``), which the app
keeps on its state: there is no module-level registry of servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np

from flywheel.project import Project
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._bridge import BlockingBridge
from flywheel.serving._endpoints import Endpoint, EndpointStore
from flywheel.serving._heap import freeze_heap
from flywheel.serving._pool import ServedVersion, VersionPool
from flywheel.serving._prediction_log import PredictionLogger
from flywheel.serving._reconciler import PRODUCTION, Reconciler
from flywheel.serving._request import (
    InferenceResult,
    Prediction,
    RequestPath,
    disagreement,
    parse_timeout_header,
)
from flywheel.serving._runtime import ModelSource, RegistrySource

log = logging.getLogger("flywheel.serving")


class InferenceServer:
    """Everything one server process needs to serve models (see the module docstring)."""

    def __init__(
        self, project: Project, source: ModelSource | None = None, *, replica_id: str | None = None
    ) -> None:
        self.project = project
        self.config = project.config.serving
        self.replica_id = (
            replica_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.store = EndpointStore(project.db)
        self.logger = PredictionLogger(
            project.config.offline_store_path,
            self.config.prediction_log_sample_rate,
            self.config.prediction_log_flush_seconds,
        )
        self.background = BackgroundTasks()
        src: ModelSource = source or RegistrySource(project)
        self.pool = VersionPool(src, self.config, self.background, self.ensure_started)
        self.routes = Reconciler(
            self.pool, src, self.store, replica_id=self.replica_id, background=self.background
        )
        self.requests = RequestPath(
            self.routes, self.pool, self.logger, self.config, self.background, self.ensure_started
        )
        self.bridge = BlockingBridge(lambda: self._loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._preloaded = asyncio.Event()
        self.started_at: float | None = None
        # Set by the app a server process runs (``flywheel.api.create_server_app``): the loaded
        # models' objects then leave the garbage collector's full passes (``_heap``). An app
        # embedded in another process (a test, a notebook) leaves that process's heap alone.
        self.owns_process = False

    @property
    def source(self) -> ModelSource:
        """Where versions come from (the registry; tests and embedders may replace it)."""
        return self.pool.source

    @source.setter
    def source(self, source: ModelSource) -> None:
        self.pool.source = source
        self.routes.source = source

    # -- lifecycle ---------------------------------------------------------------------------

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
        self.pool.start()
        self.logger.start()
        self.started_at = time.time()
        self._preloaded = asyncio.Event()
        await self.routes.refresh_endpoints()
        interval = self.config.poll_interval_ms / 1000
        self._reconciler = loop.create_task(
            self.routes.run_forever(interval), name="serving-reconciler"
        )
        self.background.spawn(self._preload_production())

    async def _preload_production(self) -> None:
        """Load every production version (and endpoint version) before reporting ready."""
        try:
            await self.routes.preload_production()
            loading = self.pool.loading
            if loading:
                await asyncio.gather(*loading, return_exceptions=True)
        except Exception as exc:
            log.warning("preloading production models failed: %s", exc)
        finally:
            if self.owns_process:
                freeze_heap(collect=True)  # before ready: the full collection costs no request
                self.pool.freeze_after_load = True
            self._preloaded.set()

    @property
    def ready(self) -> bool:
        """True once the production versions known at start are loaded and warm."""
        return self._preloaded.is_set()

    def _reset(self) -> None:
        self.pool.reset()
        self.routes.reset()
        self.background.forget()

    async def stop(self) -> None:
        """Stop reconciling, drain the batchers, flush canary stats and the prediction log."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
            self._reconciler = None
        await self.pool.close()
        await self.background.cancel_all()  # retirements, preloads, shadow mirrors
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.routes.flush_canary_counts)
        await asyncio.to_thread(self.logger.close)
        self._reset()
        self._loop = None

    # -- versions and routing ----------------------------------------------------------------

    async def get_version(self, name: str, version: int) -> ServedVersion:
        """The loaded version, loading and warming it first if needed (once, however many ask)."""
        return await self.pool.get_version(name, version)

    async def production_version(self, name: str) -> ServedVersion:
        """The version of ``name`` in stage production (resolved once, then kept current)."""
        return await self.routes.production_version(name)

    async def target(
        self, name: str, version: str | None, key: str | None
    ) -> tuple[ServedVersion, Endpoint | None]:
        """The version that serves a request to ``name`` (and the endpoint, if ``name`` is one)."""
        return await self.routes.target(name, version, key)

    async def reconcile_once(self) -> None:
        """One reconciler pass: stages, endpoints, canaries."""
        await self.routes.reconcile_once()

    def loaded(self) -> list[dict[str, Any]]:
        """What this process has loaded (model, version, runtime, device, queue, batches)."""
        return self.pool.loaded()

    # -- requests ----------------------------------------------------------------------------

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
        """Answer one V2 inference request (``RequestPath.infer``); never raises for a
        request-level problem."""
        return await self.requests.infer(
            name,
            version,
            body,
            header_length,
            routing_key=routing_key,
            timeout_s=timeout_s,
            request_id=request_id,
        )

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
        """Run numpy ``inputs`` through the version that serves ``name``, in this process
        (``RequestPath.predict``: the same routing, checks, batching and records as HTTP)."""
        return await self.requests.predict(
            name,
            inputs,
            routing_key=routing_key,
            timeout_s=timeout_s,
            version=version,
            request_id=request_id,
        )

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
        coro = self.predict(
            name,
            inputs,
            routing_key=routing_key,
            timeout_s=timeout_s,
            version=version,
            request_id=request_id,
        )
        return self.bridge.call(coro, timeout_s=timeout_s, what=name)

    def stop_blocking(self, timeout_s: float = 30.0) -> None:
        """Stop the server and the private loop ``predict_blocking`` started (if any)."""
        self.bridge.close(self.stop, timeout_s)

    # -- metadata ----------------------------------------------------------------------------

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """V2 model metadata of ``name`` (an endpoint or a model), with routes and canary."""
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


def server_for(project: Project, source: ModelSource | None = None) -> InferenceServer:
    """The ``InferenceServer`` of ``project`` in this process (created on first use, kept on
    the project).

    Passing ``source`` replaces the model source (tests and embedding applications).
    """
    server = project.attached("serving.server", lambda: InferenceServer(project, source))
    if source is not None and server.source is not source:
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
