"""Actions taken from the dashboard, run through the systems' own HTTP APIs and audited.

``POST /ui/api/actions`` takes ``{action, target, reason, method, path, body}``: it needs a writer
token, checks that the path belongs to a system that has actions (training, serving, experiments,
registry), sends the request to this same app with the caller's token (so the system's own checks
and auth apply unchanged), and records who asked, what, why and the answer's status in
``ui_actions`` before replying with ``{status, body, audit_id}``. A refused action (4xx) is
recorded too; the reply then carries the system's status and ``{"error": ...}``.
``GET /ui/api/actions?target=...`` lists the log, newest first. ``GET /ui/api/whoami`` tells the
dashboard what the pasted token may do, so that it can disable what it could not.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.errors import FlywheelError
from flywheel.project import Project, current_project

_actions = sa.table(
    "ui_actions",
    sa.column("id", sa.Integer),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("reason", sa.Text),
    sa.column("method", sa.String),
    sa.column("path", sa.String),
    sa.column("request", sa.Text),
    sa.column("status", sa.Integer),
    sa.column("error", sa.Text),
)

# Paths an action may call: the systems' write routes (nothing else, and no way out of them).
_ALLOWED = re.compile(r"^/(training|serving|experiments|registry)/[A-Za-z0-9_.@%/-]+$")

router = APIRouter(prefix="/api", tags=["ui"])


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")
    target: str = Field(min_length=1, max_length=300)
    reason: str = Field(max_length=2000)
    method: Literal["POST", "PUT", "DELETE"]
    path: str = Field(min_length=2, max_length=500)
    body: dict[str, Any] | None = None


class InvalidAction(FlywheelError):
    status_code = 400


@router.get("/whoami")
def whoami(principal: Principal = Depends(require_reader)) -> dict[str, str]:
    """The pasted token's name and role (``anonymous``/``reader`` without one, on loopback)."""
    return {"name": principal.name, "role": principal.role.name}


@router.post("/actions")
async def run_action(
    body: ActionBody,
    request: Request,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> JSONResponse:
    """Run one action through the system's API and record it (see the module docstring)."""
    reason = body.reason.strip()
    if len(reason) < 3:
        raise InvalidAction("reason: say why (3 characters or more); it goes to the audit log")
    if ".." in body.path or not _ALLOWED.match(body.path):
        raise InvalidAction(
            f"path: {body.path!r} is not an action route of training, serving, experiments "
            "or registry"
        )
    headers = {"Authorization": request.headers.get("authorization", "")}
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.request(
            body.method,
            body.path,
            json=body.body if body.method != "DELETE" else None,
            headers=headers,
        )
    try:
        payload: Any = answer.json()
    except ValueError:
        payload = {"error": answer.text[:500]}
    failed = answer.status_code >= 400
    error = payload.get("error") if failed and isinstance(payload, dict) else None
    with project.db.write() as conn:
        audit_id = conn.execute(
            sa.insert(_actions)
            .values(
                at=datetime.now(UTC),
                actor=principal.name,
                action=body.action,
                target=body.target,
                reason=reason,
                method=body.method,
                path=body.path,
                request=json.dumps(body.body or {}, sort_keys=True)[:10_000],
                status=answer.status_code,
                error=None if error is None else str(error)[:2000],
            )
            .returning(_actions.c.id)
        ).scalar_one()
    if answer.status_code >= 400:
        return JSONResponse(
            {"error": error or f"HTTP {answer.status_code}", "audit_id": audit_id},
            status_code=answer.status_code,
        )
    return JSONResponse({"status": answer.status_code, "body": payload, "audit_id": audit_id})


@router.get("/actions", dependencies=[Depends(require_reader)])
def list_actions(
    target: str | None = Query(default=None, max_length=300),
    limit: int = Query(default=50, ge=1, le=1000),
    project: Project = Depends(current_project),
) -> list[dict[str, Any]]:
    """Dashboard actions, newest first (optionally those on one target)."""
    return action_log(project, target=target, limit=limit)


def action_log(
    project: Project, *, target: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The audit log of dashboard actions, newest first (optionally those on one ``target``,
    e.g. ``endpoint:shop``): who, when, what, why, the request and the answer's status."""
    query = sa.select(_actions).order_by(_actions.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(_actions.c.target == target)
    with project.db.read() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            **{k: v for k, v in row.items() if k not in ("at", "request")},
            "at": row["at"].isoformat() if row["at"] is not None else None,
            "request": json.loads(row["request"]),
        }
        for row in rows
    ]
