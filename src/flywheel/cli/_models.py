"""`flywheel models ...`: Model registry: versions, stages, aliases, lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(help="Model registry: versions, stages, aliases, lineage.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the audit log).")]
ActorOption = Annotated[
    str, typer.Option("--actor", help="Who (default: the user running the command).")
]


def _actor(actor: str) -> str:
    if actor:
        return actor
    from flywheel.environment import current_user

    return current_user()


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    path: Annotated[
        Path,
        typer.Argument(
            help="Model file (.onnx, a LightGBM text model) or folder (a Hugging Face-format "
            "LLM, a scripted chat model)."
        ),
    ],
    flavor: Annotated[str, typer.Option(help="onnx, lightgbm, llm or scripted-chat.")] = "onnx",
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    run: Annotated[str | None, typer.Option(help="Run id that trained it.")] = None,
    training_dataset: Annotated[str | None, typer.Option(help="Training dataset name.")] = None,
    feature_service: Annotated[str | None, typer.Option(help="Feature service it reads.")] = None,
    config: ConfigOption = None,
) -> None:
    """Register a model file (verified: loaded back and run before it is accepted)."""
    from flywheel.registry import Registry, RegistryError

    if flavor not in ("onnx", "lightgbm", "llm", "scripted-chat"):
        raise RegistryError(
            f"flavor {flavor!r}: files can be registered as onnx, lightgbm, llm or "
            "scripted-chat; register other flavors from Python (registry.register_model)"
        )
    if flavor in ("llm", "scripted-chat"):
        if not path.exists():
            raise RegistryError(f"model folder {str(path)!r} does not exist")
    elif not path.is_file():
        raise RegistryError(f"model file {str(path)!r} does not exist")
    mv = Registry(open_project(config)).register_model(
        name,
        path,
        flavor=flavor,
        description=description,
        run=run,
        training_dataset=training_dataset,
        feature_service=feature_service,
    )
    onnx = "with ONNX" if mv.onnx_sha256 else "no ONNX"
    console.print(f"registered {mv.uri} ({mv.flavor}, {onnx}, sha256:{mv.artifact_sha256[:16]})")


@app.command("list")
def list_models(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Registered models with their latest version and stages."""
    from flywheel.registry import Registry

    models = Registry(open_project(config)).list_models()
    if as_json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return
    table = Table("model", "latest", "stages", "created")
    for m in models:
        stages = ", ".join(f"{s}=v{v}" for s, v in sorted(m.stages.items()))
        table.add_row(m.name, str(m.latest_version), stages, f"{m.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Argument(help="A version (default: all).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A model's versions, or one version with its signature, hashes and lineage."""
    from flywheel.registry import Registry

    registry = Registry(open_project(config))
    if version is None:
        versions = registry.list_versions(name)
        if as_json:
            print(json.dumps([v.to_dict() for v in versions], indent=2))
            return
        table = Table("version", "flavor", "stages", "onnx", "run", "metrics", "created")
        for v in versions:
            metrics = ", ".join(f"{k}={m:.4g}" for k, m in sorted(v.metrics.items())[:4])
            table.add_row(
                str(v.version),
                v.flavor,
                ", ".join(v.stages),
                "yes" if v.onnx_sha256 else "no",
                (v.run_id or "")[:12],
                metrics,
                f"{v.created_at:%Y-%m-%d %H:%M}" if v.created_at else "",
            )
        console.print(table)
        return
    mv = registry.get_version(name, version)
    graph = registry.lineage(name, version)
    if as_json:
        print(json.dumps({**mv.to_dict(), "lineage": graph.to_dict()}, indent=2))
        return
    console.print(f"[bold]{mv.uri}[/]  flavor {mv.flavor}  stages {', '.join(mv.stages) or '-'}")
    console.print(f"artifact sha256:{mv.artifact_sha256}")
    console.print(f"onnx     {'sha256:' + mv.onnx_sha256 if mv.onnx_sha256 else '-'}")
    if mv.details.get("onnx_error"):
        console.print(f"         (no ONNX export: {mv.details['onnx_error'][:120]})")
    console.print(
        f"run {mv.run_id or '-'}  training dataset {mv.training_dataset or '-'}  "
        f"feature service {mv.feature_service or '-'}  commit {mv.code_commit or '-'}"
    )
    table = Table("", "name", "datatype", "shape")
    for kind, specs in (("input", mv.signature.inputs), ("output", mv.signature.outputs)):
        for s in specs:
            table.add_row(kind, s.name, s.datatype, str(list(s.shape)))
    console.print(table)
    if mv.metrics:
        console.print(
            "metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(mv.metrics.items()))
        )
    console.print("lineage:")
    if not graph.edges:
        console.print("  (none recorded)")
    for edge in sorted(graph.edges, key=lambda e: (str(e.src), str(e.dst))):
        console.print(f"  {edge.src} -> {edge.dst}  ({edge.relation})")


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    stage: Annotated[str, typer.Argument(help="Stage: production, staging, or any alias.")],
    reason: ReasonOption = "",
    actor: ActorOption = "",
    config: ConfigOption = None,
) -> None:
    """Point STAGE of NAME at VERSION (recorded in the audit log)."""
    from flywheel.registry import Registry

    entry = Registry(open_project(config)).set_stage(
        name, version, stage, reason=reason, actor=_actor(actor)
    )
    if entry is None:
        console.print(f"{name} {stage} already at version {version}")
        return
    previous = f"version {entry.from_version}" if entry.from_version else "nothing"
    console.print(f"{name} {entry.stage}: {previous} -> version {entry.to_version}")


@app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    stage: Annotated[str, typer.Argument(help="Stage to roll back.")] = "production",
    reason: ReasonOption = "",
    actor: ActorOption = "",
    config: ConfigOption = None,
) -> None:
    """Return STAGE of NAME to the version it held before the current one."""
    from flywheel.registry import Registry

    entry = Registry(open_project(config)).rollback(name, stage, reason=reason, actor=_actor(actor))
    console.print(
        f"{name} {stage}: rolled back version {entry.from_version} -> version {entry.to_version}"
    )


@app.command("archive")
def archive(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to archive.")],
    reason: ReasonOption = "",
    actor: ActorOption = "",
    config: ConfigOption = None,
) -> None:
    """Archive VERSION: it leaves every stage and can no longer be promoted."""
    from flywheel.registry import Registry

    Registry(open_project(config)).archive(name, version, reason=reason, actor=_actor(actor))
    console.print(f"{name} version {version} archived")


@app.command("audit")
def audit(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The stage audit log: who moved which stage from which version to which, when and why."""
    from flywheel.registry import Registry

    entries = Registry(open_project(config)).audit_log(name)
    if as_json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    table = Table("id", "when", "model", "stage", "action", "from", "to", "actor", "reason")
    for e in entries:
        table.add_row(
            str(e.id),
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.model,
            e.stage,
            e.action,
            str(e.from_version or ""),
            str(e.to_version or ""),
            e.actor,
            e.reason,
        )
    console.print(table)
