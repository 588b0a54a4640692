"""The agent's tools: typed functions over Flywheel's own HTTP API.

Every tool is an ``async`` function whose first parameter is the ``ApiCaller`` and whose other
parameters are typed (``Annotated[..., Field(description=...)]``); its JSON Schema is generated
from that signature with pydantic, and its arguments are validated against it before the call.

A tool calls the same HTTP routes a user would, with the caller's own token and client
address (``ApiCaller``): whatever the API refuses that caller, the tool refuses too, with the
API's error. Read tools use only read routes. Write tools (``write=True``: promote, roll back,
stop an experiment, cancel a job) are offered only when writes are allowed, the caller holds a
writer token, and each call is confirmed (see ``flywheel.agent.Agent``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from flywheel.errors import FlywheelError

ToolFunction = Callable[..., Awaitable[Any]]
# Largest tool result (JSON characters) handed back to the model; longer ones are cut.
MAX_RESULT_CHARS = 12_000


class ToolError(FlywheelError):
    """A tool call failed: bad arguments, or the API refused or failed (status kept)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ApiCall:
    """One HTTP call a tool made (the evidence that no write route was called)."""

    method: str
    path: str
    status: int


@dataclass
class ApiCaller:
    """Calls Flywheel's HTTP API as the agent's caller.

    ``client`` is an ``httpx.AsyncClient`` with the caller's ``Authorization`` header, on the
    server's URL or in-process on the ASGI app (``transport=httpx.ASGITransport(app, client=
    (caller_host, port))`` so that loopback rules see the caller's address, not the agent's).
    """

    client: httpx.AsyncClient
    calls: list[ApiCall] = field(default_factory=list)

    async def request(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Any:
        response = await self.client.request(method, path, params=params, json=json)
        self.calls.append(ApiCall(method, path, response.status_code))
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ToolError(
                f"{method} {path} answered {response.status_code}: {message}", response.status_code
            )
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    async def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return await self.request("GET", path, params=clean or None)

    async def post(self, path: str, json: Any = None) -> Any:
        return await self.request("POST", path, json=json)


@dataclass(frozen=True)
class Tool:
    """A tool: its name, description, argument model (JSON Schema) and function."""

    name: str
    description: str
    arguments: type[BaseModel]
    function: ToolFunction
    write: bool = False

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments (an object schema)."""
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    def openai_spec(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Arguments checked against the schema, or ``ToolError`` naming the field."""
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object")
        try:
            return self.arguments.model_validate(arguments).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
            raise ToolError(f"{self.name}: {where}: {err.get('msg', 'invalid')}") from None

    async def call(self, api: ApiCaller, arguments: Any) -> Any:
        """Validate ``arguments`` and run the tool."""
        return await self.function(api, **self.validate(arguments))


_DEFINED: list[Tool] = []


def tool(*, write: bool = False) -> Callable[[ToolFunction], ToolFunction]:
    """Register a typed async function as a tool (its docstring's first paragraph describes it)."""

    def register(fn: ToolFunction) -> ToolFunction:
        signature = inspect.signature(fn, eval_str=True)
        fields: dict[str, Any] = {}
        for i, (pname, param) in enumerate(signature.parameters.items()):
            if i == 0:
                continue  # the ApiCaller
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (param.annotation, default)
        model = create_model(
            f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.getdoc(fn) or fn.__name__
        _DEFINED.append(Tool(fn.__name__, doc.split("\n\n")[0], model, fn, write))
        return fn

    return register


def all_tools() -> list[Tool]:
    """Every defined tool, reads first."""
    return sorted(_DEFINED, key=lambda t: (t.write, t.name))


def select_tools(*, allow_writes: bool) -> list[Tool]:
    """The tools an agent is given: reads, plus writes when ``allow_writes``."""
    return [t for t in all_tools() if allow_writes or not t.write]


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


Name = Annotated[str, Field(min_length=1, max_length=200, description="The object's name.")]
Version = Annotated[int, Field(ge=1, description="A version number.")]

# -- registry -----------------------------------------------------------------------------------


@tool()
async def list_models(api: ApiCaller) -> Any:
    """Every registered model with its latest version and which version holds each stage."""
    return await api.get("/registry/models")


@tool()
async def get_model(api: ApiCaller, name: Name) -> Any:
    """A model's versions (oldest first) with their stages, metrics, run and feature service."""
    return await api.get(f"/registry/models/{_seg(name)}")


@tool()
async def get_model_version(api: ApiCaller, name: Name, version: Version) -> Any:
    """One model version: flavor, metrics, run id, training dataset, feature service, stages."""
    return await api.get(f"/registry/models/{_seg(name)}/versions/{version}")


@tool()
async def resolve_model(
    api: ApiCaller,
    uri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=300,
            description="models:/NAME/VERSION or models:/NAME@STAGE (production, staging, alias)",
        ),
    ],
) -> Any:
    """The model version a URI points at, e.g. which version of a model is in production."""
    return await api.get("/registry/resolve", uri=uri)


@tool()
async def model_stage_history(
    api: ApiCaller,
    name: Annotated[str | None, Field(max_length=200, description="Only this model.")] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 50,
) -> Any:
    """Stage and alias changes (promotions, rollbacks, archives) with who, when and why."""
    return await api.get("/registry/audit", name=name, limit=limit)


@tool()
async def model_lineage(api: ApiCaller, name: Name, version: Version) -> Any:
    """Upstream (run, dataset, feature service, data) and downstream (endpoints) of a version."""
    return await api.get(f"/registry/models/{_seg(name)}/versions/{version}/lineage")


# -- tracking -----------------------------------------------------------------------------------


@tool()
async def get_run(
    api: ApiCaller, run_id: Annotated[str, Field(min_length=1, max_length=100)]
) -> Any:
    """One training run: status, params, metrics (last/min/max), tags, artifacts."""
    return await api.get(f"/tracking/runs/{_seg(run_id)}")


@tool()
async def search_runs(
    api: ApiCaller,
    experiment: Annotated[str | None, Field(max_length=200)] = None,
    status: Annotated[str | None, Field(max_length=40)] = None,
    order_by: Annotated[
        str | None, Field(max_length=200, description="metric KEY, or -KEY for descending")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 20,
) -> Any:
    """Runs, newest first or ordered by a metric, with their latest metrics."""
    return await api.get(
        "/tracking/runs", experiment=experiment, status=status, order_by=order_by, limit=limit
    )


@tool()
async def compare_runs(
    api: ApiCaller, run_ids: Annotated[list[str], Field(min_length=2, max_length=20)]
) -> Any:
    """Params and metrics of several runs side by side."""
    return await api.get("/tracking/compare", run_ids=run_ids)


# -- features -----------------------------------------------------------------------------------


@tool()
async def list_feature_objects(api: ApiCaller) -> Any:
    """The feature catalog: data sources, feature views and feature services, with owners."""
    return await api.get("/features/catalog")


@tool()
async def describe_feature_object(api: ApiCaller, name: Name) -> Any:
    """A feature view or service: schema and features, versions, history, freshness, lineage."""
    return await api.get(f"/features/catalog/{_seg(name)}")


@tool()
async def get_online_features(
    api: ApiCaller,
    feature_service: Annotated[str, Field(min_length=1, max_length=200)],
    entities: Annotated[
        dict[str, list[str | int]],
        Field(description='entity columns to values, e.g. {"user_id": [42]}'),
    ],
) -> Any:
    """Online feature values for entities, as the model server reads them (a read)."""
    return await api.post(
        "/features/online", json={"feature_service": feature_service, "entities": entities}
    )


# -- serving ------------------------------------------------------------------------------------


@tool()
async def list_endpoints(api: ApiCaller) -> Any:
    """Serving endpoints with their routes (traffic split), canary and shadow state."""
    return await api.get("/serving/endpoints")


@tool()
async def get_endpoint(api: ApiCaller, name: Name) -> Any:
    """One endpoint: routes and traffic, canary progress, shadow, request metrics."""
    return await api.get(f"/serving/endpoints/{_seg(name)}")


@tool()
async def endpoint_drift(
    api: ApiCaller,
    name: Name,
    window: Annotated[int | None, Field(ge=1, description="recent predictions to compare")] = None,
) -> Any:
    """The drift report of an endpoint's inputs against the training data (PSI, KS)."""
    return await api.get(f"/serving/endpoints/{_seg(name)}/drift", window=window)


# -- experiments --------------------------------------------------------------------------------


@tool()
async def list_experiments(
    api: ApiCaller, status: Annotated[str | None, Field(max_length=40)] = None
) -> Any:
    """A/B tests and bandits with their status."""
    return await api.get("/experiments", status=status)


@tool()
async def experiment_report(api: ApiCaller, name: Name) -> Any:
    """An experiment's analysis: per-variant metrics, lifts, confidence intervals, decision."""
    return await api.get(f"/experiments/{_seg(name)}/report")


@tool()
async def bandit_allocation(api: ApiCaller, name: Name) -> Any:
    """A bandit's current arm probabilities and pulls."""
    return await api.get(f"/experiments/{_seg(name)}/bandit")


# -- training -----------------------------------------------------------------------------------


@tool()
async def list_jobs(
    api: ApiCaller,
    state: Annotated[str | None, Field(max_length=40)] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 20,
) -> Any:
    """Training jobs with their state, team and resources."""
    return await api.get("/training/jobs", state=state, limit=limit)


@tool()
async def get_job(
    api: ApiCaller, job_id: Annotated[str, Field(min_length=1, max_length=100)]
) -> Any:
    """One training job: state, attempts, placement, timings."""
    return await api.get(f"/training/jobs/{_seg(job_id)}")


@tool()
async def job_logs_tail(
    api: ApiCaller,
    job_id: Annotated[str, Field(min_length=1, max_length=100)],
    lines: Annotated[int, Field(ge=1, le=500)] = 50,
) -> Any:
    """The last lines of a training job's log."""
    text = await api.get(f"/training/jobs/{_seg(job_id)}/logs")
    if isinstance(text, str):
        return "\n".join(text.splitlines()[-lines:])
    return text


# -- recommendations and traces ----------------------------------------------------------------


@tool()
async def explain_recommendation(
    api: ApiCaller,
    user_id: Annotated[int, Field(ge=0, description="the user to recommend for")],
    k: Annotated[int, Field(ge=1, le=100)] = 10,
) -> Any:
    """Recommendations for a user with why: the strategy, sources, fallbacks and per-stage
    latencies (a preview: it enrols no one and logs no exposure)."""
    return await api.get(f"/recommendations/{user_id}", k=k, preview="true")


@tool()
async def search_traces(
    api: ApiCaller,
    name: Annotated[str | None, Field(max_length=200, description="span name")] = None,
    service: Annotated[str | None, Field(max_length=200)] = None,
    attributes: Annotated[
        list[str] | None, Field(max_length=10, description="KEY=VALUE filters")
    ] = None,
    min_duration_ms: Annotated[float | None, Field(ge=0)] = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 10,
) -> Any:
    """Recent traces holding a matching span, with durations, errors and token totals."""
    return await api.get(
        "/traces",
        name=name,
        service=service,
        attr=attributes,
        min_duration_ms=min_duration_ms,
        limit=limit,
    )


@tool()
async def list_tokens(api: ApiCaller) -> Any:
    """API tokens (names, roles, created, revoked; never a secret). The API allows admins only."""
    return await api.get("/tokens")


# -- writes (only with --allow-writes, a writer token and a confirmation) ----------------------


@tool(write=True)
async def promote_model(
    api: ApiCaller,
    name: Name,
    version: Version,
    stage: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")] = "production",
    reason: Annotated[str, Field(max_length=500)] = "",
) -> Any:
    """WRITE: move a stage (production, staging) or alias to a model version."""
    return await api.post(
        f"/registry/models/{_seg(name)}/versions/{version}/stage",
        json={"stage": stage, "reason": reason},
    )


@tool(write=True)
async def rollback_model(
    api: ApiCaller,
    name: Name,
    stage: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")] = "production",
    reason: Annotated[str, Field(max_length=500)] = "",
) -> Any:
    """WRITE: put a stage back on the version that held it before the last change."""
    return await api.post(
        f"/registry/models/{_seg(name)}/rollback", json={"stage": stage, "reason": reason}
    )


@tool(write=True)
async def stop_experiment(api: ApiCaller, name: Name) -> Any:
    """WRITE: stop an experiment (no new assignments)."""
    return await api.post(f"/experiments/{_seg(name)}/stop", json={})


@tool(write=True)
async def cancel_job(
    api: ApiCaller, job_id: Annotated[str, Field(min_length=1, max_length=100)]
) -> Any:
    """WRITE: cancel a queued or running training job."""
    return await api.post(f"/training/jobs/{_seg(job_id)}/cancel")


__all__ = [
    "ApiCall",
    "ApiCaller",
    "Tool",
    "ToolError",
    "all_tools",
    "select_tools",
    "tool",
]
