"""Registration, verification, integrity, safety, stages, rollback and audit (sklearn, ONNX)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from flywheel.environment import current_user
from flywheel.lineage import Node, downstream
from flywheel.project import Project
from flywheel.registry import (
    ModelIntegrityError,
    ModelNotFound,
    ModelRefused,
    Registry,
    RegistryError,
    Signature,
    StageConflict,
    TensorSpec,
    UnsafeModelError,
)
from flywheel.tracking import Tracker

XY = tuple[np.ndarray, np.ndarray]


def _blob_path(project: Project, sha: str) -> Path:
    return Path(project.artifacts.url.removeprefix("file://")) / "blobs" / "sha256" / sha[:2] / sha


def test_sklearn_classifier_round_trips_native_and_onnx(
    project: Project, xy: XY, random_inputs: np.ndarray
) -> None:
    x, y = xy
    model = LogisticRegression().fit(x, y)
    registry = Registry(project)
    mv = registry.register_model("clf", model, flavor="sklearn", input_example=x[:5])
    assert mv.version == 1 and mv.uri == "models:/clf/1"
    assert mv.signature.inputs == (TensorSpec("input", "FP64", (-1, 4)),)
    assert mv.signature.output_names == ("predictions", "probabilities")
    assert mv.onnx_sha256 is not None
    loaded = registry.load("models:/clf/1")
    assert loaded.runtime == "sklearn"
    out = loaded.predict({"input": random_inputs})
    np.testing.assert_array_equal(out["predictions"], model.predict(random_inputs))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(random_inputs))
    onnx = registry.load(mv, prefer_onnx=True)
    assert onnx.runtime == "onnxruntime"
    out2 = onnx(random_inputs)
    np.testing.assert_array_equal(out2["predictions"], model.predict(random_inputs))
    np.testing.assert_allclose(out2["probabilities"], model.predict_proba(random_inputs), atol=1e-5)
    assert out2["probabilities"].dtype == np.float64
    example = registry.input_example(mv)
    np.testing.assert_array_equal(example["input"], x[:5])


def test_sklearn_regressor_with_several_named_inputs(project: Project, xy: XY) -> None:
    x, _ = xy
    target = x @ np.array([1.0, 2.0, 3.0, 4.0])
    model = Ridge().fit(x, target)
    registry = Registry(project)
    example = {"a": x[:4, :2], "b": x[:4, 2:]}
    mv = registry.register_model("reg", model, flavor="sklearn", input_example=example)
    assert mv.signature.input_names == ("a", "b")
    for prefer_onnx in (False, True):
        loaded = registry.load(mv, prefer_onnx=prefer_onnx)
        out = loaded.predict({"a": x[:9, :2], "b": x[:9, 2:]})["predictions"]
        assert out.shape == (9,)
        np.testing.assert_allclose(out, model.predict(x[:9]), rtol=1e-4)
    with pytest.raises(RegistryError, match="missing inputs"):
        registry.load(mv).predict({"a": x[:2, :2]})
    with pytest.raises(RegistryError, match="shape"):
        registry.load(mv).predict({"a": x[:2], "b": x[:2, 2:]})


def test_onnx_flavor_round_trips_and_infers_its_example(
    project: Project, xy: XY, random_inputs: np.ndarray
) -> None:
    from skl2onnx import to_onnx

    x, y = xy
    sk = Ridge().fit(x, y)
    onx = to_onnx(sk, x[:1].astype(np.float32), target_opset=17)
    registry = Registry(project)
    mv = registry.register_model("onnx-model", onx, flavor="onnx")
    assert mv.onnx_sha256 == mv.details.get("onnx_sha256", mv.onnx_sha256)
    loaded = registry.load(mv)
    assert loaded.runtime == "onnxruntime"
    (out,) = loaded.predict({mv.signature.inputs[0].name: random_inputs}).values()
    np.testing.assert_allclose(out.reshape(-1), sk.predict(random_inputs), rtol=1e-4, atol=1e-4)


def test_a_model_that_cannot_run_on_its_example_is_refused(project: Project, xy: XY) -> None:
    x, y = xy
    model = LogisticRegression().fit(x, y)
    registry = Registry(project)
    with pytest.raises(ModelRefused, match="fails on its input example"):
        registry.register_model("bad", model, flavor="sklearn", input_example=x[:3, :2])
    with pytest.raises(ModelRefused, match="input_example"):
        registry.register_model("bad", model, flavor="sklearn")
    with pytest.raises(ModelRefused, match="predict"):
        registry.register_model("bad", object(), flavor="sklearn", input_example=x[:3])
    with pytest.raises(RegistryError, match="flavor"):
        registry.register_model("bad", model, flavor="xgboost", input_example=x[:3])
    with pytest.raises(RegistryError, match="model name"):
        registry.register_model("bad name!", model, flavor="sklearn", input_example=x[:3])
    assert registry.list_models() == []


def test_a_signature_alone_is_enough_to_verify(project: Project, xy: XY) -> None:
    x, y = xy
    model = LogisticRegression().fit(x, y)
    sig = Signature((TensorSpec("features", "FP32", (-1, 4)),))
    mv = Registry(project).register_model("sig", model, flavor="sklearn", signature=sig)
    assert mv.signature.inputs == sig.inputs
    assert Signature.from_dict(mv.signature.to_dict()) == mv.signature


def test_tampered_artifacts_are_refused_naming_model_version_and_hash(
    project: Project, xy: XY
) -> None:
    x, y = xy
    registry = Registry(project)
    mv = registry.register_model(
        "clf", LogisticRegression().fit(x, y), flavor="sklearn", input_example=x[:5]
    )
    import json

    manifest = json.loads(project.artifacts.get_bytes(mv.artifact_sha256))
    file_sha = manifest["files"]["model.skops"]
    path = _blob_path(project, file_sha)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelIntegrityError) as err:
        registry.load("models:/clf/1")
    message = str(err.value)
    assert "'clf'" in message and "version 1" in message and file_sha in message
    assert err.value.status_code == 500
    assert mv.onnx_sha256 is not None
    onnx_path = _blob_path(project, mv.onnx_sha256)
    onnx_path.chmod(0o644)
    onnx_path.write_bytes(b"not onnx")
    with pytest.raises(ModelIntegrityError, match=mv.onnx_sha256):
        registry.load(mv, prefer_onnx=True)


class Doubler:
    """A custom estimator: skops stores it but lists it as an untrusted type."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> Doubler:
        self.coef_ = np.ones(x.shape[1])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ self.coef_ * 2)


class Unstorable(Doubler):
    """skops refuses to store this (it raises), so the registry falls back to a pickle."""

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        return (Unstorable._restore, (self.coef_.tolist(),))

    @staticmethod
    def _restore(coef: list[float]) -> Unstorable:
        obj = Unstorable()
        obj.coef_ = np.asarray(coef)
        return obj


def test_untrusted_types_and_pickles_need_trusted_true(
    project: Project, xy: XY, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = xy
    registry = Registry(project)
    mv = registry.register_model(
        "custom", Doubler().fit(x, y), flavor="sklearn", input_example=x[:3]
    )
    assert mv.details["untrusted_types"] == ["tests.registry.test_registry.Doubler"]
    with pytest.raises(UnsafeModelError, match="Doubler"):
        registry.load(mv)
    out = registry.load(mv, trusted=True).predict({"input": x[:4]})["predictions"]
    np.testing.assert_allclose(out, x[:4].sum(axis=1) * 2)

    import skops.io

    def refuse(*_a: object, **_k: object) -> None:
        raise TypeError("skops cannot store this object")

    monkeypatch.setattr(skops.io, "dump", refuse)
    mv2 = registry.register_model(
        "pickled", Unstorable().fit(x, y), flavor="sklearn", input_example=x[:3]
    )
    monkeypatch.undo()
    assert mv2.details["format"] == "pickle"
    with pytest.raises(UnsafeModelError, match="pickle"):
        registry.load(mv2)
    assert registry.load(mv2, trusted=True).predict(x[:2])["predictions"].shape == (2,)


@pytest.mark.integration
def test_stages_promotion_rollback_and_audit(any_project: Project, xy: XY) -> None:
    x, y = xy
    registry = Registry(any_project)
    model = LogisticRegression().fit(x, y)
    for _ in range(3):
        registry.register_model(
            "m", model, flavor="sklearn", input_example=x[:3], export_onnx=False
        )
    registry.set_stage("m", 1, "production", reason="first", actor="alice")
    registry.set_stage("m", 2, "production", reason="better", actor="bob")
    assert registry.set_stage("m", 2, "production") is None  # already there: no audit row
    registry.set_stage("m", 3, "staging")
    assert registry.resolve("models:/m@production").version == 2
    assert registry.get_version("m", 2).stages == ("production",)
    entry = registry.rollback("m", "production", reason="regression", actor="carol")
    assert (entry.from_version, entry.to_version, entry.action) == (2, 1, "rollback")
    assert registry.resolve("models:/m@production").version == 1
    with pytest.raises(StageConflict, match="no earlier version"):
        registry.rollback("m", "production")
    log = registry.audit_log("m")
    assert [(e.stage, e.from_version, e.to_version, e.actor, e.reason) for e in log] == [
        ("production", None, 1, "alice", "first"),
        ("production", 1, 2, "bob", "better"),
        ("staging", None, 3, current_user(), ""),
        ("production", 2, 1, "carol", "regression"),
    ]
    assert [e.id for e in registry.audit_log(since_id=log[1].id)] == [log[2].id, log[3].id]
    assert all(b.id > a.id for a, b in itertools.pairwise(log))

    # archive: leaves its stages, cannot be promoted, rollback skips it
    registry.set_stage("m", 3, "production")
    registry.set_stage("m", 2, "production")
    registry.set_stage("m", 3, "archived", reason="broken")
    assert registry.get_version("m", 3).stages == ("archived",)
    with pytest.raises(StageConflict, match="archived"):
        registry.set_stage("m", 3, "production")
    assert registry.rollback("m", "production").to_version == 1
    with pytest.raises(ModelNotFound):
        registry.resolve("models:/m@staging")
    models = registry.list_models()
    assert [(m.name, m.latest_version, m.stages) for m in models] == [("m", 3, {"production": 1})]
    assert [v.version for v in registry.list_versions("m")] == [1, 2, 3]
    assert registry.resolve("models:/m@latest").version == 3
    with pytest.raises(RegistryError, match="URI"):
        registry.resolve("m/1")
    with pytest.raises(RegistryError, match="stage"):
        registry.set_stage("m", 1, "Prod!")


def test_run_metrics_commit_and_lineage_are_recorded(project: Project, xy: XY) -> None:
    x, y = xy
    tracker = Tracker(project)
    with tracker.start_run("exp") as run:
        run.log_metric("auc", 0.7)
        run.log_metric("auc", 0.8)
        registry = Registry(project)
        mv = registry.register_model(
            "ranked",
            LogisticRegression().fit(x, y),
            flavor="sklearn",
            input_example=x[:3],
            run=run,
            training_dataset="clicks-2026",
            feature_service="ranker_fs",
            export_onnx=False,
        )
    assert mv.metrics == {"auc": 0.8} and mv.run_id == run.id
    assert mv.code_commit == tracker.get_run(run.id).git_commit
    graph = registry.lineage("ranked", 1).to_dict()
    edges = {(e["src"], e["dst"]) for e in graph["edges"]}
    assert edges == {
        (f"run:{run.id}", "model_version:ranked/1"),
        ("training_dataset:clicks-2026", f"run:{run.id}"),
        ("feature_service:ranker_fs", "model_version:ranked/1"),
    }
    with pytest.raises(ModelNotFound):
        registry.register_model(
            "x", LogisticRegression().fit(x, y), flavor="sklearn", input_example=x[:3], run="nope"
        )


def test_production_versions_lead_to_the_default_endpoint_in_lineage(
    any_project: Project, xy: XY
) -> None:
    x, y = xy
    registry = Registry(any_project)
    model = LogisticRegression().fit(x, y)
    for _ in range(3):
        registry.register_model(
            "m", model, flavor="sklearn", input_example=x[:3], export_onnx=False
        )
    registry.set_stage("m", 3, "staging")  # not served under the model's name: no edge
    registry.set_stage("m", 1, "production")
    registry.set_stage("m", 2, "production")
    registry.rollback("m", "production")  # back to 1: the edge exists once
    served = {n.id for n in downstream(any_project.db, Node("model_version", "m/1")).nodes} | {
        n.id for n in downstream(any_project.db, Node("model_version", "m/2")).nodes
    }
    assert served == {"m/1", "m/2", "m"}
    for version in (1, 2):
        graph = registry.lineage("m", version).to_dict()
        assert {"kind": "endpoint", "id": "m"} in graph["nodes"]
        assert {"src": f"model_version:m/{version}", "dst": "endpoint:m", "relation": "serves"} in (
            graph["edges"]
        )
    staging = downstream(any_project.db, Node("model_version", "m/3"))
    assert staging.nodes == {Node("model_version", "m/3")}


def test_versions_are_content_addressed(project: Project, xy: XY) -> None:
    x, y = xy
    model = LogisticRegression().fit(x, y)
    registry = Registry(project)
    a = registry.register_model("a", model, flavor="sklearn", input_example=x[:3])
    b = registry.register_model("a", model, flavor="sklearn", input_example=x[:3])
    assert (a.version, b.version) == (1, 2)
    data = project.artifacts.get_bytes(a.artifact_sha256)
    assert hashlib.sha256(data).hexdigest() == a.artifact_sha256


def test_module_level_helpers_use_the_configured_project(
    project: Project, xy: XY, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel import registry, tracking

    monkeypatch.setenv("FLYWHEEL_CONFIG", str(project.root / "flywheel.yaml"))
    x, y = xy
    with tracking.start_run("helpers", params={"C": 1}) as run:
        run.log_metric("acc", 0.75)
        mv = registry.register_model(
            "helper", LogisticRegression().fit(x, y), flavor="sklearn", input_example=x[:3], run=run
        )
    assert registry.get_version("helper", 1).metrics == {"acc": 0.75}
    registry.set_stage("helper", mv.version, "staging", reason="try")
    model = registry.load("models:/helper@staging")
    assert model.predict(x[:2])["predictions"].shape == (2,)
    assert registry.lineage("helper", 1).root.id == "helper/1"
    with pytest.raises(StageConflict):
        registry.rollback("helper", "staging")
    assert Tracker(project).get_run(run.id).params == {"C": "1"}


def test_a_loaded_model_serves_several_threads(project: Project, xy: XY) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x, y = xy
    model = LogisticRegression().fit(x, y)
    registry = Registry(project)
    mv = registry.register_model("threads", model, flavor="sklearn", input_example=x[:3])
    for loaded in (registry.load(mv), registry.load(mv, prefer_onnx=True)):
        batches = [x[i : i + 17] for i in range(0, 170, 17)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(loaded.predict, [{"input": b} for b in batches]))
        for batch, out in zip(batches, results, strict=True):
            np.testing.assert_array_equal(out["predictions"], model.predict(batch))
