"""Announcing: a ServerRecord under each hosted block, refreshed every update period.

Each refresh also measures round-trip times to the servers of block `end` (the ones a client
would go to next after us); they go into the record as `next_pings`, so clients can route by
them. Records expire after `ttl` seconds, so a server that dies vanishes within a few periods.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from zswarm.blocks import format_blocks
from zswarm.defaults import NEXT_PING_TIMEOUT_S
from zswarm.probe import measure_rtts
from zswarm.records import aannounce_blocks, afetch_block_servers
from zswarm.swarm_info import ServerRecord, ServerState

logger = logging.getLogger(__name__)

MAX_PINGED = 16  # servers of the next block we ping per period


class Announcer:
    def __init__(self, node, transport, make_record: Callable[[ServerState], ServerRecord], *,
                 num_blocks: int, ttl: float, period: float):
        self.node = node
        self.transport = transport
        self.make_record = make_record
        self.num_blocks = num_blocks
        self.ttl = ttl
        self.period = period
        self.state = ServerState.JOINING
        self.next_pings: dict[str, float] = {}
        self.withheld: str | None = None  # why nothing is announced now (the swarm cannot reach us); None: announce

    async def announce(self, state: ServerState | None = None, record: ServerRecord | None = None) -> bool:
        """Publish now (with a new state, or an explicit record such as OFFLINE for old blocks).
        While `withheld`, only OFFLINE records go out: they tell the swarm less, never more."""
        explicit = state is not None or record is not None
        if state is not None:
            self.state = state
        record = record or self.make_record(self.state)
        if self.withheld is not None and record.state != ServerState.OFFLINE:
            logger.debug("not announcing blocks %s as %s: %s", format_blocks(record.start, record.end),
                         record.state.name, self.withheld)
            return False
        record.next_pings = dict(self.next_pings) if record.state != ServerState.OFFLINE else {}
        try:
            stored = await aannounce_blocks(self.node, record, self.ttl, num_blocks=self.num_blocks)
        except Exception as exc:  # the DHT being unreachable must not kill the server
            logger.warning("announce of blocks %s as %s failed: %s", format_blocks(record.start, record.end),
                           record.state.name, exc)
            return False
        logger.log(logging.INFO if explicit else logging.DEBUG,
                   "announced blocks %s as %s (ttl %.0fs, %d cache tokens left)%s",
                   format_blocks(record.start, record.end), record.state.name, self.ttl, record.cache_tokens_left,
                   "" if stored else " -- no DHT peer accepted it yet")
        return stored

    async def measure_next_pings(self, my_peer_id: str, end: int, model_id: str) -> dict[str, float]:
        if end >= self.num_blocks:
            self.next_pings = {}
            return self.next_pings
        try:
            (servers,) = await afetch_block_servers(self.node, model_id, end, end + 1)
        except Exception as exc:
            logger.debug("cannot fetch servers of block %d: %s", end, exc)
            return self.next_pings
        targets = [r for pid, r in servers.items() if pid != my_peer_id and r.state != ServerState.OFFLINE]
        targets = targets[:MAX_PINGED]

        rtts = await measure_rtts(self.transport, {r.peer_id: r.endpoint for r in targets}, timeout=NEXT_PING_TIMEOUT_S)
        self.next_pings = {pid: round(t, 6) for pid, t in rtts.items() if t is not None}
        return self.next_pings

    async def run(self, my_peer_id: str, current_end: Callable[[], int], model_id: str) -> None:
        """Every period: ping the next servers, then re-announce in the current state."""
        while True:
            await asyncio.sleep(self.period)
            await self.measure_next_pings(my_peer_id, current_end(), model_id)
            await self.announce()
