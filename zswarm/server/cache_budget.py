"""The KV-cache budget: one pool of token slots shared by all inference sessions.

A session reserves `batch_size * max_length` slots when it opens and gives them back when it
closes or expires. When the pool is short, an open waits (first come, first served) up to its
timeout. Runs on the server's event loop; no locks needed because nothing here awaits while
holding state.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from zswarm.errors import BudgetTimeout

logger = logging.getLogger(__name__)


class CacheBudget:
    def __init__(self, capacity_tokens: int):
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        self.capacity = int(capacity_tokens)
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def reserve(self, tokens: int, timeout: float) -> None:
        """Take `tokens` slots, waiting up to `timeout` seconds behind earlier waiters.

        Raises ValueError when the request can never fit, BudgetTimeout when it did not fit in time.
        """
        if tokens <= 0:
            raise ValueError("tokens must be positive")
        if tokens > self.capacity:
            raise ValueError(f"{tokens} tokens exceed the whole cache budget of {self.capacity}")
        if not self._waiters and tokens <= self.free:
            self.used += tokens
            return
        loop = asyncio.get_running_loop()
        entry = (tokens, loop.create_future())
        self._waiters.append(entry)
        started = loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), timeout=max(0.0, timeout))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if entry[1].done():  # granted in the same instant as the timeout/cancel
                if isinstance(exc, asyncio.CancelledError):
                    self.release(tokens)
                    raise
                return
            self._waiters.remove(entry)
            self._grant()  # the head may have changed; smaller waiters behind it may fit now
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BudgetTimeout(tokens, self.free, self.capacity, loop.time() - started) from None

    def release(self, tokens: int) -> None:
        self.used -= tokens
        if self.used < 0:  # a bookkeeping bug must not silently grow the pool
            logger.error("cache budget released more than reserved (%d); resetting to 0", self.used)
            self.used = 0
        self._grant()

    def hand_over(self, freed: int, tokens: int) -> None:
        """`freed` reserved tokens change hands: `tokens` of them (no more than `freed` plus what
        is free) go to one taker at once, ahead of the queue; the rest are released."""
        if tokens > freed + self.free:
            raise ValueError(f"cannot hand over {tokens} tokens from {freed} freed and {self.free} free")
        self.used += tokens - freed
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            tokens, future = self._waiters.popleft()
            if not future.done():
                self.used += tokens
                future.set_result(None)
