"""What serving answers when a registered version cannot be loaded (issue #17 item 7)."""

from __future__ import annotations

import numpy as np

from flywheel.project import Project


def test_a_tampered_model_is_a_503_as_documented(project: Project) -> None:
    """Issue #17 item 7: serving answers an integrity failure (stored bytes that do not match
    their sha256) with 503 naming the hash, and the documentation says so wherever it names
    ``ModelIntegrityError``."""
    import json
    from pathlib import Path

    from fastapi.testclient import TestClient
    from sklearn.linear_model import LogisticRegression

    from flywheel.api import create_server_app
    from flywheel.registry import Registry

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    registry = Registry(project)
    mv = registry.register_model(
        "tampered", LogisticRegression().fit(x, y), flavor="sklearn", input_example=x[:2]
    )
    registry.set_stage("tampered", mv.version, "production")
    manifest = json.loads(project.artifacts.get_bytes(mv.artifact_sha256))
    sha = manifest["files"]["model.skops"]
    blob = Path(project.artifacts.url.removeprefix("file://")) / "blobs" / "sha256" / sha[:2] / sha
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with TestClient(create_server_app(project)) as client:
        r = client.post("/v2/models/tampered/infer", json=body)
    assert r.status_code == 503, r.text
    assert sha in r.json()["error"]
    root = Path(__file__).resolve().parents[2]
    docs = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    mentions = [
        (p.name, paragraph)
        for p in docs
        if p.exists()
        for paragraph in p.read_text(encoding="utf-8").split("\n\n")
        if "ModelIntegrityError" in paragraph
    ]
    assert mentions
    for where, paragraph in mentions:
        assert "503" in paragraph, (where, paragraph)
