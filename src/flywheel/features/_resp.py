"""A minimal RESP2 connection for the hot paths (online reads, stream reads, batched writes).

redis-py encodes each argument and parses each reply element in Python (~1-8 µs apiece); for
commands with thousands of elements that dominates. This sends pre-packed commands in one
write and parses replies with ``bytes.find``. One connection per thread; any socket error
closes it and the caller reconnects.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Sequence
from typing import Any


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

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n", self.pos)
        while end < 0:
            self._more()
            end = self.buf.find(b"\r\n", self.pos)
        line = self.buf[self.pos : end]
        self.pos = end + 2
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:])
            if size < 0:
                return None
            while len(self.buf) < self.pos + size + 2:
                self._more()
            data = self.buf[self.pos : self.pos + size]
            self.pos += size + 2
            return data
        if kind == b"*":
            n = int(line[1:])
            if n < 0:
                return None
            return [self._reply() for _ in range(n)]
        if kind == b":":
            return int(line[1:])
        if kind == b"+":
            return line[1:]
        if kind == b"-":
            return RespError(line[1:].decode(errors="replace"))
        raise ConnectionError(f"unexpected reply {line[:40]!r}")

    def execute(self, packed: Sequence[bytes]) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as ``RespError``)."""
        self.sock.sendall(b"".join(packed))
        out = [self._reply() for _ in packed]
        if self.pos == len(self.buf):
            self.buf, self.pos = b"", 0
        return out

    def close(self) -> None:
        self.sock.close()


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
