"""``Registry``: register verified model versions, move stages, load them back verified."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from flywheel.environment import current_user
from flywheel.errors import IntegrityError, NotFoundError
from flywheel.lineage import LineageGraph, Node, record_edge
from flywheel.lineage import lineage as lineage_graph
from flywheel.project import Project
from flywheel.registry._device import check_device, place, requested_device
from flywheel.registry._errors import (
    DeviceUnavailable,
    ModelIntegrityError,
    ModelNotFound,
    ModelRefused,
    RegistryError,
    StageConflict,
)
from flywheel.registry._flavor import (
    PlacedPredict,
    Predict,
    device_of,
    get_flavor,
    stack_inputs,
)
from flywheel.registry._loaded import LoadedModel, conform_input
from flywheel.registry._store import (
    audit_t,
    insert_audit,
    list_models,
    lock,
    models_t,
    row_to_audit,
    row_to_version,
    stages_by_version,
    stages_t,
    versions_t,
)
from flywheel.registry._types import AuditEntry, ModelVersion, RegisteredModel, Signature

# The stage that serving answers under the model's own name with no configuration at all: moving
# a version into it records the lineage edge ``model_version -> endpoint:<model name>``.
SERVED_STAGE = "production"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
STAGE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ARCHIVED = "archived"
URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<stage>[^/@]+))$")
# Reloaded outputs must match the original object's within this tolerance (float outputs).
RTOL, ATOL = 1e-5, 1e-6
# ONNX exports run in float32 and other kernels: a looser tolerance for them.
ONNX_RTOL, ONNX_ATOL = 1e-3, 1e-4


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegistryError(
            f"model name {name!r} must be 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_stage(stage: str) -> str:
    if not isinstance(stage, str) or not STAGE_RE.match(stage):
        raise RegistryError(
            f"stage {stage!r} must be lower-case letters, digits, '_' or '-' (e.g. production)"
        )
    return stage


def _example_dict(example: Any) -> dict[str, np.ndarray]:
    if isinstance(example, dict):
        if not example:
            raise RegistryError("input_example is an empty dict")
        return {str(k): np.asarray(v) for k, v in example.items()}
    to_numpy = getattr(example, "to_numpy", None)
    return {"input": np.asarray(to_numpy() if to_numpy is not None else example)}


def _synthesize(signature: Signature, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [batch if k == 0 else (1 if d == -1 else d) for k, d in enumerate(spec.shape)]
        dtype = spec.dtype
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[spec.name] = np.full(shape, "a", dtype=object)
    return out


def outputs_match(
    expected: dict[str, np.ndarray], got: dict[str, np.ndarray], rtol: float, atol: float
) -> str | None:
    """``None`` when ``got`` has ``expected``'s outputs with equal values, else the difference."""
    if list(expected) != list(got):
        return f"outputs {list(got)} differ from the original's {list(expected)}"
    for key, want in expected.items():
        have = np.asarray(got[key])
        want = np.asarray(want)
        if have.size != want.size:
            return f"output {key!r} has shape {have.shape}, the original's has {want.shape}"
        have, want = have.reshape(-1), want.reshape(-1)
        if want.dtype.kind in "fc" or have.dtype.kind in "fc":
            if not np.allclose(have.astype(float), want.astype(float), rtol=rtol, atol=atol):
                diff = float(np.max(np.abs(have.astype(float) - want.astype(float))))
                return f"output {key!r} differs from the original's (max abs diff {diff:.3g})"
        elif not np.array_equal(have, want):
            return f"output {key!r} differs from the original's"
    return None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    safe = {k: (v.astype(str) if v.dtype.kind == "O" else v) for k, v in arrays.items()}
    np.savez(buf, allow_pickle=False, **safe)
    return buf.getvalue()


def _tree_matches(folder: Path, files: dict[str, str]) -> bool:
    """Whether ``folder`` holds exactly ``files`` (relative path -> sha256)."""
    import hashlib

    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if present != set(files):
        return False
    for rel, sha in files.items():
        h = hashlib.sha256()
        with open(folder / rel, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != sha:
            return False
    return True


class Registry:
    """The model registry of one project (see ``flywheel.registry`` for the concepts)."""

    check_name = staticmethod(check_name)  # a valid model name is returned, else RegistryError

    def __init__(self, project: Project) -> None:
        self.project = project
        self.db = project.db
        self.artifacts = project.artifacts

    # -- registration ---------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        model: Any,
        *,
        flavor: str,
        signature: Signature | dict[str, Any] | None = None,
        input_example: Any = None,
        run: Any = None,
        training_dataset: str | None = None,
        feature_service: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        export_onnx: bool = True,
        actor: str = "",
    ) -> ModelVersion:
        """Save, verify and register a new immutable version of ``name``.

        The model is saved through its flavor, loaded back from the saved files and run on the
        input example; its outputs must equal the original object's, or the registration is
        refused (``ModelRefused`` with the reason). With no ``input_example``, one is made from
        ``signature`` (or, for ONNX, from the graph). Where a converter exists an ONNX copy is
        exported and checked the same way (``onnx_sha256``; a failure is recorded in
        ``details["onnx_error"]`` and does not refuse the model). ONNX and LightGBM models may
        also be given as a file path (or bytes).

        ``run`` (a ``Run`` or run id) contributes its latest metrics and git commit; lineage
        edges ``run -> model_version``, ``training_dataset -> run`` (or ``-> model_version``
        without a run) and ``feature_service -> model_version`` are recorded.
        """
        check_name(name)
        impl = get_flavor(flavor)
        where = f"model {name!r} ({flavor})"
        if isinstance(signature, dict):
            signature = Signature.from_dict(signature)
        if input_example is not None:
            example = _example_dict(input_example)
        elif signature is not None:
            example = _synthesize(signature)
        elif hasattr(impl, "example_for"):
            # Self-describing formats (an ONNX graph, a LightGBM model) know their inputs.
            try:
                example = impl.example_for(model)
            except Exception as exc:
                raise ModelRefused(f"{where}: cannot read the model: {exc}") from exc
        else:
            raise ModelRefused(
                f"{where}: give an input_example (or a signature) so the model can be verified"
            )
        if signature is not None:
            missing = [s.name for s in signature.inputs if s.name not in example]
            if missing:
                raise ModelRefused(f"{where}: the input example lacks inputs {missing}")
            example = {s.name: conform_input(s, example[s.name], where) for s in signature.inputs}
        input_names = list(example)
        if config and "device" in config:
            config = {**config, "device": check_device(config["device"], where)}

        try:
            original = impl.wrap(model, input_names)(example)
        except RegistryError as exc:
            raise ModelRefused(f"{where}: {exc}") from exc
        except Exception as exc:
            raise ModelRefused(
                f"{where}: the model fails on its input example: {type(exc).__name__}: {exc}"
            ) from exc
        if signature is not None and len(signature.outputs) == len(original):
            renames = dict(zip(original, signature.output_names, strict=True))
            original = {renames[k]: v for k, v in original.items()}
        else:
            renames = {k: k for k in original}

        with tempfile.TemporaryDirectory(prefix="flywheel-register-") as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            try:
                details = impl.save(model, folder, example)
            except Exception as exc:
                raise ModelRefused(
                    f"{where}: cannot be saved: {type(exc).__name__}: {exc}"
                ) from exc
            details["output_renames"] = renames
            try:
                reloaded_fn = self._renamed(
                    impl.load(folder, details, input_names, trusted=True), renames
                )
                reloaded = reloaded_fn(example)
            except Exception as exc:
                raise ModelRefused(
                    f"{where}: the saved model cannot be loaded back and run on its input "
                    f"example: {type(exc).__name__}: {exc}"
                ) from exc
            problem = outputs_match(original, reloaded, RTOL, ATOL)
            if problem:
                raise ModelRefused(f"{where}: reloaded from its saved files, {problem}")
            # A second batch of another size catches a batch dimension frozen at save time.
            grown = {k: np.concatenate([v, v[:1]]) for k, v in example.items()}
            try:
                want = self._renamed(impl.wrap(model, input_names), renames)(grown)
                problem = outputs_match(want, reloaded_fn(grown), RTOL, ATOL)
            except Exception as exc:
                problem = f"fails on a batch of another size: {type(exc).__name__}: {exc}"
            if problem:
                raise ModelRefused(
                    f"{where}: reloaded from its saved files and given a batch of "
                    f"{len(next(iter(grown.values())))} rows, {problem}"
                )
            sig = Signature(
                inputs=signature.inputs
                if signature is not None
                else Signature.from_example(example).inputs,
                outputs=Signature.from_example({}, original).outputs,
            )
            onnx_sha = None
            if export_onnx and getattr(impl, "exports_onnx", True):
                onnx_sha = self._export_onnx(impl, model, Path(tmp), example, original, details)
            files = self.artifacts.put_tree(folder)
        manifest = {"flavor": flavor, "files": files, "details": details}
        artifact_sha = self.artifacts.put_bytes(
            json.dumps(manifest, sort_keys=True).encode()
        ).sha256
        example_sha = self.artifacts.put_bytes(_npz_bytes(example)).sha256

        run_id, metrics, commit = self._run_facts(run)
        return self._insert_version(
            name=name,
            flavor=flavor,
            artifact_sha256=artifact_sha,
            onnx_sha256=onnx_sha,
            example_sha256=example_sha,
            signature=sig,
            metrics=metrics,
            run_id=run_id,
            training_dataset=training_dataset,
            feature_service=feature_service,
            code_commit=commit,
            description=description,
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            config=dict(config or {}),
            details=details,
            actor=actor or current_user(),
        )

    @staticmethod
    def _renamed(predict: Predict, renames: dict[str, str]) -> Predict:
        if all(k == v for k, v in renames.items()):
            return predict

        def renamed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {renames.get(k, k): v for k, v in predict(inputs).items()}

        return renamed

    def _export_onnx(
        self,
        impl: Any,
        model: Any,
        tmp: Path,
        example: dict[str, np.ndarray],
        original: dict[str, np.ndarray],
        details: dict[str, Any],
    ) -> str | None:
        path = tmp / "model.onnx"
        try:
            impl.export_onnx(model, path, example, details)
            predict = self._onnx_predict(path.read_bytes(), list(example), list(original), details)
            problem = outputs_match(original, predict(example), ONNX_RTOL, ONNX_ATOL)
            grown = {k: np.concatenate([v, v[:1]]) for k, v in example.items()}
            want = self._renamed(impl.wrap(model, list(example)), details["output_renames"])
            problem = problem or outputs_match(want(grown), predict(grown), ONNX_RTOL, ONNX_ATOL)
        except Exception as exc:
            details["onnx_error"] = f"{type(exc).__name__}: {exc}"[:1000]
            return None
        if problem:
            details["onnx_error"] = f"the ONNX export was not kept: {problem}"
            return None
        return self.artifacts.put_file(path).sha256

    @staticmethod
    def _onnx_predict(
        data: bytes,
        input_names: list[str],
        output_names: list[str],
        details: dict[str, Any],
        device: str = "cpu",
    ) -> Predict:
        from flywheel.registry._onnx import OnnxPredict

        if details.get("onnx_stacked_input"):
            inner = OnnxPredict(data, ["input"], output_names, device=device)

            def stacked(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return inner({"input": stack_inputs(inputs)})

            return PlacedPredict(stacked, inner.device, inner.placement)
        return OnnxPredict(data, input_names, output_names, device=device)

    def _run_facts(self, run: Any) -> tuple[str | None, dict[str, float], str | None]:
        from flywheel.environment import git_commit
        from flywheel.tracking import RunNotFound, Tracker

        if run is None:
            return None, {}, git_commit()[0]
        run_id = run if isinstance(run, str) else getattr(run, "id", None)
        if not isinstance(run_id, str):
            raise RegistryError(f"run must be a Run or a run id, not {type(run).__name__}")
        flush = getattr(run, "flush", None)
        if callable(flush) and getattr(run, "status", "") == "running":
            flush()
        tracker = Tracker(self.project)
        try:
            info = tracker.get_run(run_id)
        except RunNotFound:
            raise ModelNotFound(f"run {run_id!r} does not exist") from None
        return run_id, info.latest_metrics, info.git_commit or git_commit()[0]

    def _insert_version(self, *, actor: str, **fields: Any) -> ModelVersion:
        name: str = fields["name"]
        now = datetime.now(UTC)
        with self.db.write() as conn:
            lock(conn, f"model:{name}")
            exists = conn.execute(sa.select(models_t.c.name).where(models_t.c.name == name)).first()
            if exists is None:
                conn.execute(
                    models_t.insert().values(
                        name=name, description=fields["description"], created_at=now
                    )
                )
            latest = conn.execute(
                sa.select(sa.func.max(versions_t.c.version)).where(versions_t.c.name == name)
            ).scalar()
            version = int(latest or 0) + 1
            conn.execute(
                versions_t.insert().values(
                    name=name,
                    version=version,
                    flavor=fields["flavor"],
                    artifact_sha256=fields["artifact_sha256"],
                    onnx_sha256=fields["onnx_sha256"],
                    example_sha256=fields["example_sha256"],
                    signature=json.dumps(fields["signature"].to_dict()),
                    metrics=json.dumps(fields["metrics"]),
                    run_id=fields["run_id"],
                    training_dataset=fields["training_dataset"],
                    feature_service=fields["feature_service"],
                    code_commit=fields["code_commit"],
                    description=fields["description"],
                    tags=json.dumps(fields["tags"]),
                    config=json.dumps(fields["config"], default=str),
                    details=json.dumps(fields["details"], default=str),
                    archived=False,
                    created_by=actor,
                    created_at=now,
                )
            )
            node = Node("model_version", f"{name}/{version}")
            if fields["run_id"]:
                record_edge(conn, Node("run", fields["run_id"]), node, "trained")
            if fields["training_dataset"]:
                target = Node("run", fields["run_id"]) if fields["run_id"] else node
                record_edge(
                    conn, Node("training_dataset", fields["training_dataset"]), target, "trained_on"
                )
            if fields["feature_service"]:
                record_edge(
                    conn, Node("feature_service", fields["feature_service"]), node, "serves"
                )
            row = conn.execute(
                sa.select(versions_t).where(
                    (versions_t.c.name == name) & (versions_t.c.version == version)
                )
            ).one()
        return row_to_version(row, [])

    # -- reads ----------------------------------------------------------------------------------

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version (``ModelNotFound`` if there is none)."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(versions_t).where(
                    (versions_t.c.name == name) & (versions_t.c.version == int(version))
                )
            ).first()
            if row is None:
                raise ModelNotFound(f"model {name!r} has no version {version}")
            stages = stages_by_version(conn, name).get(int(version), [])
        return row_to_version(row, stages)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (``ModelNotFound`` for an unknown model)."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(versions_t)
                .where(versions_t.c.name == name)
                .order_by(versions_t.c.version)
            ).all()
            stages = stages_by_version(conn, name)
        if not rows:
            raise ModelNotFound(f"model {name!r} is not registered")
        return [row_to_version(r, stages.get(int(r.version), [])) for r in rows]

    def list_models(self) -> list[RegisteredModel]:
        """Every registered model with its latest version and stage pointers."""
        return list_models(self.db)

    def stage_version(self, name: str, stage: str) -> int:
        """The version ``stage`` points at (``ModelNotFound`` when unset)."""
        with self.db.read() as conn:
            version = conn.execute(
                sa.select(stages_t.c.version).where(
                    (stages_t.c.name == name) & (stages_t.c.stage == stage)
                )
            ).scalar()
        if version is None:
            raise ModelNotFound(f"model {name!r} has no version in stage {stage!r}")
        return int(version)

    def resolve(self, uri: str | ModelVersion) -> ModelVersion:
        """``models:/NAME/3``, ``models:/NAME@production`` (any stage), or a ``ModelVersion``."""
        if isinstance(uri, ModelVersion):
            return uri
        match = URI_RE.match(uri) if isinstance(uri, str) else None
        if match is None:
            raise RegistryError(
                f"model URI {uri!r} must look like models:/NAME/VERSION or models:/NAME@STAGE"
            )
        name = match["name"]
        if match["version"] is not None:
            return self.get_version(name, int(match["version"]))
        if match["stage"] == "latest":
            versions = self.list_versions(name)
            return versions[-1]
        return self.get_version(name, self.stage_version(name, match["stage"]))

    def input_example(self, mv: ModelVersion | str) -> dict[str, np.ndarray]:
        """The input example stored with a version (sha256-verified)."""
        mv = self.resolve(mv)
        with self.db.read() as conn:
            sha = conn.execute(
                sa.select(versions_t.c.example_sha256).where(
                    (versions_t.c.name == mv.name) & (versions_t.c.version == mv.version)
                )
            ).scalar()
        if sha is None:
            raise ModelNotFound(f"model {mv.name!r} version {mv.version} has no input example")
        data = self._verified_blob(mv, sha)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def audit_log(
        self, name: str | None = None, since_id: int = 0, limit: int = 1000
    ) -> list[AuditEntry]:
        """Stage changes with ``id > since_id``, oldest first (all models, or one)."""
        query = (
            sa.select(audit_t)
            .where(audit_t.c.id > int(since_id))
            .order_by(audit_t.c.id)
            .limit(max(1, min(int(limit), 10_000)))
        )
        if name is not None:
            query = query.where(audit_t.c.model == name)
        with self.db.read() as conn:
            return [row_to_audit(r) for r in conn.execute(query).all()]

    def lineage(self, name: str, version: int) -> LineageGraph:
        """The lineage graph around a version: upstream (run, training dataset, feature views,
        sources) and downstream (endpoints, experiments)."""
        mv = self.get_version(name, version)
        return lineage_graph(self.db, Node("model_version", mv.node_id))

    # -- stages ---------------------------------------------------------------------------------

    def set_stage(
        self, name: str, version: int, stage: str, reason: str = "", actor: str = ""
    ) -> AuditEntry | None:
        """Point ``stage`` of ``name`` at ``version``; ``"archived"`` archives the version.

        Returns the audit entry written, or ``None`` when the stage already pointed there. A
        version moved into ``production`` (here or by ``rollback``) gets the lineage edge
        ``model_version -> endpoint:<name>``: serving answers under the model's name with it.
        """
        check_stage(stage)
        if stage == ARCHIVED:
            return self.archive(name, version, reason=reason, actor=actor)
        actor = actor or current_user()
        mv = self.get_version(name, version)
        if ARCHIVED in mv.stages:
            raise StageConflict(
                f"model {name!r} version {version} is archived; it cannot enter stage {stage!r}"
            )
        with self.db.write() as conn:
            lock(conn, "stages")
            current = self._current(conn, name, stage)
            if current == mv.version:
                return None
            self._point(conn, name, stage, mv.version)
            insert_audit(conn, name, stage, "set", current, mv.version, actor, reason)
            self._record_served(conn, name, stage, mv.version)
            return self._last_audit(conn, name)

    def archive(self, name: str, version: int, reason: str = "", actor: str = "") -> AuditEntry:
        """Archive a version: it leaves every stage and can no longer be promoted."""
        actor = actor or current_user()
        mv = self.get_version(name, version)
        with self.db.write() as conn:
            lock(conn, "stages")
            for stage in [s for s in mv.stages if s != ARCHIVED]:
                conn.execute(
                    stages_t.delete().where((stages_t.c.name == name) & (stages_t.c.stage == stage))
                )
                insert_audit(conn, name, stage, "archive", mv.version, None, actor, reason)
            conn.execute(
                versions_t.update()
                .where((versions_t.c.name == name) & (versions_t.c.version == mv.version))
                .values(archived=True)
            )
            insert_audit(conn, name, ARCHIVED, "archive", None, mv.version, actor, reason)
            return self._last_audit(conn, name)

    def rollback(self, name: str, stage: str, reason: str = "", actor: str = "") -> AuditEntry:
        """Return ``stage`` to the version it held before the current one.

        Repeated rollbacks walk further back (like undo); archived versions are skipped.
        ``StageConflict`` when there is nothing to go back to.
        """
        check_stage(stage)
        actor = actor or current_user()
        with self.db.write() as conn:
            lock(conn, "stages")
            entries = [
                row_to_audit(r)
                for r in conn.execute(
                    sa.select(audit_t)
                    .where((audit_t.c.model == name) & (audit_t.c.stage == stage))
                    .order_by(audit_t.c.id)
                ).all()
            ]
            history: list[int] = []
            current: int | None = None
            for e in entries:
                if e.action == "set":
                    if current is not None:
                        history.append(current)
                    current = e.to_version
                elif e.action == "rollback":
                    while history and history[-1] != e.to_version:
                        history.pop()
                    if history:
                        history.pop()
                    current = e.to_version
                elif e.action == "archive":
                    current = None
            current = self._current(conn, name, stage)
            archived = {
                int(v)
                for v in conn.execute(
                    sa.select(versions_t.c.version).where(
                        (versions_t.c.name == name) & versions_t.c.archived.is_(True)
                    )
                ).scalars()
            }
            target = next(
                (v for v in reversed(history) if v not in archived and v != current), None
            )
            if target is None:
                raise StageConflict(
                    f"model {name!r} stage {stage!r} has no earlier version to roll back to"
                )
            self._point(conn, name, stage, target)
            insert_audit(conn, name, stage, "rollback", current, target, actor, reason)
            self._record_served(conn, name, stage, target)
            return self._last_audit(conn, name)

    @staticmethod
    def _record_served(conn: sa.Connection, name: str, stage: str, version: int) -> None:
        """A version entering ``production`` is served under the model's name (the default
        endpoint of every server): record ``model_version -> endpoint:<name>``."""
        if stage == SERVED_STAGE:
            record_edge(
                conn, Node("model_version", f"{name}/{version}"), Node("endpoint", name), "serves"
            )

    @staticmethod
    def _current(conn: sa.Connection, name: str, stage: str) -> int | None:
        value = conn.execute(
            sa.select(stages_t.c.version).where(
                (stages_t.c.name == name) & (stages_t.c.stage == stage)
            )
        ).scalar()
        return None if value is None else int(value)

    @staticmethod
    def _point(conn: sa.Connection, name: str, stage: str, version: int) -> None:
        conn.execute(
            stages_t.delete().where((stages_t.c.name == name) & (stages_t.c.stage == stage))
        )
        conn.execute(
            stages_t.insert().values(
                name=name, stage=stage, version=version, updated_at=datetime.now(UTC)
            )
        )

    @staticmethod
    def _last_audit(conn: sa.Connection, name: str) -> AuditEntry:
        row = conn.execute(
            sa.select(audit_t).where(audit_t.c.model == name).order_by(audit_t.c.id.desc()).limit(1)
        ).one()
        return row_to_audit(row)

    # -- loading --------------------------------------------------------------------------------

    def _verified_blob(self, mv: ModelVersion, sha256: str) -> bytes:
        try:
            return self.artifacts.get_bytes(sha256)
        except IntegrityError as exc:
            raise ModelIntegrityError(mv.name, mv.version, sha256, str(exc)) from None
        except NotFoundError as exc:
            raise ModelIntegrityError(mv.name, mv.version, sha256, str(exc)) from None

    def load(
        self,
        uri_or_mv: str | ModelVersion,
        *,
        trusted: bool = False,
        prefer_onnx: bool = False,
        device: str | None = None,
    ) -> LoadedModel:
        """Load a version into its runtime, verifying every byte against its recorded sha256.

        ``prefer_onnx`` runs the ONNX export on onnxruntime when there is one. ``trusted`` allows
        artifacts that can run code when loaded (raw pickles, skops' untrusted types); without it
        they are refused with ``UnsafeModelError``. A tampered artifact raises
        ``ModelIntegrityError`` naming the model, version and expected hash.

        ``device`` (default: the version's ``config["device"]``, else ``"cpu"``) is ``"cpu"``,
        ``"auto"`` (a GPU when the runtime can use one here, else the CPU) or ``"cuda[:N]"``
        (that GPU, or ``DeviceUnavailable``); see ``flywheel.registry._device``. The loaded
        model's ``device`` says where it really runs.
        """
        mv = self.resolve(uri_or_mv)
        where = f"model {mv.name!r} version {mv.version}"
        wanted = (
            requested_device(mv.config, where) if device is None else check_device(device, where)
        )
        output_names = list(mv.signature.output_names)
        input_names = list(mv.signature.input_names)
        if prefer_onnx and mv.onnx_sha256:
            target = place("onnxruntime", wanted, where)
            data = self._verified_blob(mv, mv.onnx_sha256)
            predict = self._onnx_predict(data, input_names, output_names, mv.details, target)
            return self._placed(mv, "onnxruntime", predict, wanted, where, {})
        manifest = json.loads(self._verified_blob(mv, mv.artifact_sha256))
        impl = get_flavor(manifest["flavor"])
        target = place(impl.runtime, wanted, where)  # before any bytes are fetched
        with tempfile.TemporaryDirectory(prefix="flywheel-load-") as tmp:
            folder = Path(tmp)
            for rel, sha in manifest["files"].items():
                try:
                    self.artifacts.get_file(sha, folder / rel)
                except (IntegrityError, NotFoundError) as exc:
                    raise ModelIntegrityError(
                        mv.name, mv.version, sha, f"file {rel!r}: {exc}"
                    ) from None
            details = manifest["details"]
            predict = impl.load(folder, details, input_names, trusted=trusted, device=target)
        return self._placed(
            mv, impl.runtime, predict, wanted, where, details.get("output_renames", {})
        )

    def materialize(self, uri_or_mv: str | ModelVersion, dest: Path | None = None) -> Path:
        """The version's files, verified against their sha256, in a folder on local disk.

        For runtimes that open a folder themselves (the LLM engine). ``dest`` defaults to
        ``<state dir>/cache/models/<name>-<version>-<sha>``, reused when already complete (the
        folder is written beside and renamed into place, so a half-written one is never seen).
        A folder reused from an earlier call is hashed again first, and rebuilt if any file
        differs from the manifest.
        """
        mv = self.resolve(uri_or_mv)
        manifest = json.loads(self._verified_blob(mv, mv.artifact_sha256))
        if dest is None:
            root = self.project.config.state_dir / "cache" / "models"
            dest = root / f"{mv.name}-{mv.version}-{mv.artifact_sha256[:16]}"
        if dest.is_dir():
            if _tree_matches(dest, manifest["files"]):
                return dest
            shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for rel, sha in manifest["files"].items():
                try:
                    self.artifacts.get_file(sha, tmp / rel)
                except (IntegrityError, NotFoundError) as exc:
                    raise ModelIntegrityError(
                        mv.name, mv.version, sha, f"file {rel!r}: {exc}"
                    ) from None
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():  # another process won the race: use its copy
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _placed(
        self,
        mv: ModelVersion,
        runtime: str,
        predict: Predict,
        wanted: str,
        where: str,
        renames: dict[str, str],
    ) -> LoadedModel:
        """The ``LoadedModel`` of ``predict``, refusing a CPU fallback of an explicit GPU ask."""
        actual, placement = device_of(predict)
        if wanted.startswith("cuda") and not actual.startswith("cuda"):
            raise DeviceUnavailable(
                f"{where}: config.device is {wanted!r} but the {runtime} runtime fell back to "
                f"the CPU ({placement or 'no GPU placement'}); set it to 'auto' to allow that"
            )
        return LoadedModel(
            mv,
            runtime,
            self._renamed(predict, renames),
            device=actual,
            placement={"device_requested": wanted, **placement},
        )


__all__ = ["Registry", "check_name", "check_stage", "outputs_match"]
