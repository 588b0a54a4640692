"""HTTP routes of the recommender: ``GET /recommendations/{user_id}`` and ``POST /events``.

Reads need a ``reader`` token, ``POST /events`` a ``writer`` token. One ``OnlineRecommender``
per project and process, built on first use (or at start-up by ``recsys_service`` under
``flywheel up``). Until ``flywheel recs ingest`` has run, both routes answer 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project, current_project
from flywheel.recsys._online import Event, OnlineRecommender, RecsysSettings
from flywheel.recsys._state import NewItem

log = logging.getLogger(__name__)

router = APIRouter(tags=["recsys"])

_recommenders: dict[int, tuple[Project, OnlineRecommender]] = {}
_lock = threading.Lock()

_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input; the message names the field."},
    404: {"description": "Nothing ingested yet (run `flywheel recs ingest`)."},
}


def settings_for(project: Project) -> RecsysSettings:
    """``RecsysSettings`` from the ``recsys:`` section of the project's config."""
    cfg = getattr(project.config, "recsys", None)
    if cfg is None:
        return RecsysSettings()
    return RecsysSettings(
        deadline_ms=cfg.deadline_ms,
        feature_budget=cfg.feature_budget,
        experiment=cfg.experiment,
        strategy=cfg.strategy,
        explore_experiment=cfg.explore_experiment,
        explore_slots=tuple(cfg.explore_slots),
        diversity=cfg.diversity,
        blocked_items=tuple(cfg.blocked_items),
        content_method=cfg.content_method,
        two_tower_model=cfg.two_tower_model,
        ranker_endpoint=cfg.ranker_endpoint,
        ranker_budget=cfg.ranker_budget,
    )


def recommender_for(project: Project) -> OnlineRecommender:
    """The process's ``OnlineRecommender`` of ``project`` (built, and fitted, on first use)."""
    entry = _recommenders.get(id(project))
    if entry is None or entry[0] is not project:
        with _lock:
            entry = _recommenders.get(id(project))
            if entry is None or entry[0] is not project:
                entry = (project, OnlineRecommender(project, settings_for(project)))
                _recommenders[id(project)] = entry
    return entry[1]


def set_recommender(project: Project, recommender: OnlineRecommender | None) -> None:
    """Install (or with ``None`` drop and close) the recommender used for ``project``."""
    with _lock:
        old = _recommenders.pop(id(project), None)
        if recommender is not None:
            _recommenders[id(project)] = (project, recommender)
    if old is not None and old[1] is not recommender:
        old[1].close()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(_Body):
    user_id: int = Field(ge=0, le=2**62, description="The user (CustomerID).")
    item_id: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$", description="StockCode."
    )
    event_type: Literal["view", "click", "add_to_cart", "purchase"]
    timestamp: datetime | None = Field(default=None, description="Event time (default: now).")
    event_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Makes retries idempotent."
    )


class EventsIn(_Body):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsOut(BaseModel):
    accepted: int
    ids: list[str]


class ItemOut(BaseModel):
    item_id: str
    score: float
    reasons: list[str]
    category: str


class RecommendationsOut(BaseModel):
    user_id: int
    surface: str
    items: list[ItemOut]
    experiment_variant: str | None
    strategy: str
    model_versions: dict[str, str]
    latency_ms: dict[str, float]
    fallbacks: list[str]


@router.get("/recommendations/{user_id}", response_model=RecommendationsOut, responses=_errors)
def get_recommendations(
    user_id: int = Path(ge=0, le=2**62),
    k: int = Query(20, ge=1, le=500),
    surface: Literal["home", "product"] = "home",
    item_id: str | None = Query(None, min_length=1, max_length=64),
    category: str | None = Query(
        None, min_length=1, max_length=64, description="The category the user browses (context)."
    ),
    new_only: bool = Query(False, description="Leave out what the user already bought."),
    deadline_ms: float | None = Query(None, gt=0, le=10_000),
    project: Project = Depends(current_project),
    _: Principal = Depends(require_reader),
) -> dict[str, Any]:
    """Top-``k`` items with scores, reasons (generators), experiment variant, model versions,
    the fallbacks taken and a per-stage latency breakdown (ms)."""
    rec = recommender_for(project)
    out = rec.recommend(
        user_id,
        k,
        surface=surface,
        item_id=item_id,
        category=category,
        new_only=new_only,
        deadline_ms=deadline_ms,
    )
    return out.to_dict()


@router.post("/events", response_model=EventsOut, responses=_errors)
def post_events(
    body: EventsIn,
    project: Project = Depends(current_project),
    _: Principal = Depends(require_writer),
) -> EventsOut:
    """Append view / click / add_to_cart / purchase events (all or none) to the ``recs_events``
    stream; the next recommendation of the user reflects them."""
    rec = recommender_for(project)
    result = rec.record_events(
        [Event(e.user_id, e.item_id, e.event_type, e.timestamp, e.event_id) for e in body.events]
    )
    return EventsOut(accepted=result.count, ids=result.ids)


class ItemIn(_Body):
    item_id: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$", description="StockCode."
    )
    description: str = Field(min_length=1, max_length=500, description="Product text.")
    price: float | None = Field(default=None, ge=0, le=1e9)
    category: str | None = Field(
        default=None, min_length=1, max_length=64, description="Default: from the description."
    )


class ItemsIn(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


@router.post("/items", response_model=EventsOut, responses=_errors)
def post_items(
    body: ItemsIn,
    project: Project = Depends(current_project),
    _: Principal = Depends(require_writer),
) -> EventsOut:
    """Add new products (all or none): each gets a content embedding and enters the indexes at
    once, and can be shown through the exploration slots; other processes follow."""
    rec = recommender_for(project)
    result = rec.add_items(
        [NewItem(i.item_id, i.description, i.price, i.category) for i in body.items]
    )
    return EventsOut(accepted=result.count, ids=result.ids)


@contextlib.asynccontextmanager
async def recsys_service(project: Project) -> AsyncIterator[None]:
    """``flywheel up``: fit the recommender and open its stores at start-up (when data was
    ingested), so that the first request does not pay for it."""

    def warm() -> None:
        try:
            rec = recommender_for(project)
        except Exception as exc:  # nothing ingested yet: the routes say so on use
            log.info("recsys not ready: %s", exc)
            return
        rec.warm_up()

    await asyncio.to_thread(warm)
    try:
        yield
    finally:
        set_recommender(project, None)
