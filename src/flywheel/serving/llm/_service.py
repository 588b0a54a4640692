"""``LLMService``: which loaded chat backend answers a ``/v1`` request, and what it records.

The ``model`` field of a request names:

* an **endpoint** (``flywheel serve endpoints``): its traffic split, sticky routing (by the
  request's ``user`` or an ``x-routing-key`` header) and canary apply as for ``/v2``: the
  version is chosen by ``InferenceServer.target``, and each request counts toward the canary
  gate (a 5xx or a failed stream is an error; a client's 4xx is not);
* a **model name**: its ``production`` version (kept current by the serving reconciler);
* ``name@stage`` (any stage or alias), or a URI ``models:/name/3`` / ``models:/name@stage``.

The chosen version's files are fetched verified (``Registry.materialize``) and loaded once per
process into a ``ChatBackend`` through ``CHAT_BACKENDS`` (flavor -> loader). A backend no longer
served (a finished rollout, a new production version) is closed once idle. Engine gauges are
refreshed every ``REFRESH_SECONDS``.

Prompt/response logging: a version registered with ``config={"log_prompts": true}`` has its
sampled requests (``serving.prediction_log_sample_rate``) written to the prediction log
(``prompt`` and ``completion`` columns), each passed through the version's redaction hook first
(``config["redact"]``: ``"builtin"`` masks e-mail addresses and runs of 6+ digits, or a
``"module:function"`` taking and returning a string).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel._plugins import load_target
from flywheel.errors import NotFoundError
from flywheel.project import Project
from flywheel.serving._errors import ModelUnavailable, UnknownModel
from flywheel.serving._once import LoadOnce
from flywheel.serving._prediction_log import PredictionRecord, now_utc
from flywheel.serving._server import InferenceServer, ServedVersion, server_for
from flywheel.serving.llm._backend import ChatBackend, backend_loader
from flywheel.serving.llm._metrics import REFRESH_SECONDS, EngineGauges

log = logging.getLogger("flywheel.serving.llm")
IDLE_CLOSE_SECONDS = 30.0
LOAD_RETRY_SECONDS = 2.0  # a version whose backend failed to load is not retried sooner
_URI_RE = re.compile(
    r"^(models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,199})(?:@(?P<stage>"
    r"[a-z][a-z0-9_-]{0,63})|/(?P<version>[0-9]{1,9}))?$"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_DIGITS = re.compile(r"\d{6,}")


def builtin_redact(text: str) -> str:
    """Mask e-mail addresses and runs of six or more digits (phone, card, account numbers)."""
    return _DIGITS.sub("[number]", _EMAIL.sub("[email]", text))


class NotAChatModel(ValueError):
    """The named version is a model of another flavor (served by ``/v2``, not ``/v1``)."""


@dataclass
class LoadedChat:
    """A version's chat backend, with its metric children and what constrained decoding needs."""

    model: str
    version: int
    mv: Any
    backend: ChatBackend
    gauges: EngineGauges
    active: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    _grammars: Any = None

    def grammars(self) -> Any:
        """The version's grammar compiler (built on first use; None when it cannot constrain)."""
        if self._grammars is None:
            tokenizer = self.backend.grammar_tokenizer()
            if tokenizer is None or not self.backend.supports_constraints:
                return None
            from flywheel.serving.llm._grammar import Grammars

            self._grammars = Grammars(
                tokenizer, self.backend.vocab_size, self.backend.eos_token_ids
            )
        return self._grammars

    @property
    def label(self) -> str:
        return f"{self.model}-v{self.version}"


@dataclass
class Target:
    """Who answers one request: the backend, the name it was asked by, the endpoint if any."""

    chat: LoadedChat
    public_name: str
    served: ServedVersion
    endpoint: Any | None


class LLMService:
    """Chat backends of one process (see the module docstring)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._loaded: dict[tuple[str, int], LoadedChat] = {}
        self._once: LoadOnce[tuple[str, int], LoadedChat] = LoadOnce(LOAD_RETRY_SECONDS)
        self._refresher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redactors: dict[str, Callable[[str], str]] = {}

    @property
    def server(self) -> InferenceServer:
        return server_for(self.project)

    # -- resolution ------------------------------------------------------------------------------

    async def resolve(self, model: str, routing_key: str | None) -> Target:
        """The target of a request's ``model`` field (``UnknownModel`` 404, ``NotAChatModel``)."""
        match = _URI_RE.match(model)
        if match is None:
            raise UnknownModel(
                f"model {model!r} is not an endpoint, a model name, name@stage or models:/name/N"
            )
        server = self.server
        await server.ensure_started()
        self._ensure_refresher()
        name, stage, version = match["name"], match["stage"], match["version"]
        endpoint = None
        if stage is not None:
            try:
                mv = await asyncio.to_thread(server.source.resolve, f"models:/{name}@{stage}")
            except NotFoundError:
                raise UnknownModel(f"model {name!r} has no version in stage {stage!r}") from None
            served = await server.get_version(name, int(mv.version))
        else:
            served, endpoint = await server.target(name, version, routing_key)
        if backend_loader(getattr(served.mv, "flavor", "")) is None:
            raise NotAChatModel(
                f"model {model!r} is a {served.mv.flavor} model, not a chat model; "
                "query it through /v2/models/{name}/infer"
            )
        try:
            chat = await self._chat(served)
        except ModelUnavailable:
            # A version whose chat backend cannot load fails its requests: on an endpoint, each
            # counts against it as a canary candidate (and rolls a bad rollout back).
            label = endpoint.name if endpoint is not None else model
            server.requests._observe(label, served, 503, 0.0)
            if endpoint is not None:
                server.routes.count_canary(endpoint, served.version, 503, 0.0)
            raise
        return Target(chat, model, served, endpoint)

    async def _chat(self, served: ServedVersion) -> LoadedChat:
        key = (served.name, served.version)
        chat = self._loaded.get(key)
        if chat is not None:
            return chat
        chat = await self._once.get(key, lambda: self._load(served))
        self._loaded[key] = chat
        return chat

    async def _load(self, served: ServedVersion) -> LoadedChat:
        mv = served.mv
        loader = backend_loader(mv.flavor)
        assert loader is not None  # checked by resolve
        device = str((mv.config or {}).get("device", "cpu"))

        def load() -> ChatBackend:
            folder = self.server.source.registry.materialize(mv)  # type: ignore[attr-defined]
            return loader(folder, mv, device=device)

        start = time.perf_counter()
        try:
            backend = await asyncio.to_thread(load)
        except Exception as exc:
            raise ModelUnavailable(
                f"chat model {mv.name}/{mv.version} could not be loaded: {exc}"
            ) from exc
        log.info(
            "chat model %s/%s loaded in %.2fs", mv.name, mv.version, time.perf_counter() - start
        )
        return LoadedChat(mv.name, mv.version, mv, backend, EngineGauges(mv.name, mv.version))

    # -- bookkeeping -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def using(self, chat: LoadedChat) -> AsyncIterator[LoadedChat]:
        """Mark ``chat`` busy for the duration (an idle, unserved backend is closed later)."""
        chat.active += 1
        try:
            yield chat
        finally:
            chat.active -= 1
            chat.idle_since = time.monotonic()
            chat.gauges.refresh(chat.backend.stats())

    def record(self, target: Target, status: int, elapsed: float) -> None:
        """Count one request in serving's request metrics and, on an endpoint, its canary."""
        server = self.server
        label = target.endpoint.name if target.endpoint is not None else target.public_name
        server.requests._observe(label, target.served, status, elapsed)
        if target.endpoint is not None:
            server.routes.count_canary(target.endpoint, target.served.version, status, elapsed)

    def log_exchange(
        self, target: Target, prompt: str, completion: str, elapsed: float, request_id: str
    ) -> None:
        """Write one prompt/completion pair to the prediction log (sampled, redacted) when the
        version asks for it (``config["log_prompts"]``)."""
        config = target.chat.mv.config or {}
        if not config.get("log_prompts"):
            return
        logger = self.server.logger
        if not logger.sampled():
            return
        redact = self._redactor(str(config.get("redact") or ""))
        label = target.endpoint.name if target.endpoint is not None else target.public_name
        logger.log(
            PredictionRecord(
                request_id=request_id or uuid.uuid4().hex,
                ts=now_utc(),
                endpoint=label,
                model=target.chat.model,
                version=target.chat.version,
                kind="primary",
                latency_ms=elapsed * 1000,
                inputs={"prompt": np.asarray([redact(prompt)], dtype=object)},
                outputs={"completion": np.asarray([redact(completion)], dtype=object)},
            )
        )

    def _redactor(self, spec: str) -> Callable[[str], str]:
        if not spec:
            return lambda text: text
        if spec == "builtin":
            return builtin_redact
        fn = self._redactors.get(spec)
        if fn is None:
            fn = load_target(spec)
            self._redactors[spec] = fn
        return fn

    def _ensure_refresher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refresher is not None and self._loop is loop and not self._refresher.done():
            return
        self._loop = loop
        self._refresher = loop.create_task(self._refresh_forever(), name="llm-refresher")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.refresh_once()
            except Exception as exc:  # metrics must never stop serving
                log.warning("llm metrics refresh: %s", exc)

    def refresh_once(self) -> None:
        """Refresh every backend's gauges; close backends idle and no longer served."""
        now = time.monotonic()
        for key, chat in list(self._loaded.items()):
            chat.gauges.refresh(chat.backend.stats())
            if (
                chat.active == 0
                and now - chat.idle_since > IDLE_CLOSE_SECONDS
                and not self.server.routes.in_use(key)
            ):
                self._loaded.pop(key, None)
                chat.gauges.clear()
                chat.backend.close()
                log.info("chat model %s/%s closed (no longer served)", *key)

    def loaded(self) -> list[LoadedChat]:
        return list(self._loaded.values())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._refresher
            self._refresher = None
        for chat in list(self._loaded.values()):
            chat.gauges.clear()
            await asyncio.to_thread(chat.backend.close)
        self._loaded.clear()

    # -- listing ---------------------------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: chat endpoints, chat models with a production version, and
        ``name@stage`` for every other stage they have."""
        from flywheel.serving._endpoints import EndpointStore

        registry = self.server.source.registry  # type: ignore[attr-defined]
        chat_models: dict[str, Any] = {}
        out: list[dict[str, Any]] = []
        for model in registry.list_models():
            try:
                latest = registry.get_version(model.name, model.latest_version)
            except NotFoundError:
                continue
            if backend_loader(latest.flavor) is None:
                continue
            chat_models[model.name] = model
            created = int(model.created_at.timestamp())
            if "production" in model.stages:
                out.append(_model_entry(model.name, created, model.stages["production"]))
            for stage, version in sorted(model.stages.items()):
                out.append(_model_entry(f"{model.name}@{stage}", created, version))
        for ep in EndpointStore(self.project.db).list():
            if ep.model in chat_models:
                created = int(chat_models[ep.model].created_at.timestamp())
                out.append({**_model_entry(ep.name, created, None), "endpoint": True})
        return out


def _model_entry(name: str, created: int, version: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "flywheel",
    }
    if version is not None:
        entry["version"] = version
    return entry


def llm_service_for(project: Project) -> LLMService:
    """The process's ``LLMService`` for ``project`` (created on first use, kept on the project)."""
    return project.attached("serving.llm_service", lambda: LLMService(project))


@contextlib.asynccontextmanager
async def llm_service(project: Project) -> AsyncIterator[LLMService]:
    """``SYSTEM_SERVICES`` entry: close every loaded chat backend when the app stops."""
    service = llm_service_for(project)
    try:
        yield service
    finally:
        await service.close()


__all__ = [
    "LLMService",
    "LoadedChat",
    "NotAChatModel",
    "Target",
    "builtin_redact",
    "llm_service",
    "llm_service_for",
]
