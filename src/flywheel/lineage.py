"""Lineage: the thread from a raw event to the model version serving a user.

Every system records what it made from what as edges between ``Node``s
(``data_source -> feature_view -> feature_service -> training_dataset -> run -> model_version ->
endpoint -> experiment``). The graph lives in one table of the metadata store, so any object can
answer "what made you" (``upstream``) and "what did you make" (``downstream``) across systems
without any system reading another's tables.

Node ids are the object's stable, human-readable id in its system: ``"user_stats@v2"`` for a
feature view version, ``"ranker/3"`` for a model version, a run id, an endpoint name.
Recording the same edge twice is a no-op.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa

from flywheel.errors import FlywheelError
from flywheel.metadata import Database

NodeKind = Literal[
    "data_source",
    "event_stream",
    "feature_view",
    "feature_service",
    "training_dataset",
    "run",
    "job",
    "model_version",
    "endpoint",
    "experiment",
]
NODE_KINDS: tuple[str, ...] = NodeKind.__args__  # type: ignore[attr-defined]

_edges = sa.table(
    "lineage_edges",
    sa.column("src_kind", sa.String),
    sa.column("src_id", sa.String),
    sa.column("dst_kind", sa.String),
    sa.column("dst_id", sa.String),
    sa.column("relation", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True, order=True)
class Node:
    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise FlywheelError(f"lineage node kind {self.kind!r} is not one of {NODE_KINDS}")
        if not self.id:
            raise FlywheelError(f"lineage node of kind {self.kind!r} needs a non-empty id")

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Edge:
    src: Node
    dst: Node
    relation: str


@dataclass
class LineageGraph:
    """A connected piece of the graph around ``root``: its nodes and edges, both directions."""

    root: Node
    nodes: set[Node] = field(default_factory=set)
    edges: list[Edge] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "root": {"kind": self.root.kind, "id": self.root.id},
            "nodes": [{"kind": n.kind, "id": n.id} for n in sorted(self.nodes)],
            "edges": [
                {"src": str(e.src), "dst": str(e.dst), "relation": e.relation}
                for e in sorted(self.edges, key=lambda e: (str(e.src), str(e.dst)))
            ],
        }


def record_edge(
    conn_or_db: Database | sa.Connection, src: Node, dst: Node, relation: str = "derived"
) -> None:
    """Record ``src -> dst`` (``dst`` was made from ``src``). Idempotent.

    Pass an open connection to record the edge in the caller's transaction (so the edge and the
    object it describes commit together), or a ``Database`` to write it on its own.
    """
    if isinstance(conn_or_db, Database):
        with conn_or_db.write() as conn:
            record_edge(conn, src, dst, relation)
        return
    conn = conn_or_db
    exists = conn.execute(
        sa.select(sa.literal(1)).where(
            _edges.c.src_kind == src.kind,
            _edges.c.src_id == src.id,
            _edges.c.dst_kind == dst.kind,
            _edges.c.dst_id == dst.id,
        )
    ).first()
    if exists is None:
        conn.execute(
            _edges.insert().values(
                src_kind=src.kind,
                src_id=src.id,
                dst_kind=dst.kind,
                dst_id=dst.id,
                relation=relation,
                created_at=datetime.now(UTC),
            )
        )


def _walk(db: Database, root: Node, direction: Literal["up", "down"], depth: int) -> LineageGraph:
    graph = LineageGraph(root=root, nodes={root})
    frontier: deque[tuple[Node, int]] = deque([(root, 0)])
    seen = {root}
    with db.read() as conn:
        while frontier:
            node, d = frontier.popleft()
            if d >= depth:
                continue
            if direction == "up":
                where = (_edges.c.dst_kind == node.kind) & (_edges.c.dst_id == node.id)
            else:
                where = (_edges.c.src_kind == node.kind) & (_edges.c.src_id == node.id)
            for row in conn.execute(sa.select(_edges).where(where)).all():
                src, dst = Node(row.src_kind, row.src_id), Node(row.dst_kind, row.dst_id)
                graph.edges.append(Edge(src, dst, row.relation))
                other = src if direction == "up" else dst
                graph.nodes.add(other)
                if other not in seen:
                    seen.add(other)
                    frontier.append((other, d + 1))
    return graph


def upstream(db: Database, node: Node, depth: int = 20) -> LineageGraph:
    """Everything ``node`` was made from, transitively ("what made you")."""
    return _walk(db, node, "up", depth)


def downstream(db: Database, node: Node, depth: int = 20) -> LineageGraph:
    """Everything made from ``node``, transitively ("what did you make")."""
    return _walk(db, node, "down", depth)


def lineage(db: Database, node: Node, depth: int = 20) -> LineageGraph:
    """Upstream and downstream of ``node`` in one graph."""
    up, down = upstream(db, node, depth), downstream(db, node, depth)
    return LineageGraph(root=node, nodes=up.nodes | down.nodes, edges=up.edges + down.edges)


__all__ = [
    "NODE_KINDS",
    "Edge",
    "LineageGraph",
    "Node",
    "NodeKind",
    "downstream",
    "lineage",
    "record_edge",
    "upstream",
]
