"""The least time per token any placement could give a client: a yardstick for the strategies.

For a client in region r, a route is a set of distinct servers, each computing a contiguous part
of the model. Per token it costs at least, per span, the network legs to that server (relay
"client": one client round trip; relay "server": half a round trip at each end of the route and
half the smallest server-to-server RTT per hand-over) and the per-call overhead, plus the compute
of every block on the server that computes it. Whatever the placement, the best case is that
the chosen servers' blocks add up to the model and each block is computed by the fastest of them
that still has room. Enumerating every set of servers gives the exact minimum of that bound.
It leaves out queueing, batching and transfer time, so simulated runs sit above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from .scenario import Scenario

MAX_SERVERS = 40  # above this the enumeration would be slow; the bound is then not computed


def _compute_s(chosen, num_blocks: int) -> float | None:
    """Seconds to compute all blocks on these servers, fastest first; None if they cannot hold the model."""
    left, total = num_blocks, 0.0
    for ms, blocks in sorted((s.gpu.block_ms, s.blocks) for s in chosen):
        take = min(left, blocks)
        total += take * ms / 1000
        left -= take
        if left == 0:
            return total
    return None


@dataclass
class Floor:
    """The cheapest route any placement could give one client, and what it is made of (seconds)."""

    spans: int
    compute: float  # every block on the fastest chosen server with room
    network: float  # client round trips (relay "client") or legs and hand-overs (relay "server")
    overhead: float  # per-call overhead, once per span

    @property
    def total(self) -> float:
        return self.compute + self.network + self.overhead


def least_time_breakdown(sc: Scenario, region: str, relay: str) -> Floor | None:
    """The lower bound above for a client in `region`, with its parts (None when too many servers)."""
    servers = sc.servers
    if len(servers) > MAX_SERVERS:
        return None
    biggest = sorted((s.blocks for s in servers), reverse=True)
    fewest = next((k for k in range(1, len(biggest) + 1) if sum(biggest[:k]) >= sc.num_blocks), None)
    if fewest is None:
        return None
    best: Floor | None = None
    min_ping = min(sc.rtt(a.region, b.region) for a in servers for b in servers)
    min_rtt = min(sc.rtt(region, s.region) for s in servers)
    min_compute = sc.num_blocks * min(s.gpu.block_ms for s in servers) / 1000
    for k in range(fewest, len(servers) + 1):
        # what any route of k spans pays at least; once that exceeds the best found, more spans cannot help
        per_span = sc.hop_overhead_s + (min_rtt if relay == "client" else min_ping / 2)
        if best is not None and min_compute + k * per_span >= best.total:
            break
        for chosen in combinations(servers, k):
            compute = _compute_s(chosen, sc.num_blocks)
            if compute is None:
                continue
            rtts = sorted(sc.rtt(region, s.region) for s in chosen)
            if relay == "client":
                network = sum(rtts)
            else:  # in at the nearest, out at the next nearest, hand-overs at the smallest ping
                network = (rtts[0] + (rtts[1] if k > 1 else rtts[0])) / 2 + (k - 1) * min_ping / 2
            floor = Floor(k, compute, network, k * sc.hop_overhead_s)
            if best is None or floor.total < best.total:
                best = floor
    return best


def least_time_per_token(sc: Scenario, region: str, relay: str) -> float | None:
    """The lower bound above, in seconds, for a client in `region` (None when too many servers)."""
    floor = least_time_breakdown(sc, region, relay)
    return None if floor is None else floor.total


def client_weighted_bound(sc: Scenario, relay: str) -> float | None:
    """The bound averaged over the scenario's clients (by their regions' shares)."""
    total = sum(sc.client_regions.values()) or 1.0
    value = 0.0
    for region, share in sc.client_regions.items():
        bound = least_time_per_token(sc, region, relay)
        if bound is None:
            return None
        value += bound * share / total
    return value
