"""Exploration slots: which source fills them (a bandit, ``explore_experiment``) and the rows.

Arms (``EXPLORE_ARMS``): ``new-items`` (the newest catalogue items closest to the user's
taste), ``category-trending`` (past the head of the categories in context) and ``content``
(the long tail closest to the user's taste). Only a live process explores: the offline
replay of the pipeline has no exploration slots.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flywheel.experiments import Experiments
    from flywheel.recsys._pipeline import RecsysSettings, UserContext
    from flywheel.recsys._state import OnlineState

log = logging.getLogger(__name__)

EXPLORE_ARMS = ("new-items", "category-trending", "content")
NEW_ITEM_WINDOW_S = 7 * 86_400.0  # how long an added item counts as "new" for exploration


class Explorer:
    """Chooses the exploration arm for a user (the bandit) and the rows that fill the slots."""

    def __init__(
        self,
        state: OnlineState,
        settings: RecsysSettings,
        experiments: Callable[[], Experiments],
    ) -> None:
        self.state = state
        self.settings = settings
        self._experiments = experiments
        self._checked: str | None = None

    def choose(
        self,
        user_id: int,
        ctx: UserContext,
        surface: str,
        anchor: str | None,
        context_category: str | None,
        taken: set[int],
        slots: int,
        fallbacks: list[str],
    ) -> tuple[str | None, str | None, list[int]]:
        """(arm, decision id, rows) of the exploration items, chosen by the bandit."""
        name = self.settings.explore_experiment
        if not name or slots <= 0:
            return None, None, []
        try:
            exps = self._experiments()
            self._ensure(exps, name)
            assignment = exps.assign(name, str(user_id), {"surface": surface})
        except Exception as exc:
            log.debug("exploration off: %s", exc)
            fallbacks.append("experiment_error")
            return None, None, []
        if not assignment.in_experiment:
            return None, None, []
        arm = assignment.variant
        profile_items = (
            ([anchor] if anchor else []) + ctx.recent_items + self.state.history(user_id)
        )
        rows = self.rows(arm, profile_items, ctx, context_category, taken, slots)
        return arm, assignment.decision_id, rows

    def rows(
        self,
        arm: str,
        profile_items: list[str],
        ctx: UserContext,
        context_category: str | None,
        taken: set[int],
        slots: int,
    ) -> list[int]:
        st = self.state
        profile = st.content_profile(list(dict.fromkeys(profile_items))[:20])
        if arm == "new-items":
            now = time.time()
            with st.lock:
                added = [r for r, at in st.new_items if now - at <= NEW_ITEM_WINDOW_S]
            added = [r for r in reversed(added) if r not in taken]  # newest first
            # then the catalogue's newest arrivals (by first sale in the ingested data)
            arrivals = [int(r) for r in st.newest_rows[:200].tolist() if int(r) not in taken]
            picked: list[int] = []
            for group in (added, arrivals):
                if profile is not None and group:
                    sims = st.content[np.asarray(group)] @ profile
                    group = [group[i] for i in np.argsort(-sims, kind="stable").tolist()]
                picked += group[: slots - len(picked)]
                if len(picked) >= slots:
                    break
            return picked
        if arm == "category-trending":
            cats = [context_category] if context_category else []
            cats += sorted(ctx.category_counts, key=lambda c: -ctx.category_counts[c])
            trend = st.trending.scores
            for cat in cats:
                rows = st.category_rows.get(cat)
                if rows is None or not len(rows):
                    continue
                rows = rows[rows < len(trend)]  # items added after `trend` was read
                order = rows[np.argsort(-trend[rows], kind="stable")]
                # past the head of the category: the head is on the page already
                pick = [int(r) for r in order[5:].tolist() if int(r) not in taken]
                if pick:
                    return pick[:slots]
            # no category in context: rising items, just below the head of trending
            head = st.trending_top(20 + 100)[0]
            rising = [int(r) for r in head[20:].tolist() if int(r) not in taken]
            return rising[:slots]
        if arm == "content" and profile is not None and st.content_index is not None:
            ids, _ = st.content_index.search(profile[None, :].astype(np.float32), 100)
            near = [st.item_index[i] for i in ids[0] if i in st.item_index]
            # the long tail of the user's taste: skip the nearest 20, which retrieval covers
            return [r for r in near[20:] if r not in taken][:slots]
        return []

    def _ensure(self, exps: Experiments, name: str) -> None:
        if self._checked == name:
            return
        from flywheel.experiments import ExperimentExists, ExperimentNotFound

        try:
            exps.get(name)
        except ExperimentNotFound:
            with contextlib.suppress(ExperimentExists):
                exps.create(
                    {
                        "name": name,
                        "description": "Which source fills the recommender's exploration slots.",
                        "bandit": {
                            "policy": "thompson",
                            "arms": list(EXPLORE_ARMS),
                            "min_exploration": 0.05,
                            "reward_event": "explore_reward",
                        },
                        "tags": {"system": "recsys"},
                    }
                )
        self._checked = name

    # -- the request --------------------------------------------------------------------------
