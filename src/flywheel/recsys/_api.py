"""HTTP routes of the recommender: ``GET /recommendations/{user_id}`` and ``POST /events``.

Reads need a ``reader`` token, ``POST /events`` a ``writer`` token. One ``OnlineRecommender``
per app, on ``app.state.recsys`` (built at start-up by the router's lifespan, or on first
use). Until ``flywheel recs ingest`` has run, both routes answer 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project
from flywheel.recsys._online import Event, OnlineRecommender
from flywheel.recsys._pipeline import settings_for
from flywheel.recsys._state import NewItem

log = logging.getLogger(__name__)


class RecommenderSlot:
    """The app's ``OnlineRecommender`` (on ``app.state.recsys``), built and fitted on first
    use or at start-up, closed when the app stops. No process-global registry: two apps in one
    process (tests, a reload) each own theirs."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._rec: OnlineRecommender | None = None
        self._lock = threading.Lock()

    def get(self) -> OnlineRecommender:
        rec = self._rec
        if rec is None:
            with self._lock:
                if self._rec is None:
                    self._rec = OnlineRecommender(self.project, settings_for(self.project))
                rec = self._rec
        return rec

    def warm(self) -> None:
        try:
            rec = self.get()
        except Exception as exc:  # nothing ingested yet: the routes say so on use
            log.info("recsys not ready: %s", exc)
            return
        rec.warm_up()

    def close(self) -> None:
        with self._lock:
            rec, self._rec = self._rec, None
        if rec is not None:
            rec.close()


def recommender_slot(app: Any) -> RecommenderSlot:
    """The ``RecommenderSlot`` of a FastAPI ``app`` (created on first call)."""
    slot = getattr(app.state, "recsys", None)
    if slot is None:
        slot = app.state.recsys = RecommenderSlot(app.state.project)
    return slot


def _recommender(request: Request) -> OnlineRecommender:
    return recommender_slot(request.app).get()


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """Fit the recommender and open its stores at start-up (when data was ingested), so that
    the first request does not pay for it; close it when the app stops."""
    slot = recommender_slot(app)
    await asyncio.to_thread(slot.warm)
    try:
        yield
    finally:
        slot.close()


router = APIRouter(tags=["recsys"], lifespan=_lifespan)

_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input; the message names the field."},
    404: {"description": "Nothing ingested yet (run `flywheel recs ingest`)."},
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(_Body):
    user_id: int = Field(ge=0, le=2**62 - 1024, description="The user (CustomerID).")
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
    preview: bool = Field(description="True: a preview (no enrolment, exposure or event).")


@router.get("/recommendations/{user_id}", response_model=RecommendationsOut, responses=_errors)
def get_recommendations(
    user_id: int = Path(ge=0, le=2**62 - 1024),
    k: int = Query(20, ge=1, le=500),
    surface: Literal["home", "product"] = "home",
    item_id: str | None = Query(None, min_length=1, max_length=64),
    category: str | None = Query(
        None, min_length=1, max_length=64, description="The category the user browses (context)."
    ),
    new_only: bool = Query(False, description="Leave out what the user already bought."),
    deadline_ms: float | None = Query(None, gt=0, le=10_000),
    preview: bool = Query(
        False,
        description="Served as usual, but no experiment enrolment (no exposure), no "
        "exploration slots and nothing logged; the answer says `preview: true`.",
    ),
    _: Principal = Depends(require_reader),
    rec: OnlineRecommender = Depends(_recommender),
) -> dict[str, Any]:
    """Top-``k`` items with scores, reasons (generators), experiment variant, model versions,
    the fallbacks taken and a per-stage latency breakdown (ms)."""
    out = rec.recommend(
        user_id,
        k,
        surface=surface,
        item_id=item_id,
        category=category,
        new_only=new_only,
        deadline_ms=deadline_ms,
        preview=preview,
    )
    return out.to_dict()


@router.post("/events", response_model=EventsOut, responses=_errors)
def post_events(
    body: EventsIn,
    _: Principal = Depends(require_writer),
    rec: OnlineRecommender = Depends(_recommender),
) -> EventsOut:
    """Append view / click / add_to_cart / purchase events (all or none) to the ``recs_events``
    stream; the next recommendation of the user reflects them."""
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
    _: Principal = Depends(require_writer),
    rec: OnlineRecommender = Depends(_recommender),
) -> EventsOut:
    """Add new products (all or none): each gets a content embedding and enters the indexes at
    once, and can be shown through the exploration slots; other processes follow."""
    result = rec.add_items(
        [NewItem(i.item_id, i.description, i.price, i.category) for i in body.items]
    )
    return EventsOut(accepted=result.count, ids=result.ids)


@contextlib.asynccontextmanager
async def recsys_service(project: Project) -> AsyncIterator[None]:
    """``flywheel up``'s service hook: nothing to run beside the app. The recommender lives on
    the app (``app.state.recsys``) and the router's lifespan warms and closes it."""
    del project
    yield
