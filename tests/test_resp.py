"""The raw RESP2 parsers of the Redis hot paths, and payloads that hold CRLF on real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from flywheel._resp import (
    RespError,
    StreamEntries,
    parse_bulk_array,
    parse_replies,
    parse_stream_entries,
)
from flywheel.events import open_event_log
from flywheel.features._online import open_online_store


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _entry(i: bytes, p: bytes) -> bytes:
    return b"*2\r\n" + _bulk(i) + b"*2\r\n" + _bulk(b"p") + _bulk(p)


def test_generic_parser_nested_nil_errors_crlf_and_partial() -> None:
    data = (
        b"*3\r\n:5\r\n*2\r\n" + _bulk(b"a\r\nb") + b"$-1\r\n" + b"*0\r\n"
        b"+OK\r\n-ERR wrong\r\n*-1\r\n" + _bulk(b"")
    )
    replies, end = parse_replies(b"xx" + data, 2, 5)  # type: ignore[misc]
    assert end == len(data) + 2
    assert replies[0] == [5, [b"a\r\nb", None], []]
    assert replies[1] == b"OK"
    assert isinstance(replies[2], RespError) and str(replies[2]) == "ERR wrong"
    assert replies[3] is None and replies[4] == b""
    for cut in range(len(data)):  # any prefix is "not all here yet", never a wrong value
        assert parse_replies(data[:cut], 0, 5) is None


def test_fast_parsers_match_the_generic_one_or_step_aside() -> None:
    values = [b"x" * 30, None, b"with\r\ncrlf", b""]
    arr = b"*4\r\n" + b"".join(b"$-1\r\n" if v is None else _bulk(v) for v in values)
    assert parse_bulk_array(arr, 0) == (values, len(arr))
    assert parse_replies(arr, 0, 1) == ([values], len(arr))
    assert all(parse_bulk_array(arr[:cut], 0) is None for cut in range(len(arr)))
    plain = [b"a" * 20, None, b"", b"{}"]
    arr = b"*4\r\n" + b"".join(b"$-1\r\n" if v is None else _bulk(v) for v in plain)
    assert parse_bulk_array(arr, 0) == (plain, len(arr))
    assert parse_bulk_array(arr + b"+OK\r\n", 0) == (plain, len(arr))  # more after it
    assert all(parse_bulk_array(arr[:cut], 0) is None for cut in range(len(arr)))

    entries = [(b"1-0", b'{"a":1}'), (b"1-1", b"")]
    reply = b"*1\r\n*2\r\n" + _bulk(b"stream:s") + b"*2\r\n" + b"".join(_entry(*e) for e in entries)
    parsed = parse_stream_entries(reply + b"+next\r\n", 0)
    assert parsed is not None and isinstance(parsed[0], StreamEntries)
    assert list(parsed[0]) == entries and parsed[1] == len(reply)
    assert all(parse_stream_entries(reply[:cut], 0) is None for cut in range(len(reply)))
    # A payload holding CRLF, or a deleted entry, is left to the generic parser.
    odd = (
        b"*1\r\n*2\r\n" + _bulk(b"s") + b"*2\r\n" + _entry(b"2-0", b"a\r\nb") + _entry(b"2-1", b"c")
    )
    assert parse_stream_entries(odd, 0) is None
    assert parse_replies(odd, 0, 1) == (
        [[[b"s", [[b"2-0", [b"p", b"a\r\nb"]], [b"2-1", [b"p", b"c"]]]]]],
        len(odd),
    )
    deleted = b"*1\r\n*2\r\n" + _bulk(b"s") + b"*1\r\n*2\r\n" + _bulk(b"3-0") + b"*-1\r\n"
    assert parse_stream_entries(deleted, 0) is None


def test_payloads_with_crlf_round_trip(backend: dict[str, str]) -> None:
    payloads = [b'{"a":"x\r\ny"}', b"\r\n", b"plain"] * 700  # > one socket read
    log = open_event_log(backend["event_log"], namespace="t")
    store = open_online_store(backend["online_store"], namespace="t")
    try:
        log.append("s", payloads)
        got = log.read("s", "g", "c", 5000, 0)
        assert [p for _, p in got] == payloads
        rows = [(str(i), i, p) for i, p in enumerate(payloads)]
        store.write("t", rows)
        assert store.read([("t", [str(i) for i in range(len(rows))])])[0] == [
            (i, p) for _, i, p in rows
        ]
        store.transact("t", ["0", "1", "new"], lambda cur: {"new": (1, b"a\r\n"), "0": (9, b"")})
        assert store.read([("t", ["0", "1", "new"])])[0] == [(9, b""), (1, b"\r\n"), (1, b"a\r\n")]
    finally:
        log.close()
        store.close()


@pytest.mark.integration
def test_close_closes_the_connections_of_every_thread(redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?prefix={redis_prefix}"
    store = open_online_store(url, namespace="t")
    log = open_event_log(url, namespace="t")
    store.write("t", [("1", 1, b"x")])
    log.append("s", [b"e"])

    def use() -> None:
        assert store.read([("t", ["1"])]) == [[(1, b"x")]]
        assert log.lag("s", "g") == 1

    with ThreadPoolExecutor(3) as pool:  # threads that stay alive, as in a server
        for f in [pool.submit(use) for _ in range(6)]:
            f.result()
        conns = [*store._conns._open, *log._conns._open]  # type: ignore[attr-defined]
        assert len(conns) >= 3 and all(c.sock.fileno() >= 0 for c in conns)
        store.close()
        log.close()
        assert all(c.sock.fileno() == -1 for c in conns)
        # Used again after close (from any thread): a fresh connection.
        pool.submit(use).result()
        store.close()
        log.close()
