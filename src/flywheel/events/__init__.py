"""The event log: append-only streams consumed by groups of consumers (shared ground).

Used by features' push and stream processors, experiments' event consumer and the
recommender's catalogue follower. The backend is picked by the URL's scheme in
``flywheel.yaml``'s ``event_log`` key: ``sqlite:///PATH`` (embedded, the default) or
``redis://HOST:PORT/DB[?prefix=...]`` (Redis Streams with consumer groups).

Public API: ``open_event_log(url, namespace=)`` returns an ``EventLog`` (the contract is in its
docstring); an ``Event`` is ``(id, payload)``; ``EventLogError`` is raised for a bad URL.
"""

from __future__ import annotations

from flywheel.events._log import EVENT_LOGS, Event, EventLog, EventLogError, open_event_log

__all__ = ["EVENT_LOGS", "Event", "EventLog", "EventLogError", "open_event_log"]
