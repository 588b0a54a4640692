"""The blocking bridge alone: a private loop when no server loop runs, the server's loop when
one does, a deadline, the refusal on the loop itself, and a clean close."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flywheel.serving import DeadlineExceeded, ServingError
from flywheel.serving._bridge import BlockingBridge


async def _where() -> str:
    await asyncio.sleep(0)
    return threading.current_thread().name


def test_without_a_server_loop_calls_run_on_a_private_loop_until_closed() -> None:
    bridge = BlockingBridge(lambda: None)
    assert bridge.call(_where(), timeout_s=5, what="m") == "flywheel-serving-loop"
    assert bridge.private_loop_running
    loop = bridge.private_loop()
    bridge.close()
    assert not bridge.private_loop_running and loop.is_closed()


def test_with_a_running_server_loop_calls_run_there() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    thread.start()
    try:
        bridge = BlockingBridge(lambda: loop)
        assert bridge.call(_where(), timeout_s=5, what="m") == "server-loop"
        assert not bridge.private_loop_running
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_deadline_cancels_the_call_and_names_the_model() -> None:
    bridge = BlockingBridge(lambda: None)
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        with pytest.raises(DeadlineExceeded, match="'ranker' within 50 ms"):
            bridge.call(slow(), timeout_s=0.05, what="ranker")
        assert cancelled.wait(5)
    finally:
        bridge.close()


def test_calling_from_the_loop_itself_is_refused() -> None:
    bridge = BlockingBridge(lambda: None)
    loop = bridge.private_loop()

    async def inner() -> str:
        try:
            bridge.call(_where(), timeout_s=1, what="m")
        except ServingError as exc:
            return str(exc)
        return "no error"

    try:
        message = asyncio.run_coroutine_threadsafe(inner(), loop).result(5)
        assert "await predict()" in message
    finally:
        bridge.close()


def test_close_runs_the_shutdown_on_the_private_loop_it_serves() -> None:
    holder: dict[str, asyncio.AbstractEventLoop | None] = {"loop": None}
    bridge = BlockingBridge(lambda: holder["loop"])
    holder["loop"] = bridge.private_loop()  # the server started on the private loop
    ran: list[str] = []

    async def shutdown() -> None:
        ran.append(threading.current_thread().name)

    bridge.close(shutdown)
    assert ran == ["flywheel-serving-loop"]
