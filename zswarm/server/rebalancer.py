"""Where to sit in the swarm: the first choice of blocks, and periodic checks whether to move.

The decisions themselves are zswarm.placement's pure functions; this module turns DHT records
into its `SwarmView` and runs the check on a randomised period. Hysteresis against servers
flipping back and forth (Petals #389), on top of placement's own balance-quality rule:
- a server does not move again within `min_move_interval` of starting or of its last move;
- it announces its new blocks (JOINING) the moment it decides, so a peer checking a moment
  later already sees the swarm as it will be, and does not make the same move;
- check periods are random (uniform in 0.5x..1.5x the mean), so peers rarely check at once.

The latency strategy is fed the RTTs this server measures to every other server of the model
(two `ping`s each, all servers at once, before each decision, over the server's own transport): they stand in for the regions a real server
does not know (`zswarm.placement.latency`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable, Optional

from zswarm import probe
from zswarm.blocks import format_blocks
from zswarm.defaults import REBALANCE_PING_TIMEOUT_S
from zswarm.placement import SwarmView, choose_blocks, should_move
from zswarm.records import afetch_block_servers
from zswarm.swarm_info import ServerRecord, live_records

logger = logging.getLogger(__name__)


def swarm_view(num_blocks: int, blocks: list[dict[str, ServerRecord]], *, exclude: Optional[str] = None):
    """DHT records (one dict per block) -> placement.SwarmView with one ServerSpan per live server."""
    return SwarmView.from_records(num_blocks, blocks, exclude=exclude)


async def measure_rtts(transport, blocks: list[dict[str, ServerRecord]], my_peer_id: str) -> dict[str, float]:
    """peer_id -> RTT (s) to every other live server, the least of two pings (the first also pays
    for connecting), over `transport` (the server's own); those that do not answer are left out."""
    records = live_records(blocks, exclude=my_peer_id)
    rtts = await probe.measure_rtts(transport, {peer: r.endpoint for peer, r in records.items()},
                                    timeout=REBALANCE_PING_TIMEOUT_S, tries=2)
    return {peer_id: t for peer_id, t in rtts.items() if t is not None}


async def choose_initial_blocks(node, transport, model_id: str, num_blocks: int, blocks_to_host: int,
                                strategy: str, my_peer_id: str, throughput: float,
                                inference_rps: float) -> tuple[int, int]:
    blocks = await afetch_block_servers(node, model_id, 0, num_blocks)
    view = swarm_view(num_blocks, blocks, exclude=my_peer_id)
    pings = await measure_rtts(transport, blocks, my_peer_id) if strategy == "latency" else {}
    start, end = choose_blocks(view, blocks_to_host, strategy=strategy, my_peer_id=my_peer_id,
                               throughput=throughput, inference_rps=inference_rps, pings=pings)
    logger.info("chose blocks %s (%s placement; %d other servers in the swarm, %d answered a ping)",
                format_blocks(start, end), strategy, len(view.servers), len(pings))
    return int(start), int(end)


class Rebalancer:
    def __init__(self, *, node, transport, model_id: str, num_blocks: int, peer_id: str, strategy: str,
                 balance_quality: float, mean_period: float, min_move_interval: float,
                 current_range: Callable[[], tuple[int, int]],
                 move: Callable[[int, int], Awaitable[None]], rng: Optional[random.Random] = None):
        self.node, self.transport = node, transport  # the server's own transport, for the pings
        self.model_id, self.num_blocks, self.peer_id = model_id, num_blocks, peer_id
        self.strategy, self.balance_quality = strategy, balance_quality
        self.mean_period, self.min_move_interval = mean_period, min_move_interval
        self.current_range, self.move = current_range, move
        self.rng = rng or random.Random()
        self.last_move = time.monotonic()  # starting counts as a move: no move right after joining
        self.moves = 0

    async def check(self) -> Optional[tuple[int, int]]:
        """One check: the range to move to, or None to stay."""
        if time.monotonic() - self.last_move < self.min_move_interval:
            return None
        blocks = await afetch_block_servers(self.node, self.model_id, 0, self.num_blocks)
        view = swarm_view(self.num_blocks, blocks)
        if not any(s.peer_id == self.peer_id for s in view.servers):
            return None  # our own record is not visible yet: no basis to decide on
        pings = await measure_rtts(self.transport, blocks, self.peer_id) if self.strategy == "latency" else {}
        target = should_move(view, self.peer_id, self.strategy, balance_quality=self.balance_quality, pings=pings)
        if target is None or tuple(target) == tuple(self.current_range()):
            return None
        return int(target[0]), int(target[1])

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.mean_period * self.rng.uniform(0.5, 1.5))
            try:
                target = await self.check()
            except Exception as exc:  # a DHT hiccup: try again next period
                logger.warning("rebalance check failed: %s", exc)
                continue
            if target is None:
                continue
            start, end = self.current_range()
            logger.info("rebalancing: moving from blocks %s to %s (the swarm's weakest blocks would gain)",
                        format_blocks(start, end), format_blocks(*target))
            self.last_move = time.monotonic()
            self.moves += 1
            await self.move(*target)
            self.last_move = time.monotonic()
