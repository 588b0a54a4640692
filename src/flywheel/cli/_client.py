"""``ApiClient``: how commands that act on a running server talk to it.

The URL comes from ``--url`` (default ``http://127.0.0.1:8000``) and the token from
``$FLYWHEEL_TOKEN``. Transport failures and error responses become one-line ``FlywheelError``s.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from flywheel.errors import FlywheelError, ServiceUnavailable

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV_VAR = "FLYWHEEL_TOKEN"


class ApiError(FlywheelError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}")
        self.status_code = status


class ApiClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV_VAR)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"cannot reach {self.url} ({type(exc).__name__}); is `flywheel up` running?"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            if response.status_code == 401:
                message += f" (set ${TOKEN_ENV_VAR})"
            raise ApiError(response.status_code, message)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
