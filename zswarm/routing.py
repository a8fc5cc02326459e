"""Which servers a client sends its hidden states through: pure functions over plain data.

Inference (one token at a time, latency is what matters)
    `find_inference_route` returns the chain of server spans with the least expected time per
    token. A route is a sequence of spans ``[(p1, start, b1), (p2, b1, b2), ..., (pk, bk-1, end)]``
    and costs, per token:

        sum over spans  (blocks / inference_rps)        compute on that server
                      + hop_overhead                    serialisation, queues, Python, per call
                      + no_cache_penalty if the server announced no cache room
        + network legs: client -> p1, p_i -> p_(i+1), pk -> client

    How a leg between two spans is paid depends on who carries the hidden states (``relay``):

    - ``"client"`` (our RPC protocol today: every span is one call from the client):
      p_i -> client -> p_(i+1) costs rtt(p_i)/2 + rtt(p_(i+1))/2, so each span costs one
      client round trip.
    - ``"server"`` (servers push to each other, Petals' push path): the leg costs half the
      ping p_i announced to p_(i+1) in its `next_pings`; where none was announced we fall
      back to the client detour above.

    This is a shortest path (Dijkstra) over (server, block) nodes. Two node kinds per server
    and boundary keep spans non-empty: ``arrive`` (hidden states of boundary k have just reached
    the server, which must compute at least one block) and ``done`` (the server has computed up
    to k; it may go on or hand over). Because per-block costs are linear, an optimal route only
    ever changes servers at a boundary where some span starts or ends, so only those
    boundaries become nodes: tens of nodes per server instead of one per block, same minimum.
    `inference_route_cost` prices any route with the same model; the tests check the Dijkstra
    result against brute force over every route with it.

Forward / backward (long batches, throughput is what matters)
    `find_forward_route` walks from `start` to `end`, each time picking, among the servers that
    hold the current block, one at random with weight ``throughput * blocks it would cover``: load
    spreads over replicas in proportion to their speed, and long spans (fewer hops) are preferred.

Both raise `zswarm.errors.NoRouteError` naming the blocks no candidate covers.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Collection, Literal, Mapping, Sequence

from zswarm.defaults import HOP_OVERHEAD_S, NO_CACHE_PENALTY_S, UNKNOWN_RTT_S
from zswarm.blocks import format_blocks
from zswarm.errors import NoRouteError
from zswarm.swarm_info import finite_nonneg

__all__ = [
    "RouteCandidate",
    "RouteSpan",
    "ROUTING_DEFAULTS",
    "candidates",
    "NoRouteError",
    "find_inference_route",
    "find_inference_route_with_cost",
    "find_forward_route",
    "inference_route_cost",
    "uncovered_ranges",
]

Relay = Literal["client", "server"]

_MIN_RPS = 1e-3  # a zero, negative or non-finite announced rate is treated as this (very slow)


@dataclass
class RouteCandidate:
    """One server as the client sees it: blocks [start, end) and what it announced or we measured."""

    peer_id: str
    start: int
    end: int
    inference_rps: float  # per-block single-token steps/s
    rtt_from_client: float | None  # s, measured by the client; None = not measured yet
    next_pings: dict[str, float] = field(default_factory=dict)  # peer_id -> RTT s, announced
    cache_room: bool = True  # whether it announced room for this session's cache
    throughput: float = 0.0  # tokens/s of the whole server (Petals' sense), for forward routes

    @classmethod
    def from_record(cls, record, start: int, end: int, *, rtt: float | None, tokens_needed: int = 0,
                    measured_rps: float | None = None) -> "RouteCandidate":
        """A server's record (zswarm.swarm_info.ServerRecord) as a candidate for blocks [start, end);
        `measured_rps`, once the client has measured the server, stands for the announced rate."""
        rps = record.inference_rps if measured_rps is None else measured_rps
        return cls(peer_id=record.peer_id, start=max(start, record.start), end=min(end, record.end),
                   inference_rps=rps, rtt_from_client=rtt, next_pings=dict(record.next_pings),
                   cache_room=record.cache_tokens_left >= tokens_needed, throughput=record.throughput)


@dataclass(frozen=True)
class RouteSpan:
    """Send blocks [start, end) to `peer_id`."""

    peer_id: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


# The settings every route is priced with unless the caller says otherwise (ClientConfig's defaults).
ROUTING_DEFAULTS = dict(hop_overhead=HOP_OVERHEAD_S, no_cache_penalty=NO_CACHE_PENALTY_S, unknown_rtt=UNKNOWN_RTT_S)


def candidates(blocks: Sequence[Mapping[str, object]], start: int, end: int, *,
               rtts: Mapping[str, float | None], banned: Collection[str] = (),
               tokens_needed: int = 0, measured_rps: Mapping[str, float] | None = None) -> list[RouteCandidate]:
    """The servers for blocks [start, end) as route candidates, spans cut to that range: the one
    place a server's record becomes what routing reads. The client's SequenceManager and
    zswarm-inspect both build theirs here.

    `blocks[b]`: peer_id -> the `zswarm.swarm_info.ServerRecord` of each usable server of block b.
    `banned` servers are left out, except where a block would be left with no server at all;
    a server whose RTT is None (it did not answer a ping) is left out. `measured_rps`: per-block
    decode rates the caller measured, used instead of what those servers announced (an inflated
    record then buys nothing once measured).
    """
    chosen: set[str] = set()
    records: dict = {}
    for block in blocks[start:end]:
        fine = {peer for peer in block if peer not in banned}
        chosen |= fine if fine else set(block)
        for peer, record in block.items():
            records.setdefault(peer, record)
    out = []
    for peer in sorted(chosen):
        if peer in rtts and rtts[peer] is None:
            continue
        out.append(RouteCandidate.from_record(records[peer], start, end, rtt=rtts.get(peer),
                                              tokens_needed=tokens_needed,
                                              measured_rps=(measured_rps or {}).get(peer)))
    return out


def _block_time(c: RouteCandidate) -> float:
    rps = finite_nonneg(c.inference_rps, 0.0)
    return 1.0 / max(rps, _MIN_RPS)


def uncovered_ranges(candidates: Sequence[RouteCandidate], start: int, end: int) -> list[tuple[int, int]]:
    """Half-open ranges inside [start, end) that no candidate holds."""
    covered = sorted((max(c.start, start), min(c.end, end)) for c in candidates if c.start < end and c.end > start
                     and c.start < c.end)
    gaps, reached = [], start
    for a, b in covered:
        if a > reached:
            gaps.append((reached, a))
        reached = max(reached, b)
    if reached < end:
        gaps.append((reached, end))
    return gaps


def _check_range(start: int, end: int) -> None:
    if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end <= start:
        raise ValueError(f"need 0 <= start < end, got start={start!r}, end={end!r}")


class _Costs:
    """The per-token cost model shared by the router and `inference_route_cost`."""

    def __init__(self, candidates, hop_overhead, no_cache_penalty, relay, unknown_rtt):
        if relay not in ("client", "server"):
            raise ValueError(f"relay must be 'client' or 'server', got {relay!r}")
        self.relay = relay
        self.hop_overhead = finite_nonneg(hop_overhead, HOP_OVERHEAD_S)
        self.no_cache_penalty = finite_nonneg(no_cache_penalty, NO_CACHE_PENALTY_S)
        unknown = finite_nonneg(unknown_rtt, UNKNOWN_RTT_S)
        self.rtt = [finite_nonneg(c.rtt_from_client, unknown) if c.rtt_from_client is not None else unknown
                    for c in candidates]
        self.block_time = [_block_time(c) for c in candidates]
        self.candidates = candidates

    def enter(self, i: int) -> float:
        """Paid once per span on server i: per-call overhead and the no-cache penalty."""
        c = self.candidates[i]
        return self.hop_overhead + (0.0 if c.cache_room else self.no_cache_penalty)

    def first_leg(self, i: int) -> float:
        return self.rtt[i] / 2

    def last_leg(self, i: int) -> float:
        return self.rtt[i] / 2

    def hand_over(self, i: int, j: int) -> float:
        """Network time for the hidden states to go from server i's output to server j."""
        detour = self.rtt[i] / 2 + self.rtt[j] / 2
        if self.relay == "client":
            return detour
        ping = self.candidates[i].next_pings.get(self.candidates[j].peer_id) if isinstance(
            self.candidates[i].next_pings, dict) else None
        ping = finite_nonneg(ping, -1.0) if ping is not None else -1.0
        return ping / 2 if ping >= 0 else detour


def inference_route_cost(route: Sequence[RouteSpan], candidates: Sequence[RouteCandidate], *,
                         hop_overhead: float = HOP_OVERHEAD_S,
                         no_cache_penalty: float = NO_CACHE_PENALTY_S,
                         relay: Relay = "client", unknown_rtt: float = UNKNOWN_RTT_S) -> float:
    """Expected seconds per token along `route`, in the same model `find_inference_route` minimises.

    Each span is matched to the first candidate with its peer_id that holds its blocks.
    """
    costs = _Costs(list(candidates), hop_overhead, no_cache_penalty, relay, unknown_rtt)
    index = []
    for span in route:
        for i, c in enumerate(candidates):
            if c.peer_id == span.peer_id and c.start <= span.start < span.end <= c.end:
                index.append(i)
                break
        else:
            raise ValueError(f"no candidate {span.peer_id!r} holds blocks {format_blocks(span.start, span.end)}")
    total = 0.0
    for k, (span, i) in enumerate(zip(route, index)):
        total += costs.enter(i) + span.length * costs.block_time[i]
        total += costs.first_leg(i) if k == 0 else costs.hand_over(index[k - 1], i)
    return total + costs.last_leg(index[-1]) if index else 0.0


def find_inference_route(candidates: Sequence[RouteCandidate], start: int, end: int, *,
                         hop_overhead: float = HOP_OVERHEAD_S,
                         no_cache_penalty: float = NO_CACHE_PENALTY_S,
                         relay: Relay = "client", unknown_rtt: float = UNKNOWN_RTT_S,
                         model_id: str = "the model") -> list[RouteSpan]:
    """The route through blocks [start, end) with the least expected time per token.

    Ties go to the route with fewer spans. Raises NoRouteError when some block has no candidate.
    """
    return find_inference_route_with_cost(candidates, start, end, hop_overhead=hop_overhead,
                                          no_cache_penalty=no_cache_penalty, relay=relay,
                                          unknown_rtt=unknown_rtt, model_id=model_id)[0]


def find_inference_route_with_cost(candidates: Sequence[RouteCandidate], start: int, end: int, *,
                                   hop_overhead: float = HOP_OVERHEAD_S,
                                   no_cache_penalty: float = NO_CACHE_PENALTY_S,
                                   relay: Relay = "client", unknown_rtt: float = UNKNOWN_RTT_S,
                                   model_id: str = "the model") -> tuple[list[RouteSpan], float]:
    """`find_inference_route` and its expected seconds per token (what placement compares)."""
    _check_range(start, end)
    usable = [c for c in candidates if c.start < c.end and c.start < end and c.end > start]
    gaps = uncovered_ranges(usable, start, end)
    if gaps:
        raise NoRouteError(gaps, model_id)
    costs = _Costs(usable, hop_overhead, no_cache_penalty, relay, unknown_rtt)

    # The only boundaries where changing servers can pay off: where some span starts or ends.
    cuts = {start, end}
    for c in usable:
        cuts.add(max(c.start, start))
        cuts.add(min(c.end, end))
    cuts = sorted(cuts)
    points = []  # points[i] = the cut boundaries inside candidate i's clipped span, ascending
    holders: dict[int, list[int]] = {k: [] for k in cuts}  # boundary -> candidates that can take over there
    for i, c in enumerate(usable):
        lo, hi = max(c.start, start), min(c.end, end)
        mine = [k for k in cuts if lo <= k <= hi]
        points.append(mine)
        for k in mine[:-1]:
            holders[k].append(i)

    # Node = (kind, candidate, boundary); kind 0 = arrive, 1 = done. Labels are (cost, spans).
    best: dict[tuple, tuple[float, int]] = {}
    parent: dict[tuple, tuple | None] = {}
    heap: list = []
    order = 0

    def relax(node, cost, spans, prev):
        nonlocal order
        old = best.get(node)
        if old is None or (cost, spans) < old:
            best[node] = (cost, spans)
            parent[node] = prev
            order += 1
            heapq.heappush(heap, (cost, spans, order, node))

    for i in holders[start]:
        relax((0, i, start), costs.first_leg(i) + costs.enter(i), 1, None)

    next_point = [{k: pts[n + 1] for n, k in enumerate(pts[:-1])} for pts in points]
    finish: tuple[float, int, tuple] | None = None
    while heap:
        cost, spans, _, node = heapq.heappop(heap)
        if best.get(node) != (cost, spans):
            continue  # a stale heap entry
        kind, i, k = node
        if kind == 1 and k == end:
            total = (cost + costs.last_leg(i), spans)
            if finish is None or total < finish[:2]:
                finish = (total[0], total[1], node)
            continue
        if finish is not None and (cost, spans) >= finish[:2]:
            break  # every remaining label is at least as costly as the best finished route
        nk = next_point[i].get(k)
        if nk is not None:  # compute on through the next stretch on the same server
            relax((1, i, nk), cost + (nk - k) * costs.block_time[i], spans, node)
        if kind == 1:
            for j in holders[k]:
                if j != i:
                    relax((0, j, k), cost + costs.hand_over(i, j) + costs.enter(j), spans + 1, node)

    assert finish is not None, "covered blocks always have a route"
    # Walk back to the start, then turn the compute stretches into spans: a stretch that leaves
    # an "arrive" node opens a new span, one that leaves a "done" node extends the current one.
    path = []
    node = finish[2]
    while node is not None:
        path.append(node)
        node = parent[node]
    path.reverse()
    route: list[RouteSpan] = []
    for prev, node in zip(path, path[1:]):
        if node[0] != 1:
            continue  # a hand-over, not a compute stretch
        peer = usable[node[1]].peer_id
        if prev[0] == 1 and route:
            route[-1] = RouteSpan(peer, route[-1].start, node[2])
        else:
            route.append(RouteSpan(peer, prev[2], node[2]))
    return route, finish[0]


def find_forward_route(candidates: Sequence[RouteCandidate], start: int, end: int, *,
                       rng: random.Random | None = None, model_id: str = "the model") -> list[RouteSpan]:
    """A route for forward/backward batches: throughput-weighted random choice among replicas.

    At each boundary, a server holding the current block is drawn with probability proportional
    to ``throughput * blocks it covers from here``, so load spreads in proportion to speed and
    long spans (fewer hops) are preferred. `throughput` falls back to `inference_rps` when unset.
    """
    _check_range(start, end)
    rng = rng if rng is not None else random.Random()
    usable = [c for c in candidates if c.start < c.end and c.start < end and c.end > start]
    gaps = uncovered_ranges(usable, start, end)
    if gaps:
        raise NoRouteError(gaps, model_id)
    route: list[RouteSpan] = []
    k = start
    while k < end:  # each step advances k by at least one block, so this ends
        here = [c for c in usable if c.start <= k < c.end]
        weights = []
        for c in here:
            speed = finite_nonneg(c.throughput, 0.0) or finite_nonneg(c.inference_rps, 0.0) or _MIN_RPS
            weights.append(speed * (min(c.end, end) - k))
        chosen = rng.choices(here, weights=weights)[0]
        stop = min(chosen.end, end)
        route.append(RouteSpan(chosen.peer_id, k, stop))
        k = stop
    return route
