"""Bearer tokens with roles ``reader`` < ``writer`` < ``admin``.

Tokens look like ``fw_<id>_<secret>``; only the sha256 of the secret is stored (a token has
256 random bits, so a fast hash is enough and a slow KDF would only add latency). Verified
tokens are cached for a few seconds per process, so a revocation takes effect within
``CACHE_SECONDS`` everywhere.

HTTP: routes declare what they need with ``Depends(require_reader)``, ``Depends(require_writer)``
or ``Depends(require_admin)``; plain ASGI routes (V2 inference) call ``authorize_asgi``. Missing or
unknown token: 401; a role too low: 403. Reads are open to loopback clients unless
``auth.required`` is true. An ``Authorization`` header that is present but not
``Bearer <token>`` is a 401 everywhere, open reads included. Only the health probes
(``/healthz``, ``/v2/health/*``) take no token; ``/metrics`` is a read unless
``server.public_metrics`` is true.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flywheel.errors import AuthError, FlywheelError, NotFoundError, PermissionDenied
from flywheel.metadata import Database
from flywheel.project import Project, current_project

CACHE_SECONDS = 5.0

_tokens = sa.table(
    "auth_tokens",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("role", sa.String),
    sa.column("secret_sha256", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("revoked_at", sa.DateTime(timezone=True)),
)


class Role(enum.IntEnum):
    """Ordered roles: a higher role can do everything a lower one can."""

    reader = 1
    writer = 2
    admin = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value]
        except KeyError:
            allowed = ", ".join(r.name for r in cls)
            raise FlywheelError(f"role {value!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id, name and role (``anonymous`` for open loopback reads)."""

    token_id: str
    name: str
    role: Role


ANONYMOUS_READER = Principal("anonymous", "anonymous", Role.reader)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


class TokenStore:
    """Create, verify, list and revoke tokens in the metadata store."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def create(self, role: Role | str, name: str = "") -> tuple[TokenInfo, str]:
        """Make a token. Returns its record and the plaintext, which is shown only once."""
        role = Role.parse(role) if isinstance(role, str) else role
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        name = name or f"{role.name}-{token_id}"
        with self.db.write() as conn:
            conn.execute(
                _tokens.insert().values(
                    id=token_id,
                    name=name,
                    role=role.name,
                    secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                    created_at=now,
                    revoked_at=None,
                )
            )
        return TokenInfo(token_id, name, role, now, None), f"fw_{token_id}_{secret}"

    def verify(self, token: str) -> Principal | None:
        """The principal for a plaintext token, or None if it is malformed, unknown or revoked."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "fw" or not parts[1] or not parts[2]:
            return None
        token_id, secret = parts[1], parts[2]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(_tokens.c.name, _tokens.c.role, _tokens.c.secret_sha256).where(
                    _tokens.c.id == token_id, _tokens.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        expected = row.secret_sha256
        if not hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), expected):
            return None
        principal = Principal(token_id, row.name, Role[row.role])
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now + CACHE_SECONDS, principal)
        return principal

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified in the last ``CACHE_SECONDS``, else None."""
        with self._lock:
            hit = self._cache.get(token)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def list(self) -> list[TokenInfo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(_tokens).order_by(_tokens.c.created_at)).all()
        return [TokenInfo(r.id, r.name, Role[r.role], r.created_at, r.revoked_at) for r in rows]

    def revoke(self, token_id: str) -> None:
        with self.db.write() as conn:
            result = conn.execute(
                _tokens.update()
                .where(_tokens.c.id == token_id, _tokens.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        if result.rowcount == 0:
            raise NotFoundError(f"token {token_id!r} does not exist or is already revoked")
        with self._lock:
            self._cache.clear()


# -- HTTP dependencies ---------------------------------------------------------------------------

# One scheme object per role, so that the OpenAPI document can tell an open read (the token is
# optional on 127.0.0.1) from a write (``flywheel.api`` merges them into one ``bearer`` scheme).
_BEARERS = {
    role: HTTPBearer(
        auto_error=False,
        scheme_name=f"bearer-{role.name}",
        description="A token from `flywheel tokens create`.",
    )
    for role in Role
}


def token_store(request: Request) -> TokenStore:
    """The app's shared ``TokenStore`` (one per app, so its cache is shared by requests)."""
    store: TokenStore | None = getattr(request.app.state, "token_store", None)
    if store is None:
        store = TokenStore(current_project(request).db)
        request.app.state.token_store = store
    return store


MALFORMED_HEADER = (
    "the Authorization header must be 'Bearer <token>' (a token from `flywheel tokens create`)"
)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is no header.

    A header that is present but not of that form (``Basic ...``, ``garbage``, an empty value)
    is an ``AuthError`` (401), never taken as "no token".
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError(MALFORMED_HEADER)
    return token


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str) -> bool:
    """Whether a client address is the loopback interface (``testclient`` counts as local)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def _check(
    principal: Principal | None,
    *,
    role: Role,
    open_read: bool,
    required: bool,
    client_host: str,
) -> Principal:
    if principal is None:
        if open_read and not required and is_loopback_host(client_host):
            return ANONYMOUS_READER
        raise AuthError(
            f"this endpoint needs a {role.name} token: send 'Authorization: Bearer <token>'"
        )
    if principal.role < role:
        raise PermissionDenied(
            f"token {principal.name!r} has role {principal.role.name}; "
            f"this endpoint needs {role.name} or higher"
        )
    return principal


def _unknown_token() -> AuthError:
    return AuthError(
        "the bearer token is unknown or revoked; create one with `flywheel tokens create`"
    )


def _requirement(role: Role, *, open_on_loopback: bool) -> Callable[..., Principal]:
    def dependency(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Depends(_BEARERS[role]),
        project: Project = Depends(current_project),
    ) -> Principal:
        # ``_credentials`` only documents the scheme in OpenAPI; the raw header is parsed here so
        # that a malformed one is refused rather than read as "no token".
        token = bearer_token(request.headers.get("authorization"))
        principal = None
        if token is not None:
            principal = token_store(request).verify(token)
            if principal is None:
                raise _unknown_token()
        return _check(
            principal,
            role=role,
            open_read=open_on_loopback,
            required=project.config.auth.required,
            client_host=request.client.host if request.client else "",
        )

    dependency.__name__ = f"require_{role.name}"
    return dependency


async def authorize_asgi(scope: Any, role: Role = Role.reader) -> Principal:
    """The same check as ``require_<role>`` for plain ASGI routes (V2 inference, ``GET /v2``).

    ``scope["app"]`` is the FastAPI app (its ``state.project``). Raises ``AuthError`` (401) or
    ``PermissionDenied`` (403). A token not in the cache is verified in a thread, so a metadata
    read never blocks the event loop.
    """
    app = scope["app"]
    project: Project = app.state.project
    header = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    token = bearer_token(header)
    principal = None
    if token is not None:
        store: TokenStore | None = getattr(app.state, "token_store", None)
        if store is None:
            store = TokenStore(project.db)
            app.state.token_store = store
        principal = store.cached(token)
        if principal is None:
            principal = await asyncio.to_thread(store.verify, token)
        if principal is None:
            raise _unknown_token()
    client = scope.get("client")
    return _check(
        principal,
        role=role,
        open_read=role is Role.reader,
        required=project.config.auth.required,
        client_host=client[0] if client else "",
    )


require_reader = _requirement(Role.reader, open_on_loopback=True)
require_writer = _requirement(Role.writer, open_on_loopback=False)
require_admin = _requirement(Role.admin, open_on_loopback=False)


def require_metrics_reader(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Depends(_BEARERS[Role.reader]),
    project: Project = Depends(current_project),
) -> Principal:
    """``/metrics``: a reader (as any read) unless ``server.public_metrics`` is true."""
    if project.config.server.public_metrics:
        return ANONYMOUS_READER
    return require_reader(request, _credentials, project)


__all__ = [
    "ANONYMOUS_READER",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
    "authorize_asgi",
    "bearer_token",
    "require_admin",
    "require_metrics_reader",
    "require_reader",
    "require_writer",
]
