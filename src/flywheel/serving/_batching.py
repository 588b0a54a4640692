"""Dynamic batching: concurrent requests to one model version coalesced into one runtime call.

The policy follows Triton's dynamic batcher. A request joins a bounded FIFO queue: refused at
once with ``QueueFull`` (429 with ``Retry-After``) when the queue holds ``max_queue_size``
requests, or when its expected wait (the measured batch time, from dispatch until the result is
back on the event loop, times the batches ahead of it, over the instances) exceeds what is left
of its deadline. A dispatcher task waits until an instance of the model is free, then until
the queue holds ``max_batch_size`` rows, a preferred batch size, or until the oldest request has
waited ``max_queue_delay_us``; it then takes as many requests as fit, runs one ``predict`` in
the worker thread pool (so the event loop stays free), and splits the outputs back along the
batch dim.
Requests whose deadline has passed are answered with ``DeadlineExceeded`` (504) without running,
and a result that comes back after the deadline is dropped (504), never answered late. The wait
that batching adds is at most ``max_queue_delay_us`` plus one batch's compute.
When a batch fails, its requests are retried one by one so that one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from flywheel.serving._admission import LoopLoad
from flywheel.serving._errors import DeadlineExceeded, InferenceFailed, QueueFull, ServingError
from flywheel.serving._types import Tensors

PredictFn = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class BatchingPolicy:
    """How one model version batches. ``max_batch_size == 1`` turns batching off."""

    max_batch_size: int = 32
    max_queue_delay_us: int = 1000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 512
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ServingError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ServingError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_queue_size < 1:
            raise ServingError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.instances < 1:
            raise ServingError(f"instances must be >= 1, got {self.instances}")
        bad = [p for p in self.preferred_batch_sizes if p < 1 or p > self.max_batch_size]
        if bad:
            raise ServingError(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})"
            )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    @classmethod
    def from_settings(
        cls, defaults: Any, overrides: dict[str, Any] | None = None
    ) -> BatchingPolicy:
        """Server defaults (``ServingConfig``) overridden by a model version's ``config``.

        A version's config may hold ``max_batch_size``, ``max_queue_delay_us``,
        ``preferred_batch_sizes``, ``max_queue_size``, ``instances``, or ``batching: false``.
        """
        o = dict(overrides or {})
        nested = o.get("batching")
        if isinstance(nested, dict):
            o.update(nested)
        try:
            policy = cls(
                max_batch_size=int(o.get("max_batch_size", defaults.max_batch_size)),
                max_queue_delay_us=int(o.get("max_queue_delay_us", defaults.max_queue_delay_us)),
                preferred_batch_sizes=tuple(
                    int(p) for p in o.get("preferred_batch_sizes", defaults.preferred_batch_sizes)
                ),
                max_queue_size=int(o.get("max_queue_size", defaults.max_queue_size)),
                instances=int(o.get("instances", defaults.instances)),
            )
        except (TypeError, ValueError) as exc:
            raise ServingError(f"invalid batching settings {o!r}: {exc}") from None
        if nested is False:
            policy = cls(1, 0, (), policy.max_queue_size, policy.instances)
        return policy


_EWMA = 0.2  # weight of the newest batch in the batch-time average


class _Pending:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "key", "rows")

    def __init__(
        self, inputs: Tensors, rows: int, deadline: float | None, future: asyncio.Future[Tensors]
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.deadline = deadline
        self.future = future
        self.enqueued = time.monotonic()
        # Requests can share a batch only if every non-batch dimension matches.
        self.key = tuple((k, v.shape[1:], v.dtype.str) for k, v in inputs.items())


class DynamicBatcher:
    """Queue + dispatcher for one model version. Create and use it inside a running event loop."""

    def __init__(
        self,
        predict: PredictFn,
        policy: BatchingPolicy,
        executor: Executor,
        *,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self.policy = policy
        self._executor = executor
        self.name = name
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        # The queued rows with each request counted as at most one batch (``_batch_rows``): what
        # the batches ahead of a newcomer hold (a request larger than a batch runs alone).
        self._queued_batch_rows = 0
        self._size = max(policy.preferred_batch_sizes, default=policy.max_batch_size)
        self._loop = asyncio.get_running_loop()
        self._free = policy.instances
        self._timer: asyncio.TimerHandle | None = None
        # In-flight batches and when each was dispatched (for the expected-wait estimate).
        self._inflight: dict[asyncio.Future[Any], float] = {}
        self._closed = False
        self.batches_run = 0
        self._last_arrival = time.monotonic()
        self._mean_gap = 1.0
        self.last_latency_s = 0.0
        # Mean wall time of a batch, dispatch to result back on the loop (so a busy event loop
        # counts), exponentially weighted.
        self.batch_s = 0.0
        self.load = LoopLoad()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not counting those being computed)."""
        return len(self._queue)

    async def submit(self, inputs: Tensors, rows: int, deadline: float | None = None) -> Tensors:
        """Queue one request (``rows`` along the batch dim) and wait for its outputs.

        Args:
            deadline: ``time.monotonic()`` after which the caller no longer wants the answer.

        Raises:
            QueueFull: the queue holds ``max_queue_size`` requests.
            DeadlineExceeded: the deadline passed first.
            InferenceFailed: the runtime raised.
        """
        if self._closed:
            raise QueueFull(f"model {self.name!r} is shutting down", retry_after=1.0)
        self.admit(rows, deadline, loop=False)  # a caller that keeps ``load`` admitted it
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        item = _Pending(inputs, rows, deadline, future)
        # Mean gap between arrivals (exponentially weighted), for the adaptive wait.
        gap = item.enqueued - self._last_arrival
        self._last_arrival = item.enqueued
        self._mean_gap += 0.2 * (min(gap, 1.0) - self._mean_gap)
        self._queue.append(item)
        self._queued_rows += rows
        self._queued_batch_rows += self._batch_rows(rows)
        self._dispatch()
        if deadline is None:
            return await future
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(future, remaining)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {self.name!r} did not answer within the request's deadline"
            ) from None

    def reject_full(self) -> NoReturn:
        """Raise the ``QueueFull`` (429) that a request to a full queue gets."""
        raise QueueFull(
            f"model {self.name!r} has {len(self._queue)} requests queued (the limit); retry later",
            retry_after=max(1.0, self.expected_wait_s(1)),
        )

    def _batch_rows(self, rows: int) -> int:
        """The rows of a request as the batches see them: at most one batch's worth."""
        return min(rows, self._size)

    def _per_batch_s(self) -> float:
        """The mean batch time, or the age of the oldest batch in flight if that is longer (a
        model that slowed down is noticed before its batch finishes). 0 before any batch ran."""
        if not self._inflight:
            return self.batch_s
        return max(self.batch_s, time.monotonic() - min(self._inflight.values()))

    def expected_wait_s(self, rows: int) -> float:
        """Seconds a request of ``rows`` rows queued now would wait before its batch starts.

        0 when an instance is free and it fits in the next batch. Otherwise the batches ahead of
        it (the queued rows before its own batch, in batches of the policy's largest size, plus
        one for the batches in flight when no instance is free) times the batch time, over the
        instances. A request larger than a batch counts as one batch, for it runs as one: so a
        200-row request on an idle server waits for nothing (it was once counted as 7 batches
        of 32 and shed with an empty queue, issue #14).
        """
        policy = self.policy
        size = self._size
        if policy.enabled:
            # A request of more rows than a batch holds is not split: the dispatcher runs it as
            # one batch of its own (``_take_batch`` always takes the queue's head whole). So it
            # occupies at most one batch's place, and so does each request queued before it.
            position = self._queued_batch_rows + self._batch_rows(rows)
        else:
            position = len(self._queue) + 1
        ahead = -(-position // size) - 1 + (1 if self._free <= 0 else 0)
        if ahead <= 0:
            return 0.0
        return ahead * self._per_batch_s() / policy.instances

    def admit(
        self, rows: int, deadline: float | None, *, loop: bool = True, headroom: float = 1.0
    ) -> None:
        """Refuse (``QueueFull``, 429 with ``Retry-After``) a request that the queue cannot take
        now: it is full, or the request would have to wait and could not then be answered before
        ``deadline`` (``time.monotonic()``): its wait plus one batch (and the batching delay)
        exceeds what is left. It would only hold a place and time out in the queue. A request
        that starts at once is always admitted (if its own run outlasts its deadline, it gets
        the 504 of its deadline). With ``loop``, the wait is the longer of the batches' and
        that of the requests in flight on the event loop (``self.load``, which callers that
        decode and encode on the loop keep: ``started``/``finished``). ``headroom`` (0 < h <= 1)
        is the share of the time left that the expected answer may take: the rest is kept for
        what the estimate cannot see (HTTP requests that arrived in the same burst, parsed and
        shed on the loop ahead of this one's answer, and the estimate's own spread)."""
        if len(self._queue) >= self.policy.max_queue_size:
            self.reject_full()
        if deadline is None:
            return
        wait = self.expected_wait_s(rows)
        if loop:
            wait = max(wait, self.load.wait_s())
        if wait <= 0.0:
            return
        answer = wait + self._per_batch_s() + self.policy.max_queue_delay_us / 1e6
        left = deadline - time.monotonic()
        if answer > left * headroom:
            raise QueueFull(
                f"model {self.name!r}: the expected wait ({answer * 1000:.0f} ms to an answer, "
                f"{len(self._queue)} requests queued) exceeds the request's deadline "
                f"({max(left, 0.0) * 1000:.0f} ms left"
                + (f", {headroom:.0%} of it usable" if headroom < 1.0 else "")
                + "); retry later",
                retry_after=max(1.0, answer),
                reason="expected_wait",
            )

    async def close(self) -> None:
        """Stop accepting requests, finish the queued ones, and stop the dispatcher."""
        self._closed = True
        self._dispatch()
        while self._queue or self._inflight:
            await asyncio.sleep(0.005)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- dispatcher ------------------------------------------------------------------------------

    def _preferred_hit(self) -> bool:
        return self._queued_rows in self.policy.preferred_batch_sizes

    def _should_wait(self) -> float:
        """Seconds to wait for more requests before dispatching (0: dispatch now).

        Wait while the batch is neither full nor at a preferred size and the oldest request's
        delay has time left, but not when requests arrive more slowly than that time left (the
        recent mean gap between arrivals): at low load a request would only wait for nobody,
        which is what makes naive dynamic batching slow at concurrency 1.
        """
        policy = self.policy
        if not policy.enabled or self._closed:
            return 0.0
        if self._queued_rows >= policy.max_batch_size or self._preferred_hit():
            return 0.0
        remaining = self._queue[0].enqueued + policy.max_queue_delay_us / 1e6 - time.monotonic()
        if remaining <= 0 or self._mean_gap > remaining:
            return 0.0
        return remaining

    def _take_batch(self) -> list[_Pending]:
        policy = self.policy
        now = time.monotonic()
        limit = policy.max_batch_size
        if policy.preferred_batch_sizes:
            fitting = [p for p in policy.preferred_batch_sizes if p <= self._queued_rows]
            if fitting:
                limit = max(fitting)
        batch: list[_Pending] = []
        rows = 0
        skipped: list[_Pending] = []
        key = None
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # cancelled by its deadline
                self._queue.popleft()
                self._queued_rows -= item.rows
                self._queued_batch_rows -= self._batch_rows(item.rows)
                continue
            if item.deadline is not None and item.deadline <= now:
                self._queue.popleft()
                self._queued_rows -= item.rows
                self._queued_batch_rows -= self._batch_rows(item.rows)
                item.future.set_exception(
                    DeadlineExceeded(f"model {self.name!r}: the request's deadline passed")
                )
                continue
            if batch and rows + item.rows > limit:
                break
            if key is not None and item.key != key:
                skipped.append(self._queue.popleft())
                continue
            self._queue.popleft()
            self._queued_rows -= item.rows
            self._queued_batch_rows -= self._batch_rows(item.rows)
            batch.append(item)
            rows += item.rows
            key = item.key
            if not policy.enabled:
                break
        for item in reversed(skipped):
            self._queue.appendleft(item)
        return batch

    def _dispatch(self) -> None:
        """Start batches while an instance is free and the queue has work (loop thread only).

        Called when a request arrives, when a batch finishes and when the wait timer fires, so
        a batch starts in the same event-loop step that made it possible: under heavy load the
        loop is busy and every extra step would add latency.
        """
        while self._free > 0 and self._queue:
            wait = self._should_wait()
            if wait > 0:
                if self._timer is None:
                    self._timer = self._loop.call_later(wait, self._on_timer)
                return
            batch = self._take_batch()
            if not batch:
                continue
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._free -= 1
            dispatched = time.monotonic()  # before the thread can start: the hop counts too
            fut = self._loop.run_in_executor(self._executor, self._execute, batch)
            self._inflight[fut] = dispatched
            fut.add_done_callback(functools.partial(self._finish, batch=batch))

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch_after_wait()

    def _dispatch_after_wait(self) -> None:
        # The delay is over: dispatch what is queued even if the batch is not full.
        while self._free > 0 and self._queue:
            batch = self._take_batch()
            if not batch:
                continue
            self._free -= 1
            dispatched = time.monotonic()  # before the thread can start: the hop counts too
            fut = self._loop.run_in_executor(self._executor, self._execute, batch)
            self._inflight[fut] = dispatched
            fut.add_done_callback(functools.partial(self._finish, batch=batch))
        self._dispatch()

    def _finish(
        self, fut: asyncio.Future[list[Tensors | BaseException]], batch: list[_Pending]
    ) -> None:
        dispatched = self._inflight.pop(fut, None)
        self._free += 1
        if dispatched is not None:
            self._record(time.monotonic() - dispatched)
        try:
            results = fut.result()
        except BaseException as exc:  # the executor itself failed
            results = [InferenceFailed(f"model {self.name!r}: {exc}")] * len(batch)
        now = time.monotonic()
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if item.deadline is not None and item.deadline <= now:
                # Computed, but too late: the caller gets the 504 it was promised, not a late 200.
                item.future.set_exception(
                    DeadlineExceeded(f"model {self.name!r}: the request's deadline passed")
                )
            elif isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        self._dispatch()

    def _record(self, seconds: float) -> None:
        self.batch_s = (
            seconds if self.batch_s == 0.0 else self.batch_s + _EWMA * (seconds - self.batch_s)
        )

    # -- worker thread ---------------------------------------------------------------------------

    def _run_one(self, inputs: Tensors) -> Tensors:
        try:
            return self._predict(inputs)
        except ServingError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise InferenceFailed(f"model {self.name!r} failed: {reason}") from exc

    def _execute(self, batch: list[_Pending]) -> list[Tensors | BaseException]:
        start = time.perf_counter()
        total = sum(item.rows for item in batch)
        if self._on_batch is not None:
            self._on_batch(total)
        self.batches_run += 1
        try:
            if len(batch) == 1:
                return [self._run_one(batch[0].inputs)]
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
            outputs = self._run_one(merged)
            split = self._split(outputs, batch, total)
            if split is not None:
                return split
        except BaseException as exc:
            if len(batch) == 1:
                return [exc]
        finally:
            self.last_latency_s = time.perf_counter() - start
        # The batch failed or its outputs cannot be split: one request at a time.
        results: list[Tensors | BaseException] = []
        for item in batch:
            try:
                results.append(self._run_one(item.inputs))
            except BaseException as exc:
                results.append(exc)
        return results

    @staticmethod
    def _split(
        outputs: Tensors, batch: list[_Pending], total: int
    ) -> list[Tensors | BaseException] | None:
        bounds = np.cumsum([item.rows for item in batch])[:-1]
        parts: list[Tensors] = [{} for _ in batch]
        for name, arr in outputs.items():
            arr = np.asarray(arr)
            if arr.ndim == 0 or arr.shape[0] != total:
                return None
            for part, piece in zip(parts, np.split(arr, bounds), strict=True):
                part[name] = piece
        return list(parts)


__all__ = ["BatchingPolicy", "DynamicBatcher"]
