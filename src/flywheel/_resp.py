"""Shared Redis plumbing for the features online store and the events log: a minimal RESP2
connection for the hot paths (online reads, stream reads, batched writes).

redis-py encodes each argument and parses each reply element in Python (~1-8 µs apiece); for
commands with thousands of elements that dominates. This sends pre-packed commands in one
write and parses all their replies in one pass over ``bytes.split(b"\r\n")`` (C speed), so a
reply element costs a few bytecodes (~0.2 µs); a bulk string that itself holds CRLF is
rejoined by its declared length. One connection per thread; any socket error closes it and the
caller reconnects.
"""

from __future__ import annotations

import re
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# A fast parser for one known reply shape: (value, end position), or None to use the generic one.
FastParser = Callable[[bytes, int], "tuple[Any, int] | None"]


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``)."""


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def pack(args: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%s\r\n" % (len(a), a) for a in args])


class RespConnection:
    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Closed when the connection object goes away (thread-local owners are not closed
        # explicitly by threads that end), without an "unclosed socket" warning.
        weakref.finalize(self, self.sock.close)
        self.buf = b""
        self.pos = 0
        if password:
            auth = [b"AUTH"] + ([username.encode()] if username else []) + [password.encode()]
            self.execute([pack(auth)])
        if db:
            self.execute([pack([b"SELECT", str(db).encode()])])

    def set_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        if self.pos:
            self.buf = self.buf[self.pos :] + chunk
            self.pos = 0
        else:
            self.buf += chunk

    def execute(self, packed: Sequence[bytes], fast: FastParser | None = None) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as ``RespError``).

        ``fast``: a parser for the reply of a single command of a known shape, tried first.
        """
        self.sock.sendall(b"".join(packed))
        n = len(packed)
        while True:
            if len(self.buf) > self.pos and self.buf.endswith(b"\r\n"):
                one = fast(self.buf, self.pos) if fast is not None and n == 1 else None
                if one is not None:
                    out, self.pos = [one[0]], one[1]
                    break
                parsed = parse_replies(self.buf, self.pos, n)
                if parsed is not None:
                    out, self.pos = parsed
                    break
            self._more()
        if self.pos == len(self.buf):
            self.buf, self.pos = b"", 0
        return out

    def close(self) -> None:
        self.sock.close()


class PerThread:
    """One ``RespConnection`` per thread (made on first use); ``close_all`` closes every one
    opened so far, from any thread, and later uses reconnect."""

    def __init__(self, args: tuple[str, int, int, str | None, str | None]) -> None:
        self.args = args
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[RespConnection] = weakref.WeakSet()

    def get(self) -> RespConnection:
        conn: RespConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = RespConnection(*self.args)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def discard(self, conn: RespConnection | None) -> None:
        """Forget this thread's connection (after an error) and close it."""
        self._local.conn = None
        if conn is not None:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def close_all(self) -> None:
        with self._lock:
            conns = list(self._open)
            self._open.clear()
            self._local = threading.local()  # other threads' stale references are dropped
        for conn in conns:
            conn.close()


def connection_args(client: Any) -> tuple[str, int, int, str | None, str | None] | None:
    """(host, port, db, password, username) of a redis-py client, or None if not plain TCP."""
    kw = client.connection_pool.connection_kwargs
    if "host" not in kw or kw.get("ssl") or "path" in kw:
        return None
    return (
        kw.get("host", "127.0.0.1"),
        int(kw.get("port", 6379)),
        int(kw.get("db", 0) or 0),
        kw.get("password"),
        kw.get("username"),
    )


def parse_replies(buf: bytes, start: int, n: int) -> tuple[list[Any], int] | None:
    """Parse ``n`` RESP2 replies from ``buf[start:]``: (replies, end position), or ``None`` if
    the buffer does not hold all of them yet. Raises ``ConnectionError`` on a malformed reply."""
    toks = (buf[start:] if start else buf).split(b"\r\n")
    end = len(toks) - 1  # the last piece is not CRLF-terminated (b"" when buf ends in CRLF)
    i = 0
    out: list[Any] = []
    stack: list[list[Any]] = []  # [elements still expected, elements so far]
    val: Any
    while len(out) < n:
        if i >= end:
            return None
        tok = toks[i]
        i += 1
        c = tok[:1]
        if c == b"$":
            size = int(tok[1:])
            if size < 0:
                val = None
            else:
                if i >= end:
                    return None
                val = toks[i]
                i += 1
                if len(val) != size:  # the data holds CRLF: rejoin pieces up to its length
                    parts = [val]
                    total = len(val)
                    while total < size:
                        if i >= end:
                            return None
                        parts.append(toks[i])
                        total += 2 + len(toks[i])
                        i += 1
                    val = b"\r\n".join(parts)
                    if len(val) != size:
                        raise ConnectionError(f"bulk string of {len(val)} bytes, expected {size}")
        elif c == b"*":
            count = int(tok[1:])
            if count > 0:
                stack.append([count, []])
                continue
            val = None if count < 0 else []
        elif c == b":":
            val = int(tok[1:])
        elif c == b"+":
            val = tok[1:]
        elif c == b"-":
            val = RespError(tok[1:].decode(errors="replace"))
        else:
            raise ConnectionError(f"unexpected reply {tok[:40]!r}")
        while stack:  # attach to the open arrays, closing those that are complete
            top = stack[-1]
            top[1].append(val)
            top[0] -= 1
            if top[0]:
                break
            val = top[1]
            stack.pop()
        else:
            out.append(val)
    return out, start + sum(map(len, toks[:i])) + 2 * i


_ARRAY = re.compile(rb"\*(\d+)\r\n")
_BULK = re.compile(rb"\$(-1|\d+)\r\n")


def parse_bulk_array(buf: bytes, pos: int) -> tuple[list[bytes | None], int] | None:
    """An array of bulk strings or nils (an ``MGET`` reply) that ends the buffer.

    One ``split`` at CRLF; without nils the elements are every other piece (their lengths
    checked against the headers), with nils a short walk. A string holding CRLF fails the
    checks and is parsed element by element, as is a reply that is not all here yet.
    """
    m = _ARRAY.match(buf, pos)
    if m is None:
        return None
    count = int(m.group(1))
    pos = m.end()
    toks = buf[pos:].split(b"\r\n")
    try:
        fast = _bulk_pieces(toks, count)
    except ValueError:  # a piece taken for a header is data: a string holding CRLF
        fast = None
    if fast is not None:
        return fast, len(buf)
    return _parse_bulk_array_slow(buf, pos, count)


def _bulk_pieces(toks: list[bytes], count: int) -> list[bytes | None] | None:
    if toks[-1] == b"":
        if len(toks) == 2 * count + 1:  # no nils
            data = toks[1 : 2 * count : 2]
            if [len(d) for d in data] == [int(h[1:]) for h in toks[0 : 2 * count : 2]]:
                return list(data)
        else:
            out: list[bytes | None] = []
            i = 0
            last = len(toks) - 1
            for _ in range(count):
                head = toks[i] if i < last else b""
                if head == b"$-1":
                    out.append(None)
                    i += 1
                    continue
                if i + 1 >= last or head[:1] != b"$" or int(head[1:]) != len(toks[i + 1]):
                    break
                out.append(toks[i + 1])
                i += 2
            else:
                if i == last:
                    return out
    return None


def _parse_bulk_array_slow(
    buf: bytes, pos: int, count: int
) -> tuple[list[bytes | None], int] | None:
    match = _BULK.match
    out: list[bytes | None] = []
    append = out.append
    for _ in range(count):
        b = match(buf, pos)
        if b is None:
            return None
        size = int(b.group(1))
        if size < 0:
            append(None)
            pos = b.end()
            continue
        start = b.end()
        pos = start + size + 2
        if buf[pos - 2 : pos] != b"\r\n":
            return None  # not all here yet (or not this shape)
        append(buf[start : pos - 2])
    return out, pos


_STREAM = re.compile(rb"\*1\r\n\*2\r\n\$(\d+)\r\n")


class StreamEntries(list[tuple[bytes, bytes]]):
    """``[(id, payload), ...]`` parsed by ``parse_stream_entries``."""


def parse_stream_entries(buf: bytes, pos: int) -> tuple[StreamEntries, int] | None:
    """An ``XREADGROUP`` reply for one stream whose entries all have the one field ``p``, as
    ``[(id, payload), ...]``; None for anything else (or not all here yet).

    Each entry is 8 CRLF-separated pieces (``*2``, ``$n``, id, ``*2``, ``$1``, ``p``, ``$n``,
    payload), so one ``split`` and a few slices parse them all at C speed. The shape is checked
    piece by piece and every payload's length against its header: a payload holding CRLF (or a
    deleted entry) makes the check fail and the generic parser takes over.
    """
    m = _STREAM.match(buf, pos)
    if m is None:
        return None
    pos = m.end() + int(m.group(1)) + 2  # skip the stream's name
    m = _ARRAY.match(buf, pos)
    if m is None:
        return None
    count = int(m.group(1))
    pos = m.end()
    if count == 0:
        return StreamEntries(), pos
    toks = buf[pos:].split(b"\r\n", 8 * count)
    if len(toks) <= 8 * count:
        return None  # not all here yet
    payloads = toks[7 : 8 * count : 8]
    heads = toks[6 : 8 * count : 8]
    if (
        toks[0 : 8 * count : 8].count(b"*2") != count
        or toks[3 : 8 * count : 8].count(b"*2") != count
        or toks[5 : 8 * count : 8].count(b"p") != count
        or toks[4 : 8 * count : 8].count(b"$1") != count
        or [len(p) for p in payloads] != [int(h[1:]) for h in heads]
    ):
        return None
    end = len(buf) - len(toks[-1])  # everything before the unsplit remainder
    return StreamEntries(zip(toks[2 : 8 * count : 8], payloads, strict=True)), end


def redis_from_url(url: str, **kwargs: Any) -> Any:
    """A redis-py client for a store URL: Flywheel's own ``?prefix=`` is taken out (redis-py
    would pass it to the connection and fail), every other option goes to ``Redis.from_url``.
    Every place that opens a Redis store URL (online store, event log, ``/healthz``) uses this."""
    import redis

    clean, _ = split_prefix(url, "")
    return redis.Redis.from_url(clean, **kwargs)


def split_prefix(url: str, default: str) -> tuple[str, str]:
    """(url without our ``prefix`` query parameter, the prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = default
    rest = []
    for k, v in query:
        if k == "prefix":
            prefix = v
        else:
            rest.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix
