"""Our placement: put a server where it most lowers the time per token clients will see.

Per token, a client pays the compute of every block on the servers its route uses, plus, per
span of the route, one network leg and one call's overhead. Petals places a server where the
swarm's throughput is weakest; that maximises capacity but ignores where the server is and how
routes will cut the model.

The rule (`latency_choose_blocks`), over a handful of candidate windows (those that start or
end where another span starts or ends, the model's ends, the edges of gaps and Petals' own
choice: a route only changes server at such boundaries, so an unaligned window buys an extra
hop):

1. coverage first: fewest blocks that nobody serves;
2. throughput: the windows whose resulting minimum per-block throughput is within
   `throughput_slack` (default 0) of the best window's, or at least `target_throughput`;
3. the least expected time per token over representative clients, one per region (weighted by
   where servers are, or `client_weights`), each routed by `zswarm.routing` with the client's
   own cost model: fast servers, fewer hops and spans that continue a chain in the same region
   all fall out of this one number. Unserved blocks count as served by a far, slow stand-in, so
   even before the model is covered a server extends the chain nearest to it. Ties go to
   Petals' order.

Rebalancing (`latency_should_move`), in this order:

- Petals' reasons, judged on this move alone: the choice above (with this server taken out)
  serves more blocks, or the minimum block throughput where the server is now is below
  `balance_quality` of what that choice gives;
- latency: the window with the least time per token among those after which every block is
  still served and the swarm's weakest block is no weaker than now, if it lowers the time per
  token by `min_gain` (1%). A server that alone holds some blocks does not move for latency
  or that only it serves while others still load them (they would go unserved while it
  reloads).

No cycles (with the default slack 0): a throughput move raises the minimum block throughput by
a third, a latency move never lowers it and lowers the time per token, so (minimum, -time)
rises with every move and no sequence of moves returns to an earlier placement. Of identical servers on the same blocks
only the one with the smallest peer_id moves in a given check (`has_senior_twin`).

What the simulator says (tools/simulate.py; docs/placement_results.md has the tables):

- Joins decide little once the model is covered: with throughput kept (step 2) the weakest
  block fixes the window, as in Petals. Where Petals' rule gives a continent only part of the
  model, every route crosses an ocean once per span, and the latency score wins big
  (split-regions: 1.7x lower time per token at equal throughput).
- The latency move is where the public swarms gain: greedy joins leave a region with three
  replicas of the first half and only slow cards on the second (public-swarm: us-east); a move that
  completes the region's chain without weakening the weakest block cuts that region's routes
  by 10-15%. Over 6 join orders of public-swarm this gives 1.08x on average (min 1.02x)
  against 1.01x before it (public-swarm-big-gpus: 1.06x against 1.00x). The price: a few
  more reloads, and 37 of 42 instances of all scenarios within 5% of Petals' throughput and
  coverage against 39 before (greedy placement is chaotic in join order; every scenario file
  passes). A 15% threshold almost never fired; 0.5-4% all gave 1.06-1.08x and 1% was the
  best of those on the mean (chosen on those same instances: a setting, not a proof).
- Giving up throughput for latency did not pay: letting joins pick windows that raise the
  weakest block less (a slack of 5%, 20%, 100%) gained up to 1.17x on some swarms but lost
  4-25% capacity on others, depending chaotically on join order.
- The ceiling is low on a public swarm: `tools/simulator/bound.py` enumerates every set of
  servers that could hold the model and gives the least unloaded time per token any placement
  could give. On public-swarm that is 195 ms (three 24 GB cards are needed per route: 81 ms
  compute, 3 x 30 ms client round trips, 3 x 8 ms call overhead) against Petals' 244 ms, so no
  placement could be more than 1.25x faster there; the 2x asked for in issue 9 would need 122
  ms, room for the compute and a single span: one server holding all 80 blocks, which no card
  there can. docs/placement_results.md derives this and shows which assumption moves it
  (`--what-if`).

Distances: client-to-server RTTs come from `region_rtt(a, b)` (a dict keyed by region pairs or a
function) for servers whose `region` is known, else from defaults by whether regions match. A
real server knows no regions; it measures its RTT to every other server (`pings`, as
zswarm/server/rebalancer.py does) and those within `NEAR_RTT` (50 ms) become its region, every
other server a region of its own (`_regions_from_pings`). In the simulator this recovers the
split-regions win (1.71x) with no labels at all (`tools/simulate.py --blind`). With neither
labels nor pings, one representative client sits at an unknown distance from everyone and the
score rewards fewer hops and faster servers only. Server-to-server legs (relay "server") use
the announced `next_pings` and the deciding server's `pings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from zswarm.defaults import HOP_OVERHEAD_S, UNKNOWN_REGION_RTT_S
from zswarm.placement.petals import best_start
from zswarm.placement.swarm import (ONLINE, ServerSpan, SwarmView, block_throughputs, check_request,
                                   clean_throughput, has_senior_twin)
from zswarm.routing import RouteCandidate, find_inference_route_with_cost
from zswarm.swarm_info import finite_nonneg

__all__ = ["LatencyModel", "latency_choose_blocks", "latency_should_move"]

SAME_REGION_RTT = 0.02  # s
CROSS_REGION_RTT = 0.12  # s
NEAR_RTT = 0.05  # s: without region labels, servers this close to the deciding one count as its region
_GAP_PEER = "\x00gap"  # the stand-in for unserved blocks; not a valid peer id
_NEAR = "\x00near"  # the pseudo-region of the deciding server and those it measured as near


@dataclass
class LatencyModel:
    """How placement prices a route: the same knobs the client's router uses, plus distances."""

    region_rtt: Mapping[tuple, float] | Callable[[str | None, str | None], float] | None = None
    client_weights: Mapping[str | None, float] | None = None  # region -> share of clients
    hop_overhead: float = HOP_OVERHEAD_S
    relay: str = "client"
    throughput_slack: float = 0.0
    target_throughput: float | None = None
    min_gain: float = 0.01

    def rtt(self, a: str | None, b: str | None) -> float:
        if self.region_rtt is not None and a is not None and b is not None:
            if callable(self.region_rtt):
                value = self.region_rtt(a, b)
            else:
                value = self.region_rtt.get((a, b), self.region_rtt.get((b, a)))
            value = finite_nonneg(value, -1.0) if value is not None else -1.0
            if value >= 0:
                return value
        if a is None or b is None:
            return UNKNOWN_REGION_RTT_S
        return SAME_REGION_RTT if a == b else CROSS_REGION_RTT


def _regions_from_pings(view: SwarmView, my_peer_id: str | None, region: str | None, pings, model: LatencyModel):
    """Without region labels, the RTTs the deciding server measured stand in for them.

    A real server knows no regions; it can measure its RTT to the others. Servers within
    `NEAR_RTT` of it form its region (a client near it reaches them at their measured RTT);
    every other server is a region of its own, far from all but itself. So "complete my
    region's chain" works from measurements alone. Labels, where any are known, win.
    """
    measured = {}
    for peer, rtt in (pings or {}).items() if isinstance(pings, Mapping) else ():
        rtt = finite_nonneg(rtt, -1.0)
        if rtt >= 0:
            measured[peer] = rtt
    if region is not None or not measured or any(s.region is not None for s in view.servers):
        return view, region, model

    def label(peer: str) -> str:
        near = peer == my_peer_id or measured.get(peer, math.inf) <= NEAR_RTT
        return _NEAR if near else f"far:{peer}"

    def rtt(a: str, b: str) -> float:
        if a == b:
            return SAME_REGION_RTT
        if _NEAR in (a, b):
            other = b if a == _NEAR else a
            return measured.get(other[len("far:"):], CROSS_REGION_RTT)
        return CROSS_REGION_RTT

    spans = [replace(s, region=label(s.peer_id)) for s in view.servers]
    return SwarmView(view.num_blocks, spans), _NEAR, replace(model, region_rtt=rtt)


def _rps(s: ServerSpan) -> float:
    rps = clean_throughput(s.inference_rps)
    # Unknown per-block rate: a server that pushes `throughput` tokens/s through all its blocks.
    return rps if rps > 0 else max(clean_throughput(s.throughput) * s.length, 1e-3)


def _clients(spans: list[ServerSpan], model: LatencyModel) -> list[tuple[str | None, float]]:
    if model.client_weights:
        weights = [(r, float(w)) for r, w in model.client_weights.items() if w and w > 0]
    else:  # where servers are, users are: weight regions by their number of servers
        counts: dict = {}
        for s in spans:
            counts[s.region] = counts.get(s.region, 0) + 1
        weights = sorted(counts.items(), key=lambda kv: str(kv[0]))
    total = sum(w for _, w in weights) or 1.0
    return [(r, w / total) for r, w in weights] or [(None, 1.0)]


def expected_time_per_token(num_blocks: int, spans: list[ServerSpan], model: LatencyModel,
                            clients: list[tuple[str | None, float]] | None = None) -> float:
    """Mean over representative clients of their best route's seconds per token through all blocks."""
    clients = clients if clients is not None else _clients(spans, model)
    rates = [_rps(s) for s in spans]
    gap_rate = min(rates) / 2 if rates else 1.0  # unserved blocks: slower than anyone here
    covered = [False] * num_blocks
    for s in spans:
        for b in range(s.start, s.end):
            covered[b] = True
    gaps, b = [], 0
    while b < num_blocks:
        if not covered[b]:
            e = b
            while e < num_blocks and not covered[e]:
                e += 1
            gaps.append((b, e))
            b = e
        else:
            b += 1
    total = 0.0
    for region, weight in clients:
        cands = [RouteCandidate(s.peer_id, s.start, s.end, rate, model.rtt(region, s.region), s.next_pings)
                 for s, rate in zip(spans, rates)]
        cands += [RouteCandidate(f"{_GAP_PEER}{a}", a, e, gap_rate, 2 * CROSS_REGION_RTT) for a, e in gaps]
        _, cost = find_inference_route_with_cost(cands, 0, num_blocks, hop_overhead=model.hop_overhead,
                                                 relay=model.relay)
        total += weight * cost
    return total


@dataclass
class _Score:
    uncovered: int
    min_throughput: float
    latency: float


def _score(num_blocks: int, spans: list[ServerSpan], model: LatencyModel, clients) -> _Score:
    thr = block_throughputs(num_blocks, spans)
    return _Score(thr.count(0.0), min(thr), expected_time_per_token(num_blocks, spans, model, clients))


def _candidate_starts(num_blocks: int, n: int, others: list[ServerSpan], thr: list[float]) -> list[int]:
    starts = {0, num_blocks - n, best_start(thr, n)}
    for s in others:
        starts.update((s.end, s.start - n, s.start, s.end - n))
    for b in range(num_blocks):  # the edges of every gap
        if thr[b] == 0 and (b == 0 or thr[b - 1] > 0):
            starts.add(b)
        if thr[b] == 0 and (b == num_blocks - 1 or thr[b + 1] > 0):
            starts.add(b + 1 - n)
    return sorted(s for s in starts if 0 <= s <= num_blocks - n)


def _me(peer_id, start, n, throughput, inference_rps, region, pings) -> ServerSpan:
    return ServerSpan(peer_id or "\x00me", start, start + n, clean_throughput(throughput),
                      clean_throughput(inference_rps), 2, dict(pings or {}), region)


def latency_choose_blocks(view: SwarmView, num_blocks_to_host: int, *, my_peer_id: str | None = None,
                          throughput: float = 1.0, inference_rps: float = 0.0, region: str | None = None,
                          pings: Mapping[str, float] | None = None, model: LatencyModel | None = None,
                          **_ignored) -> tuple[int, int]:
    """The window for a joining (or moving) server; see the module docstring for the rule."""
    n = check_request(view, num_blocks_to_host)
    model = model or LatencyModel()
    view, region, model = _regions_from_pings(view, my_peer_id, region, pings, model)
    others = view.live(exclude=my_peer_id)
    thr = block_throughputs(view.num_blocks, others)
    mine = clean_throughput(throughput)
    clients = _clients(others + [_me(my_peer_id, 0, n, throughput, inference_rps, region, pings)], model)

    options = []
    for start in _candidate_starts(view.num_blocks, n, others, thr):
        after = thr[:start] + [t + mine for t in thr[start:start + n]] + thr[start + n:]
        options.append((after.count(0.0), min(after), start))
    fewest_gaps = min(o[0] for o in options)
    options = [o for o in options if o[0] == fewest_gaps]
    floor = (1 - model.throughput_slack) * max(o[1] for o in options)
    if model.target_throughput is not None:
        floor = min(floor, model.target_throughput)
    options = [o for o in options if o[1] >= floor]

    best = None
    for _, _, start in options:
        me = _me(my_peer_id, start, n, throughput, inference_rps, region, pings)
        key = (expected_time_per_token(view.num_blocks, others + [me], model, clients),
               sorted(thr[start:start + n]), start)
        if best is None or key < best:
            best = key
    return best[2], best[2] + n


def _latency_move(view: SwarmView, me: ServerSpan, live: list[ServerSpan], now: _Score, model: LatencyModel,
                  clients) -> tuple[float, int] | None:
    """The window where this server gives the least time per token without costing throughput.

    Only windows after which every block is still served and the swarm's minimum block
    throughput is at least what it is now (less `throughput_slack`) qualify; a server that alone
    holds some blocks does not move at all (they would go unserved while it reloads).
    """
    others = [s for s in live if s.peer_id != me.peer_id]
    thr = block_throughputs(view.num_blocks, others)
    serving = block_throughputs(view.num_blocks, [s for s in others if s.state == ONLINE])
    if now.uncovered == 0 and min(serving) <= 0:
        return None  # blocks only it serves now (others are still loading them) would go unserved
    mine, n = clean_throughput(me.throughput), me.length
    floor = (1 - model.throughput_slack) * now.min_throughput
    best = None
    for start in _candidate_starts(view.num_blocks, n, others, thr):
        if start == me.start:
            continue
        after = thr[:start] + [t + mine for t in thr[start:start + n]] + thr[start + n:]
        if after.count(0.0) > now.uncovered or min(after) < floor:
            continue
        moved = replace(me, start=start, end=start + n)
        key = (expected_time_per_token(view.num_blocks, others + [moved], model, clients), start)
        if best is None or key < best:
            best = key
    return best


def latency_should_move(view: SwarmView, my_peer_id: str, *, balance_quality: float = 0.75,
                        model: LatencyModel | None = None, pings: Mapping[str, float] | None = None,
                        **_ignored) -> tuple[int, int] | None:
    """Where this server should move to, or None; only for a gain no move back could also show.

    `pings`: this server's measured RTTs to others (peer_id -> s), used when no regions are known.
    """
    model = model or LatencyModel()
    me = view.find(my_peer_id)
    if me is not None:
        view, _, model = _regions_from_pings(view, my_peer_id, me.region, pings, model)
        me = view.find(my_peer_id)
    live = view.live()
    if me is None or me not in live or has_senior_twin(view, me):
        return None
    clients = _clients(live, model)
    now = _score(view.num_blocks, live, model, clients)
    start, end = latency_choose_blocks(view, me.length, my_peer_id=my_peer_id, throughput=me.throughput,
                                       inference_rps=me.inference_rps, region=me.region,
                                       pings=me.next_pings, model=model)
    if start != me.start:  # where a fresh join would go: for coverage or a starved bottleneck
        others = [s for s in live if s.peer_id != my_peer_id]
        moved = replace(me, start=start, end=end)
        then = _score(view.num_blocks, others + [moved], model, clients)
        if then.uncovered != now.uncovered:
            return (start, end) if then.uncovered < now.uncovered else None
        if balance_quality > 1.0:  # forced, as in Petals
            return start, end
        if then.min_throughput > 0 and now.min_throughput < balance_quality * then.min_throughput:
            return start, end  # the bottleneck is badly under-served where it is now
    best = _latency_move(view, me, live, now, model, clients)
    if best is not None and best[0] <= (1 - model.min_gain) * now.latency:
        return best[1], best[1] + me.length
    return None
