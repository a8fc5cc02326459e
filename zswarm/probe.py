"""The one RTT probe: how long a `ping` to a server takes. The client's SequenceManager, the
server's announcer (next_pings) and rebalancer (the latency strategy's pings), and zswarm-inspect
all measure round trips here, each over a transport it already holds (a server reuses its own)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping

__all__ = ["ping_rtt", "measure_rtt", "measure_rtts"]

logger = logging.getLogger(__name__)


async def ping_rtt(transport, address: str, *, timeout: float) -> float:
    """Seconds one `ping` to `address` took; raises what the call raised when it got no answer."""
    began = time.perf_counter()
    await transport.call(address, "ping", {}, timeout=timeout)
    return time.perf_counter() - began


async def measure_rtt(transport, address: str, *, timeout: float, tries: int = 1) -> float | None:
    """The least RTT of `tries` pings (the first also pays for connecting), or None when one
    goes unanswered: gone, busy or not a server is no measurement, not an error."""
    best = None
    for _ in range(max(1, tries)):
        try:
            rtt = await ping_rtt(transport, address, timeout=timeout)
        except Exception as exc:
            logger.debug("ping %s: %s", address, exc)
            return None
        best = rtt if best is None else min(best, rtt)
    return best


async def measure_rtts(transport, addresses: Mapping[str, str], *, timeout: float,
                       tries: int = 1) -> dict[str, float | None]:
    """`measure_rtt` of every {key: address} at once: key -> RTT seconds, or None."""
    keys = list(addresses)
    results = await asyncio.gather(*(measure_rtt(transport, addresses[k], timeout=timeout, tries=tries)
                                     for k in keys))
    return dict(zip(keys, results))
