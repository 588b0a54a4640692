"""Bearer tokens with roles ``reader`` < ``writer`` < ``admin``.

Tokens look like ``fw_<id>_<secret>``; only the sha256 of the secret is stored (a token has
256 random bits, so a fast hash is enough and a slow KDF would only add latency). Verified
tokens are cached for a few seconds per process, so a revocation takes effect within
``CACHE_SECONDS`` everywhere.

HTTP: routes declare what they need with ``Depends(require_reader)``, ``Depends(require_writer)``
or ``Depends(require_admin)``. Missing or unknown token: 401; a role too low: 403. Reads are open
to loopback clients unless ``auth.required`` is true.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

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

_bearer = HTTPBearer(auto_error=False, description="A token from `flywheel tokens create`.")


def token_store(request: Request) -> TokenStore:
    """The app's shared ``TokenStore`` (one per app, so its cache is shared by requests)."""
    store: TokenStore | None = getattr(request.app.state, "token_store", None)
    if store is None:
        store = TokenStore(current_project(request).db)
        request.app.state.token_store = store
    return store


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal | None:
    if credentials is None:
        return None
    principal = token_store(request).verify(credentials.credentials)
    if principal is None:
        raise AuthError(
            "the bearer token is unknown or revoked; create one with `flywheel tokens create`"
        )
    return principal


def _requirement(role: Role, *, open_on_loopback: bool) -> Callable[..., Principal]:
    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
        project: Project = Depends(current_project),
    ) -> Principal:
        principal = _authenticate(request, credentials)
        if principal is None:
            if open_on_loopback and not project.config.auth.required and _is_loopback(request):
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

    dependency.__name__ = f"require_{role.name}"
    return dependency


require_reader = _requirement(Role.reader, open_on_loopback=True)
require_writer = _requirement(Role.writer, open_on_loopback=False)
require_admin = _requirement(Role.admin, open_on_loopback=False)

__all__ = [
    "ANONYMOUS_READER",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
    "require_admin",
    "require_reader",
    "require_writer",
]
