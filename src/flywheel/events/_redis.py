"""Redis Streams event log: ``XADD`` in a ``MULTI``, consumer groups, ``XACK`` after the write,
``XAUTOCLAIM`` to take over a dead consumer's events. Keys: ``PREFIX stream:NAME``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flywheel._resp import (
    FastParser,
    PerThread,
    RespConnection,
    RespError,
    StreamEntries,
    connection_args,
    pack,
    parse_stream_entries,
    split_prefix,
)
from flywheel.errors import ServiceUnavailable
from flywheel.events._log import Event


class RedisEventLog:
    """``redis://host:port/db`` with an optional ``?prefix=`` (default ``fw:NAMESPACE:``)."""

    def __init__(self, url: str, *, namespace: str = "flywheel") -> None:
        import redis

        clean, self.prefix = split_prefix(url, f"fw:{namespace}:")
        self._redis = redis
        self.client = redis.Redis.from_url(clean, socket_connect_timeout=5)
        self._groups: set[tuple[str, str]] = set()
        self._fast_args = None if url.startswith("rediss") else connection_args(self.client)
        self._conns = PerThread(self._fast_args) if self._fast_args is not None else None

    def _raw(
        self, packed: list[bytes], timeout: float = 10.0, fast: FastParser | None = None
    ) -> list[Any]:
        assert self._conns is not None
        conn: RespConnection | None = None
        try:
            conn = self._conns.get()
            conn.set_timeout(timeout)
            replies = conn.execute(packed, fast)
        except (OSError, ConnectionError, ValueError) as exc:
            self._conns.discard(conn)
            raise ServiceUnavailable(f"event log (Redis) unreachable: {exc}") from None
        for r in replies:
            if isinstance(r, RespError):
                raise self._redis.ResponseError(str(r))
        return replies

    def _key(self, stream: str) -> str:
        return f"{self.prefix}stream:{stream}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._redis.ConnectionError as exc:
            raise ServiceUnavailable(f"event log (Redis) unreachable: {exc}") from None

    def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        if self._fast_args is not None:
            bkey = self._key(stream).encode()
            cmds = [pack([b"MULTI"])]
            cmds += [pack([b"XADD", bkey, b"*", b"p", p]) for p in payloads]
            cmds.append(pack([b"EXEC"]))
            ids = self._raw(cmds)[-1]
            return [i.decode() for i in ids]
        pipe = self.client.pipeline(transaction=True)
        key = self._key(stream)
        for p in payloads:
            pipe.xadd(key, {"p": p})
        ids = self._call(pipe.execute)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def _ensure_group(self, stream: str, group: str) -> None:
        if (stream, group) in self._groups:
            return
        try:
            self._call(self.client.xgroup_create, self._key(stream), group, id="0", mkstream=True)
        except self._redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((stream, group))

    @staticmethod
    def _events(entries: Any) -> list[Event]:
        out: list[Event] = []
        for eid, fields in entries or []:
            if not fields:  # deleted entry still pending
                continue
            payload = fields[b"p"] if isinstance(fields, dict) else fields[1]
            out.append((eid.decode() if isinstance(eid, bytes) else eid, payload))
        return out

    def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Event]:
        self._ensure_group(stream, group)
        key = self._key(stream)
        if self._fast_args is not None:
            return self._read_fast(key, group, consumer, count, block_ms)
        mine = self._call(self.client.xreadgroup, group, consumer, {key: "0"}, count=count)
        events = self._events(mine[0][1]) if mine else []
        if events:
            return events
        new = self._call(
            self.client.xreadgroup,
            group,
            consumer,
            {key: ">"},
            count=count,
            block=max(1, block_ms) if block_ms > 0 else None,
        )
        return self._events(new[0][1]) if new else []

    def _read_fast(
        self, key: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Event]:
        head = [b"XREADGROUP", b"GROUP", group.encode(), consumer.encode(), b"COUNT", b"%d" % count]
        tail = [b"STREAMS", key.encode()]
        (mine,) = self._raw([pack([*head, *tail, b"0"])], fast=parse_stream_entries)
        events = self._reply_events(mine)
        if events:
            return events
        block = [b"BLOCK", b"%d" % max(1, block_ms)] if block_ms > 0 else []
        (new,) = self._raw(
            [pack([*head, *block, *tail, b">"])],
            timeout=block_ms / 1000 + 10,
            fast=parse_stream_entries,
        )
        return self._reply_events(new)

    def read_pending(self, stream: str, group: str, consumer: str, count: int) -> list[Event]:
        return self._read_from(stream, group, consumer, count, "0")

    def read_new(self, stream: str, group: str, consumer: str, count: int) -> list[Event]:
        return self._read_from(stream, group, consumer, count, ">")

    def _read_from(
        self, stream: str, group: str, consumer: str, count: int, at: str
    ) -> list[Event]:
        self._ensure_group(stream, group)
        key = self._key(stream)
        if self._fast_args is None:
            got = self._call(self.client.xreadgroup, group, consumer, {key: at}, count=count)
            return self._events(got[0][1]) if got else []
        cmd = [b"XREADGROUP", b"GROUP", group.encode(), consumer.encode(), b"COUNT", b"%d" % count]
        (got,) = self._raw(
            [pack([*cmd, b"STREAMS", key.encode(), at.encode()])], fast=parse_stream_entries
        )
        return self._reply_events(got)

    @classmethod
    def _reply_events(cls, reply: Any) -> list[Event]:
        """Events of an ``XREADGROUP`` reply (parsed fast or generically) for one stream."""
        if isinstance(reply, StreamEntries):
            return [(i.decode(), p) for i, p in reply]
        return cls._events(reply[0][1]) if reply else []

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None:
        if ids and self._fast_args is not None:
            self._raw(
                [
                    pack(
                        [
                            b"XACK",
                            self._key(stream).encode(),
                            group.encode(),
                            *[i.encode() for i in ids],
                        ]
                    )
                ]
            )
            return
        if ids:
            self._call(self.client.xack, self._key(stream), group, *ids)

    def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Event]:
        self._ensure_group(stream, group)
        res = self._call(
            self.client.xautoclaim,
            self._key(stream),
            group,
            consumer,
            min_idle_time=min_idle_ms,
            start_id="0-0",
            count=count,
        )
        return self._events(res[1])

    def lag(self, stream: str, group: str) -> int:
        self._ensure_group(stream, group)
        key = self._key(stream)
        groups = self._call(self.client.xinfo_groups, key)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                lag = g.get("lag")
                pending = int(g.get("pending", 0))
                if lag is None:
                    return pending + int(self._call(self.client.xlen, key))
                return int(lag) + pending
        return int(self._call(self.client.xlen, key))

    def pending(self, stream: str, group: str) -> int:
        self._ensure_group(stream, group)
        summary = self._call(self.client.xpending, self._key(stream), group)
        return int(summary["pending"])

    def close(self) -> None:
        """Close every connection this log opened, in any thread (later use reconnects)."""
        if self._conns is not None:
            self._conns.close_all()
        self.client.close()
