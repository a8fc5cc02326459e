"""Where a server may push a step: the `push` hops a step names, checked (`push_hops`), and
only to servers announced for its model in the DHT (`PushTargets`).

A step's `push` hops come from the client. Followed blindly, they would let anyone make a server
dial any host and port and send it data (a bounce towards third parties), and open one socket per
address named, without bound. So the first hop's endpoint (the one this server dials; each later
server checks its own) must be the endpoint of a record of this model's servers: the DHT view is
read at most every MIN_REFRESH_S, when a hop names an endpoint not seen yet or the view is older
than TTL_S (then behind the step: a known endpoint is not made to wait), and all pushes that
wait for a read share it.
"""
from __future__ import annotations

import asyncio
import logging
import time

from zswarm.errors import BadInputError
from zswarm.records import afetch_block_servers
from zswarm.server.validation import meta_session_id
from zswarm.swarm_info import ServerState

logger = logging.getLogger(__name__)

TTL_S = 60.0  # the endpoints read are trusted this long
MIN_REFRESH_S = 2.0  # a hop naming an unknown endpoint reads the DHT at most this often


MAX_PUSH_HOPS = 64


def push_hops(meta: dict) -> list:
    """The servers a step goes on to (`push`): [{address, session_id, open?}, ...], checked."""
    hops = meta.get("push")
    if hops is None:
        return []
    if not isinstance(hops, list) or len(hops) > MAX_PUSH_HOPS:
        raise BadInputError(f"meta field 'push' must be a list of at most {MAX_PUSH_HOPS} hops")
    for hop in hops:
        if not isinstance(hop, dict) or not isinstance(hop.get("address"), str) \
                or not hop["address"].startswith("tcp://") or len(hop["address"]) > 256:
            raise BadInputError("each hop of 'push' must be a map with a tcp:// 'address'")
        meta_session_id(hop)
        if "open" in hop and not isinstance(hop["open"], dict):
            raise BadInputError("a hop's 'open' must be a map of open_session's fields")
    return hops


class PushTargets:
    def __init__(self, node, model_id: str, num_blocks: int, clock=time.monotonic):
        self.node, self.model_id, self.num_blocks, self.clock = node, model_id, num_blocks, clock
        self._known: set[str] = set()
        self._read_at = float("-inf")
        self._reading: asyncio.Future | None = None

    async def check(self, endpoint: str) -> None:
        """BadInputError unless `endpoint` is a server of this model announced in the DHT."""
        age = self.clock() - self._read_at
        if endpoint in self._known:
            if age > TTL_S and self._reading is None:  # refreshed behind the step, not in its way
                self._reading = asyncio.ensure_future(self._fetch())
                self._reading.add_done_callback(self._read_done)
            return
        if age >= MIN_REFRESH_S:
            await self._read()
        if endpoint not in self._known:
            raise BadInputError(f"will not push to {endpoint[:80]}: no server of {self.model_id} announces it in "
                                f"the DHT (a step is pushed only to announced servers)")

    async def _read(self) -> None:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._fetch())
            self._reading.add_done_callback(self._read_done)
        await asyncio.shield(self._reading)

    def _read_done(self, reading: asyncio.Future) -> None:
        if self._reading is reading:
            self._reading = None

    async def _fetch(self) -> None:
        try:
            blocks = await afetch_block_servers(self.node, self.model_id, 0, self.num_blocks)
        except Exception as exc:  # the DHT did not answer: keep what we knew, try again later
            logger.info("reading the servers to push to failed: %s", exc)
            self._read_at = self.clock() - TTL_S + MIN_REFRESH_S
            return
        self._known = {record.endpoint for records in blocks for record in records.values()
                       if record.state != ServerState.OFFLINE}
        self._read_at = self.clock()
