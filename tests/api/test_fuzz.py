"""Property-based fuzzing of every route in the app's own OpenAPI spec (schemathesis, in-process).

Routers that later systems mount are fuzzed by this same test with no extra work: the spec is
generated from the app as it is. Requests carry an admin token so that writes get past auth and
their bodies are exercised too. The check is that no input produces a 5xx.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from flywheel.api import create_app
from flywheel.auth import TokenStore
from tests.conftest import make_project


def _fuzzed_app() -> tuple[object, str]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="flywheel-fuzz-"))
    project = make_project(root / "proj")
    _, token = TokenStore(project.db).create("admin", "fuzz")
    return create_app(project), token


APP, TOKEN = _fuzzed_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_route_answers_5xx(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[schemathesis.checks.not_a_server_error],
    )
