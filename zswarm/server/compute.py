"""One compute thread with a priority queue, so device work is serialized and the event loop is free.

The event loop keeps answering pings, opens and other sessions while a long step runs here.
When both wait, inference steps (someone is waiting on every token) go before forward and
backward passes; within one priority, first come first served.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable

from zswarm.errors import ShuttingDownError

logger = logging.getLogger(__name__)

INFERENCE = 0
FORWARD = 1
BACKWARD = 1


class ComputeClosed(ShuttingDownError):
    """The compute thread has stopped; no more work is taken."""


class ComputeQueue:
    def __init__(self, name: str = "zswarm-compute"):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self.inflight = 0  # queued or running
        self.busy_seconds = 0.0  # total time spent computing, for the load figure in `info`
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self, fn: Callable[[], Any], priority: int = FORWARD) -> Any:
        """Run `fn()` on the compute thread; return its result (or raise its exception) here."""
        if self._closed:
            raise ComputeClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((priority, next(self._order), fn, loop, future))
        self.inflight += 1
        try:
            return await future
        finally:
            self.inflight -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the queued work; wait up to `timeout` for the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put((float("inf"), next(self._order), None, None, None))
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            _priority, _order, fn, loop, future = self._queue.get()
            if fn is None:
                return
            if future.cancelled():
                continue
            started = time.perf_counter()
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the awaiting coroutine, which decides
                result, error = None, exc
            self.busy_seconds += time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is gone (shutdown); nobody is waiting any more
                logger.debug("compute result dropped: event loop closed")


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
