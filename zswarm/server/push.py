"""Server-to-server push (docs/architecture.md, issue 17): where a pushed step meets its client.

With push, a decode step travels client -> s1 -> s2 -> ... and no server waits for the client
between spans. The client still needs every span's output (its replay history), so it asks each
server after the first with `step_result(session_id, position)`; the step itself arrives from the
previous server as `push_step`. The two meet here, in either order: `deliver` puts a step's
output (or its error) under (session, position), `wait` takes it.

Both sides are bounded: a result nobody collects is dropped after KEEP_S, a wait ends at its
timeout, and at most MAX_ENTRIES results and waits are held at once (others are refused), so
untrusted clients and servers cannot grow this without end.
"""
from __future__ import annotations

import asyncio
from typing import Any

from zswarm.errors import TooManyTokensError

KEEP_S = 60.0          # an output nobody asked for is dropped after this
MAX_ENTRIES = 4096     # results and waits held at once


class PushRendezvous:
    def __init__(self):
        self._entries: dict[tuple[str, int], asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, key: tuple[str, int]) -> asyncio.Future:
        fut = self._entries.get(key)
        if fut is None:
            if len(self._entries) >= MAX_ENTRIES:
                raise TooManyTokensError(f"{MAX_ENTRIES} pushed steps are already waiting here; try later")
            loop = asyncio.get_running_loop()
            fut = self._entries[key] = loop.create_future()
            loop.call_later(KEEP_S, self._drop, key, fut)
        return fut

    def _drop(self, key, fut) -> None:
        if self._entries.get(key) is fut:
            del self._entries[key]
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            fut.exception()  # read, so asyncio does not log an error nobody collected

    def deliver(self, session_id: str, position: int, output: Any = None, error: BaseException | None = None):
        """The step of `session_id` at `position` is done (its output) or failed (`error`)."""
        try:
            fut = self._entry((session_id, position))
        except TooManyTokensError:
            return  # full: the client's wait times out and it replays through the client
        if fut.done():  # a second push of the same step (a retry): the later one counts
            fut = self._entries[(session_id, position)] = asyncio.get_running_loop().create_future()
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(output)

    async def wait(self, session_id: str, position: int, timeout: float):
        """The output of that step, once delivered; asyncio.TimeoutError after `timeout`."""
        key = (session_id, position)
        fut = self._entry(key)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if self._entries.get(key) is fut and fut.done():
                del self._entries[key]
