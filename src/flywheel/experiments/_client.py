"""``Experiments``: define, assign, log, update and analyse experiments of one project.

The hot path (``assign``) works from an in-process cache of compiled experiments: one dict
lookup, one or two BLAKE2b hashes, a table lookup and a list append for the exposure. The cache
is refreshed when a cheap version read (one tiny query, at most every ``refresh_seconds``) shows
that a definition or a bandit's state changed, so every server process sees a new definition or
bandit update within about a second. If the metadata store is unreachable, assignment keeps
working from the cache.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from flywheel.experiments._allocation import (
    BUCKETS,
    Ranges,
    from_ranges,
    moved_buckets,
    reallocate,
    resize_layer_share,
    variant_table,
)
from flywheel.experiments._bandits import (
    BanditState,
    PreparedPolicy,
    choose_arm,
    context_vector,
)
from flywheel.experiments._definition import ExperimentSpec, ExperimentStatus
from flywheel.experiments._errors import (
    ExperimentExists,
    ExperimentNotFound,
    ExperimentStateError,
    InvalidExperiment,
)
from flywheel.experiments._events import event_row
from flywheel.experiments._exposures import ExposureLogger
from flywheel.experiments._hashing import HASH_SEPARATOR, hash64, hash_unit_interval
from flywheel.experiments._store import ExperimentRow, ExperimentStore
from flywheel.experiments._targeting import Predicate, compile_targeting
from flywheel.project import Project

log = logging.getLogger(__name__)

ORPHAN_REWARD_SECONDS = 3600.0  # a reward whose exposure never arrives is dropped after this
REWARD_BATCH = 50_000


class Assignment(NamedTuple):
    """What a unit gets (a named tuple: cheap to build on the hot path).

    ``variant`` is always usable: units outside the experiment get the control variant (or the
    winner after a stop) with ``in_experiment=False`` and no exposure logged. ``propensity`` is
    the probability with which this variant was chosen (1.0 outside the experiment);
    ``decision_id`` identifies the logged exposure (pass it to ``log_reward``).
    """

    variant: str
    propensity: float
    experiment: str = ""
    unit_id: str = ""
    in_experiment: bool = True
    decision_id: str | None = None
    reason: str = "assigned"

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class ExperimentInfo:
    """A stored experiment: its definition, state and current allocation."""

    spec: ExperimentSpec
    status: ExperimentStatus
    shares: dict[str, float]  # variant -> share of the experiment's units (bucket shares)
    layer: str
    layer_share: float  # share of the layer's units in the experiment
    winner: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return "bandit" if self.spec.is_bandit else "ab"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status.value,
            "layer": self.layer,
            "layer_share": self.layer_share,
            "shares": self.shares,
            "winner": self.winner,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "spec": self.spec.to_dict(),
        }


def _info(row: ExperimentRow) -> ExperimentInfo:
    spec = ExperimentSpec.from_dict(row.spec)
    counts = {arm: len(from_ranges(row.allocation.get(arm, []))) for arm in spec.arms}
    if spec.is_bandit:
        shares = {arm: 1.0 / len(spec.arms) for arm in spec.arms}
    else:
        shares = {arm: counts[arm] / BUCKETS for arm in spec.arms}
    held = sum(end - start for start, end in row.layer_ranges)
    return ExperimentInfo(
        spec=spec,
        status=ExperimentStatus(row.status),
        shares=shares,
        layer=row.layer,
        layer_share=held / BUCKETS,
        winner=row.winner,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        stopped_at=row.stopped_at,
    )


class _Compiled:
    """An experiment prepared for the hot path."""

    __slots__ = (
        "arms",
        "bandit_seed",
        "control",
        "end",
        "full_layer",
        "info",
        "layer_mask",
        "layer_salt",
        "name",
        "policy",
        "running",
        "salt",
        "salt_prefix",
        "shares",
        "spec",
        "start",
        "state_version",
        "table",
        "targeting",
    )

    def __init__(self, row: ExperimentRow) -> None:
        info = _info(row)
        spec = info.spec
        self.info = info
        self.spec = spec
        self.name = spec.name
        self.arms = spec.arms
        self.running = info.status is ExperimentStatus.running
        self.control = row.winner or spec.control_arm
        self.salt = spec.effective_salt
        self.salt_prefix = self.salt + HASH_SEPARATOR
        self.layer_salt = "layer:" + row.layer
        mask = bytearray(BUCKETS)
        for start, end in row.layer_ranges:
            mask[start:end] = b"\x01" * (end - start)
        self.layer_mask = bytes(mask)
        self.full_layer = all(mask)
        self.table = variant_table(row.allocation, spec.arms)
        self.shares = [info.shares[a] for a in spec.arms]
        self.targeting: Predicate | None = (
            compile_targeting(spec.targeting) if spec.targeting else None
        )
        self.start = spec.start.timestamp() if spec.start else None
        self.end = spec.end.timestamp() if spec.end else None
        self.policy: PreparedPolicy | None = None
        self.state_version = -1
        self.bandit_seed = hash64("bandit-seed", spec.name) & 0xFFFFFFFF


class Experiments:
    """The experimentation system of one project.

    Args:
        project: the project (its metadata store holds definitions, exposures, events, state).
        refresh_seconds: how stale cached definitions and bandit state may get (default 1 s).
        flush_seconds: how often buffered exposures are written (default 1 s).
    """

    def __init__(
        self,
        project: Project,
        *,
        refresh_seconds: float = 1.0,
        flush_seconds: float = 1.0,
    ) -> None:
        self.project = project
        self.store = ExperimentStore(project.db)
        self.refresh_seconds = refresh_seconds
        self.exposures = ExposureLogger(self.store.insert_exposures, flush_seconds=flush_seconds)
        self._cache: dict[str, _Compiled] = {}
        self._defs_version = -1
        self._next_check = 0.0
        self._last_forced = 0.0
        self._refresh_lock = threading.RLock()
        self._id_prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    # -- definitions ----------------------------------------------------------------------------

    def create(
        self,
        spec: ExperimentSpec | Mapping[str, Any] | str | Path,
        *,
        draft: bool = False,
    ) -> ExperimentInfo:
        """Store and (unless ``draft``) start an experiment; its units are reserved in its layer.

        ``spec`` may be an ``ExperimentSpec``, a dict (YAML/JSON data) or a path to a YAML file.
        Raises ``ExperimentExists`` if the name is taken, ``ExperimentStateError`` if the layer
        has too little free traffic, ``InvalidExperiment`` for a bad definition.
        """
        spec = _as_spec(spec)
        now = datetime.now(UTC)
        if spec.is_bandit:
            allocation: dict[str, Ranges] = {}
        else:
            allocation = reallocate(None, [(v.name, v.weight) for v in spec.variants])
        with self.project.db.write() as conn:
            if self.store.get(conn, spec.name) is not None:
                raise ExperimentExists(spec.name)
            self.store.lock_layer(conn, spec.layer_name)
            others = self.store.layer_allocations(conn, spec.layer_name)
            ranges = resize_layer_share(others, spec.name, spec.traffic, spec.layer_name)
            status = ExperimentStatus.draft if draft else ExperimentStatus.running
            row = ExperimentRow(
                name=spec.name,
                kind="bandit" if spec.is_bandit else "ab",
                status=status.value,
                spec=spec.to_dict(),
                layer=spec.layer_name,
                allocation=allocation,
                layer_ranges=ranges,
                winner=None,
                created_at=now,
                updated_at=now,
                started_at=None if draft else now,
                stopped_at=None,
            )
            self.store.insert(conn, row)
            if spec.bandit is not None:
                state = BanditState.initial(spec.bandit)
                self.store.put_bandit_state(conn, spec.name, 0, state.to_dict(), insert=True)
                self._record_allocation(conn, spec.name, spec.bandit, state, None)
            if spec.upstream:
                from flywheel.lineage import Node, record_edge

                for item in spec.upstream:
                    kind, _, node_id = item.partition(":")
                    record_edge(
                        conn, Node(kind, node_id), Node("experiment", spec.name), "tested_in"
                    )
        self._invalidate()
        return self.get(spec.name)

    def get(self, name: str) -> ExperimentInfo:
        """The stored experiment ``name`` (raises ``ExperimentNotFound``)."""
        with self.project.db.read() as conn:
            row = self.store.get(conn, name)
        if row is None:
            raise ExperimentNotFound(name)
        return _info(row)

    def list(self, status: str | None = None) -> list[ExperimentInfo]:
        """Every experiment, oldest first; optionally only those with ``status``."""
        if status is not None and status not in ExperimentStatus.__members__:
            raise InvalidExperiment("status", f"must be draft, running or stopped, got {status!r}")
        with self.project.db.read() as conn:
            return [_info(r) for r in self.store.list_all(conn, status)]

    def start(self, name: str) -> ExperimentInfo:
        """Start a draft experiment."""
        with self.project.db.write() as conn:
            row = self._require(conn, name)
            if row.status != ExperimentStatus.draft:
                raise ExperimentStateError(f"experiment {name!r} is {row.status}, not a draft")
            self.store.update(conn, name, status="running", started_at=datetime.now(UTC))
        self._invalidate()
        return self.get(name)

    def stop(self, name: str, winner: str | None = None) -> ExperimentInfo:
        """Stop ``name``: from now on every unit gets ``winner`` (default: control), unlogged.

        The experiment's layer traffic is released for other experiments.
        """
        with self.project.db.write() as conn:
            row = self._require(conn, name)
            if row.status == ExperimentStatus.stopped:
                raise ExperimentStateError(f"experiment {name!r} is already stopped")
            spec = ExperimentSpec.from_dict(row.spec)
            if winner is not None and winner not in spec.arms:
                raise InvalidExperiment(
                    "winner", f"{winner!r} is not one of {list(spec.arms)}", name
                )
            self.store.update(
                conn, name, status="stopped", stopped_at=datetime.now(UTC), winner=winner
            )
        self._invalidate()
        return self.get(name)

    def update_traffic(
        self,
        name: str,
        *,
        weights: Mapping[str, float] | None = None,
        traffic: float | None = None,
    ) -> tuple[ExperimentInfo, float]:
        """Change variant weights and/or the experiment's share of its layer.

        Weights not named keep their value; a new name adds a variant. Returns the new info and
        the share of the experiment's units that changed variant, which is the minimum possible
        (see ``flywheel.experiments._allocation``).
        """
        if weights is None and traffic is None:
            raise InvalidExperiment(
                "weights", "give new weights, a new traffic share, or both", name
            )
        with self.project.db.write() as conn:
            row = self._require(conn, name)
            if row.status == ExperimentStatus.stopped:
                raise ExperimentStateError(f"experiment {name!r} is stopped")
            data = dict(row.spec)
            moved = 0.0
            values: dict[str, Any] = {}
            if weights is not None:
                if row.kind == "bandit":
                    raise InvalidExperiment("weights", "a bandit sets its own weights", name)
                current = {v["name"]: float(v["weight"]) for v in data["variants"]}
                for variant, weight in weights.items():
                    current[str(variant)] = weight
                data["variants"] = [{"name": k, "weight": w} for k, w in current.items()]
            if traffic is not None:
                data["traffic"] = traffic
            spec = ExperimentSpec.from_dict(data)  # validates the new weights and traffic
            if weights is not None:
                allocation = reallocate(row.allocation, [(v.name, v.weight) for v in spec.variants])
                moved = moved_buckets(row.allocation, allocation) / BUCKETS
                values["allocation"] = allocation
            if traffic is not None:
                self.store.lock_layer(conn, row.layer)
                layer = self.store.layer_allocations(conn, row.layer)
                values["layer_ranges"] = resize_layer_share(layer, name, spec.traffic, row.layer)
            self.store.update(conn, name, spec=spec.to_dict(), **values)
        self._invalidate()
        return self.get(name), moved

    def _require(self, conn: Any, name: str) -> ExperimentRow:
        row = self.store.get(conn, name, for_update=True)
        if row is None:
            raise ExperimentNotFound(name)
        return row

    # -- assignment (hot path) ------------------------------------------------------------------

    def _invalidate(self) -> None:
        self._next_check = 0.0

    def _refresh(self, force: bool = False) -> None:
        """Reload what changed (definitions, bandit states) if ``refresh_seconds`` have passed.

        Threads arriving during a refresh wait for it; a failed refresh keeps the cache (and is
        retried after ``refresh_seconds``) unless there is nothing cached yet.
        """
        if not force and time.monotonic() < self._next_check:
            return
        with self._refresh_lock:
            if not force and time.monotonic() < self._next_check:
                return  # another thread refreshed while this one waited
            try:
                version, bandit_versions = self.store.versions()
                cache = self._cache
                if version != self._defs_version:
                    with self.project.db.read() as conn:
                        rows = self.store.list_all(conn)
                    fresh = {r.name: _Compiled(r) for r in rows}
                    for name, compiled in fresh.items():
                        previous = cache.get(name)
                        if previous is not None and previous.policy is not None:
                            compiled.policy = previous.policy
                            compiled.state_version = previous.state_version
                    cache = fresh
                for name, compiled in cache.items():
                    wanted = bandit_versions.get(name)
                    bandit = compiled.spec.bandit
                    if (
                        bandit is not None
                        and wanted is not None
                        and wanted != compiled.state_version
                    ):
                        self._load_policy(compiled)
                self._cache = cache  # published whole, policies loaded
                self._defs_version = version
            except Exception as exc:  # keep serving from the cache
                if not self._cache:
                    raise  # nothing to serve from: the caller sees why (and retries at once)
                log.warning("refreshing experiments failed (serving cached ones): %s", exc)
            self._next_check = time.monotonic() + self.refresh_seconds

    def _load_policy(self, compiled: _Compiled) -> None:
        assert compiled.spec.bandit is not None
        with self.project.db.read() as conn:
            row = self.store.get_bandit_state(conn, compiled.name)
        if row is None:
            return
        state = BanditState.from_dict(json.loads(row.state))
        seed = compiled.bandit_seed ^ int(row.version)
        compiled.policy = PreparedPolicy(compiled.spec.bandit, state, seed=seed)
        compiled.state_version = int(row.version)

    def _compiled(self, name: str) -> _Compiled:
        self._refresh()
        compiled = self._cache.get(name)
        if compiled is None:
            # Maybe created a moment ago (here or in another process): wait for a refresh in
            # flight, then force one, at most every 50 ms, so unknown names cannot hammer the
            # database.
            with self._refresh_lock:
                compiled = self._cache.get(name)
                now = time.monotonic()
                if compiled is None and now - self._last_forced > 0.05:
                    self._last_forced = now
                    self._refresh(force=True)
                    compiled = self._cache.get(name)
            if compiled is None:
                raise ExperimentNotFound(name)
        return compiled

    def assign(
        self, name: str, unit_id: str, context: Mapping[str, Any] | None = None
    ) -> Assignment:
        """The variant of ``unit_id`` in experiment ``name``, logging an exposure if it is in.

        A/B tests: deterministic (the same unit always gets the same variant while the weights
        stay). Bandits: drawn from the policy's current probabilities (``sticky`` bandits draw
        with the unit's hash, so a unit keeps its arm until the policy changes). ``context``
        feeds targeting and contextual bandits.
        """
        if time.monotonic() >= self._next_check:
            self._refresh()
        c = self._cache.get(name)
        if c is None:
            c = self._compiled(name)
        unit_id = str(unit_id)
        if not c.running:
            return Assignment(c.control, 1.0, name, unit_id, False, None, "not_running")
        if c.start is not None or c.end is not None:
            now = time.time()
            if (c.start is not None and now < c.start) or (c.end is not None and now >= c.end):
                return Assignment(c.control, 1.0, name, unit_id, False, None, "outside_window")
        if c.targeting is not None and not c.targeting(context or {}):
            return Assignment(c.control, 1.0, name, unit_id, False, None, "targeting")
        if not c.full_layer and not c.layer_mask[hash64(c.layer_salt, unit_id) % BUCKETS]:
            return Assignment(c.control, 1.0, name, unit_id, False, None, "traffic")
        stored_context = None
        if c.policy is None:
            if c.spec.bandit is not None:  # state not loaded yet (database down at start)
                return Assignment(c.control, 1.0, name, unit_id, False, None, "no_state")
            digest = blake2b((c.salt_prefix + unit_id).encode(), digest_size=8).digest()
            index = c.table[int.from_bytes(digest, "big") % BUCKETS]  # == hash64(salt, unit)
            propensity = c.shares[index]
        else:
            bandit = c.spec.bandit
            assert bandit is not None
            if bandit.context:
                x = context_vector(bandit, context)
                probabilities = c.policy.probabilities(x)
                stored_context = "[" + ",".join(map(repr, x.tolist())) + "]"  # JSON, fast
            else:
                probabilities = c.policy.probabilities()
            if bandit.sticky:
                u = hash_unit_interval(f"{c.salt}:{c.state_version}", unit_id)
            else:
                u = random.random()
            index = choose_arm(probabilities, u)
            propensity = float(probabilities[index])
        variant = c.arms[index]
        decision_id = f"{self._id_prefix}{next(self._counter):x}"
        self.exposures.add(
            (decision_id, name, unit_id, variant, propensity, stored_context, time.time())
        )
        return Assignment(variant, propensity, name, unit_id, True, decision_id)

    def flush(self) -> int:
        """Write buffered exposures now (they are written every second anyway)."""
        return self.exposures.flush()

    def close(self) -> None:
        """Flush exposures and stop the background writer."""
        self.exposures.close()

    def __enter__(self) -> Experiments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events and rewards ---------------------------------------------------------------------

    def log_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Store metric events in one transaction; returns how many were new.

        Each event: ``unit_id``, ``event_type`` (e.g. ``click``, ``purchase``), ``value``
        (default 1.0), ``ts`` (epoch seconds, default now), optional ``event_id`` (makes retries
        idempotent), ``experiment`` and ``decision_id`` (for bandit rewards).
        """
        rows = [event_row(e, i) for i, e in enumerate(events)]
        with self.project.db.write() as conn:
            return self.store.insert_events(conn, rows)

    def log_reward(
        self,
        name: str,
        unit_id: str,
        reward: float,
        *,
        decision_id: str | None = None,
        ts: float | None = None,
        event_id: str | None = None,
    ) -> int:
        """Log one reward for experiment ``name`` (see ``log_rewards``)."""
        row = {"unit_id": unit_id, "reward": reward, "decision_id": decision_id, "ts": ts}
        if event_id:
            row["event_id"] = event_id
        return self.log_rewards(name, [row])

    def log_rewards(
        self, name: str, rewards: Iterable[Mapping[str, Any]], *, update: bool = True
    ) -> int:
        """Log a batch of rewards (``unit_id``, ``reward``, optional ``decision_id``, ``ts``,
        ``event_id``) and, for a bandit, fold them into its shared state at once.

        A reward names its decision by ``decision_id`` (from ``Assignment``) or, without one,
        goes to the unit's latest exposure in the experiment. Returns rewards newly stored.
        """
        spec = self.get(name).spec
        event_type = _reward_event(spec)
        rows = []
        for i, r in enumerate(rewards):
            if not isinstance(r, Mapping):
                raise InvalidExperiment(f"rewards[{i}]", "must be a mapping", name)
            if "reward" not in r:
                raise InvalidExperiment(f"rewards[{i}].reward", "is required", name)
            event = {
                "unit_id": r.get("unit_id"),
                "event_type": event_type,
                "value": r["reward"],
                "ts": r.get("ts"),
                "event_id": r.get("event_id"),
                "experiment": name,
                "decision_id": r.get("decision_id"),
            }
            rows.append(event_row(event, i, field="rewards"))
        with self.project.db.write() as conn:
            inserted = self.store.insert_events(conn, rows)
        if update and spec.bandit is not None:
            self.update_bandit(name)
        return inserted

    def update_bandit(self, name: str) -> BanditState:
        """Fold every pending reward of bandit ``name`` into its stored state (idempotent).

        Rewards whose exposure is not stored yet stay pending (exposures are flushed first in
        this process); after ``ORPHAN_REWARD_SECONDS`` they are dropped.
        """
        info = self.get(name)
        bandit = info.spec.bandit
        if bandit is None:
            raise InvalidExperiment("bandit", "is not a bandit experiment", name)
        self.flush()
        arm_index = {arm: i for i, arm in enumerate(bandit.arms)}
        with self.project.db.write() as conn:
            row = self.store.get_bandit_state(conn, name, for_update=True)
            state = (
                BanditState.from_dict(json.loads(row.state))
                if row is not None
                else BanditState.initial(bandit)
            )
            pending = self.store.pending_rewards(conn, name, REWARD_BATCH)
            if not pending:
                return state
            by_decision = self.store.exposures_by_decision(
                conn, [p.decision_id for p in pending if p.decision_id]
            )
            by_unit = self.store.latest_exposures(
                conn, name, sorted({p.unit_id for p in pending if not p.decision_id})
            )
            arms, values, contexts, applied = [], [], [], []
            now = time.time()
            for p in pending:
                exposure = None
                if p.decision_id:
                    exposure = by_decision.get(p.decision_id)
                    if exposure is not None and exposure.experiment != name:
                        exposure = None
                else:
                    candidates = by_unit.get(p.unit_id, [])
                    before = [x for x in candidates if x.ts <= p.ts]
                    exposure = (before or candidates or [None])[-1]
                if exposure is None or exposure.variant not in arm_index:
                    if now - p.ts > ORPHAN_REWARD_SECONDS:
                        applied.append(p.id)
                    continue
                arms.append(arm_index[exposure.variant])
                values.append(float(p.value))
                if bandit.context:
                    contexts.append(json.loads(exposure.context))
                applied.append(p.id)
            if arms:
                state = state.updated(
                    np.asarray(arms),
                    np.asarray(values),
                    np.asarray(contexts) if bandit.context else None,
                )
                self.store.put_bandit_state(
                    conn, name, state.version, state.to_dict(), insert=row is None
                )
                self._record_allocation(
                    conn, name, bandit, state, np.asarray(contexts) if bandit.context else None
                )
            self.store.mark_applied(conn, applied)
        self._invalidate()
        return state

    def _record_allocation(
        self,
        conn: Any,
        name: str,
        bandit: Any,
        state: BanditState,
        contexts: np.ndarray | None,
    ) -> None:
        """Store the arm probabilities of ``state`` in the allocation history.

        The policy is seeded exactly as ``policy()`` and the assignment cache seed it, so the
        recorded probabilities are the ones units were assigned with. A contextual bandit's
        probabilities depend on the context: the mean over ``contexts`` (the rewards just folded
        in) is recorded, uniform before any.
        """
        k = len(bandit.arms)
        if bandit.policy.contextual:
            if contexts is None or len(contexts) == 0:
                probabilities = np.full(k, 1.0 / k)
            else:
                prepared = PreparedPolicy(bandit, state, seed=_policy_seed(name, state.version))
                probabilities = prepared.probabilities_batch(contexts).mean(axis=0)
        else:
            prepared = PreparedPolicy(bandit, state, seed=_policy_seed(name, state.version))
            probabilities = prepared.probabilities()
        self.store.add_bandit_history(
            conn,
            name,
            state.version,
            probabilities.tolist(),
            state.pulls.tolist(),
            contextual=bandit.policy.contextual,
            ts=time.time(),
        )

    def bandit_state(self, name: str) -> BanditState:
        """The stored state of bandit ``name``."""
        info = self.get(name)
        if info.spec.bandit is None:
            raise InvalidExperiment("bandit", "is not a bandit experiment", name)
        with self.project.db.read() as conn:
            row = self.store.get_bandit_state(conn, name)
        if row is None:
            return BanditState.initial(info.spec.bandit)
        return BanditState.from_dict(json.loads(row.state))

    def policy(self, name: str) -> PreparedPolicy:
        """The current policy of bandit ``name`` (its arm probabilities, for inspection)."""
        info = self.get(name)
        if info.spec.bandit is None:
            raise InvalidExperiment("bandit", "is not a bandit experiment", name)
        state = self.bandit_state(name)
        return PreparedPolicy(info.spec.bandit, state, seed=_policy_seed(name, state.version))

    def update_all_bandits(self) -> int:
        """Apply pending rewards of every running bandit; returns how many were updated."""
        updated = 0
        for info in self.list("running"):
            if info.spec.bandit is not None:
                with self.project.db.read() as conn:
                    pending = self.store.count_pending(conn, info.name)
                if pending:
                    self.update_bandit(info.name)
                    updated += 1
        return updated

    # -- analysis -------------------------------------------------------------------------------

    def report(self, name: str, *, pre_period_days: float = 14.0) -> Any:
        """The analysis of experiment ``name`` (a ``Report``; ``.to_dict()`` for JSON)."""
        from flywheel.experiments._analysis import build_report

        self.flush()
        info = self.get(name)
        state, policy = self._bandit_view(info)
        return build_report(
            self.store, info, pre_period_days=pre_period_days, bandit_state=state, policy=policy
        )

    def history(
        self, name: str, *, metric: str | None = None, buckets: int = 50, **span: Any
    ) -> Any:
        """How experiment ``name`` evolved (a ``History``; ``.to_dict()`` for JSON).

        A/B tests: ``metric`` (default: the primary) at ``buckets`` evenly spaced times from the
        first exposure to the last exposure or event, each point computed from the units exposed
        and the events logged up to then: units per variant, means, and per treatment the
        difference with its confidence interval, the fixed-horizon p-value and the always-valid
        (sequential) p-value. Bandits: the arm probabilities recorded at every state update.
        ``since=``/``until=`` (Unix seconds) narrow the time range.
        """
        from flywheel.experiments._history import build_history

        self.flush()
        return build_history(self.store, self.get(name), metric=metric, buckets=buckets, **span)

    def evaluate(self, name: str, target: str | Callable[..., Any]) -> Any:
        """Offline evaluation of a ``target`` policy on the logged decisions of ``name``.

        ``target`` is ``"arm:NAME"`` (always that arm), ``"uniform"``, ``"current"`` (the
        bandit's current policy) or a callable ``(contexts (N, d) | None, n) -> (N, K)``
        probabilities. Returns an ``OffPolicyReport`` with replay, IPS, SNIPS and DR estimates.
        """
        from flywheel.experiments._ope import evaluate_logged

        self.flush()
        info = self.get(name)
        _, policy = self._bandit_view(info)
        return evaluate_logged(self.store, info, target, policy=policy)

    def _bandit_view(
        self, info: ExperimentInfo
    ) -> tuple[BanditState | None, PreparedPolicy | None]:
        """A bandit's current state and policy (both None for an A/B test)."""
        if info.spec.bandit is None:
            return None, None
        return self.bandit_state(info.name), self.policy(info.name)


def _policy_seed(name: str, version: int) -> int:
    """The seed of a bandit's Monte-Carlo propensities for one state version (the hot path's
    ``_Compiled.bandit_seed ^ version``)."""
    return (hash64("bandit-seed", name) & 0xFFFFFFFF) ^ int(version)


def _as_spec(spec: ExperimentSpec | Mapping[str, Any] | str | Path) -> ExperimentSpec:
    if isinstance(spec, ExperimentSpec):
        return ExperimentSpec.from_dict(spec.to_dict())  # re-validate a hand-built spec
    if isinstance(spec, str | Path):
        return ExperimentSpec.from_yaml(spec)
    return ExperimentSpec.from_dict(spec)


def _reward_event(spec: ExperimentSpec) -> str:
    if spec.bandit is not None:
        return spec.bandit.reward_event
    return spec.metrics[0].event if spec.metrics else "reward"


__all__ = ["Assignment", "ExperimentInfo", "Experiments"]
