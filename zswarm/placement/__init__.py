"""Where a server puts its blocks, and whether it should move: pure functions over plain data.

    from zswarm.placement import SwarmView, ServerSpan, choose_blocks, should_move
    start, end = choose_blocks(view, 20, strategy="latency", my_peer_id=me, throughput=310.0,
                               inference_rps=250.0)
    target = should_move(view, me, strategy="latency")      # (start, end) or None

Strategies: ``"petals"`` (Petals' rule, `zswarm.placement.petals`) and ``"latency"`` (ours, the
default: `zswarm.placement.latency`, which explains why it wins). Both take the same context
keywords and ignore the ones they do not use.
"""

from __future__ import annotations

import random

from zswarm.defaults import STRATEGIES
from zswarm.placement.latency import LatencyModel, expected_time_per_token, latency_choose_blocks, latency_should_move
from zswarm.placement.petals import petals_choose_blocks, petals_should_move
from zswarm.placement.swarm import JOINING, OFFLINE, ONLINE, ServerSpan, SwarmView, block_throughputs

__all__ = [
    "SwarmView",
    "ServerSpan",
    "OFFLINE",
    "JOINING",
    "ONLINE",
    "STRATEGIES",
    "LatencyModel",
    "choose_blocks",
    "should_move",
    "block_throughputs",
    "expected_time_per_token",
]


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def choose_blocks(view: SwarmView, num_blocks_to_host: int, strategy: str = "latency", **ctx) -> tuple[int, int]:
    """Blocks [start, end) for a server that joins now with `num_blocks_to_host` blocks.

    Context keywords (all optional): `my_peer_id` (left out of the view, as when it reloads),
    `throughput`, `inference_rps`, `region` and `pings` (peer_id -> RTT s) of this server, and
    `model` (a `LatencyModel`: distances, client weights, slack) for the latency strategy.
    """
    _check_strategy(strategy)
    if strategy == "petals":
        return petals_choose_blocks(view, num_blocks_to_host, **ctx)
    return latency_choose_blocks(view, num_blocks_to_host, **ctx)


def should_move(view: SwarmView, my_peer_id: str, strategy: str = "latency", balance_quality: float = 0.75,
                *, rng: random.Random | None = None, **ctx) -> tuple[int, int] | None:
    """The blocks this server should move to, or None to stay.

    `balance_quality` is Petals' threshold (move when the swarm's minimum block throughput would
    rise by more than 1/0.75); `rng` seeds Petals' random order; `hysteresis=False` gives Petals'
    rule without our anti-flip-flop check; `model` as in `choose_blocks`.
    """
    _check_strategy(strategy)
    if strategy == "petals":
        return petals_should_move(view, my_peer_id, balance_quality=balance_quality, rng=rng, **ctx)
    return latency_should_move(view, my_peer_id, balance_quality=balance_quality, **ctx)
