"""Keeping the garbage collector's full collections off the request path.

A serving process holds a few hundred thousand long-lived objects (torch, scikit-learn, the web
framework, the loaded models). CPython's generation-2 collection walks all of them: on this
2-core machine 250-570 ms with the loop stopped, several times a minute under load (each one
was a run's p99, and the 504s of requests it caught). ``gc.freeze`` moves every object alive now
into a permanent generation that collections skip; what requests allocate afterwards is still
collected as before. The server freezes once its production versions are loaded (after one full
collection, so that nothing collectable is frozen), and again after each later version load
(without the full collection, which would stop the loop for as long as the pause it avoids;
garbage alive at that moment stays, a bounded cost per load).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("flywheel.serving")


def freeze_heap(*, collect: bool) -> int:
    """Move every live object out of the collector's reach (``gc.freeze``); with ``collect``,
    run a full collection first. Returns the number of frozen objects."""
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d objects out of the garbage collector's generations", frozen)
    return frozen


__all__ = ["freeze_heap"]
