"""SourceRateLimit: a token bucket per request source (issue 14, DHT hardening).

A source is what diversity.py counts a contact against first: a public IP, or the ip:port of a
loopback or private one. Requests over the rate are dropped unanswered, so one address cannot make
a node spend its CPU and upstream on it (nor, with a spoofed source, on a victim).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from dht.diversity import address_groups

_MAX_SOURCES = 4096  # buckets kept; the least recently seen are forgotten (they start full again)


def source_of(addr) -> str:
    groups = address_groups(addr[0], addr[1])
    return groups[1][1] if len(groups) > 1 else groups[0][1]


class SourceRateLimit:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)
        self.dropped = 0

    def allow(self, addr) -> bool:
        """Take one token of addr's source; False (and counted) when it has none left."""
        source = source_of(addr)
        now = self.clock()
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > _MAX_SOURCES:
            self._buckets.popitem(last=False)
        if not allowed:
            self.dropped += 1
        return allowed
