"""zswarm.routing on synthetic swarms: the true minimum, what it avoids, and the errors it raises."""

import math
import random

import pytest

import zswarm.routing as routing
from zswarm.errors import NoRouteError, ZswarmError
from zswarm.routing import (RouteCandidate, RouteSpan, find_forward_route, find_inference_route,
                            find_inference_route_with_cost, inference_route_cost)


def _all_routes(candidates, start, end):
    """Every route: each span any non-empty sub-range of one candidate, spans back to back."""
    if start == end:
        yield []
        return
    for c in candidates:
        if c.start <= start < c.end:
            for stop in range(start + 1, min(c.end, end) + 1):
                for rest in _all_routes(candidates, stop, end):
                    yield [RouteSpan(c.peer_id, start, stop)] + rest


def _random_swarm(rng, num_blocks, num_servers):
    cands = []
    for i in range(num_servers):
        a = rng.randrange(num_blocks)
        b = rng.randrange(a + 1, num_blocks + 1)
        cands.append(RouteCandidate(f"s{i}", a, b, inference_rps=rng.choice([5.0, 20.0, 100.0]),
                                    rtt_from_client=rng.choice([0.001, 0.03, 0.2, None]),
                                    cache_room=rng.random() > 0.2))
    for c in cands:  # announced pings to some of the others
        c.next_pings = {o.peer_id: rng.choice([0.001, 0.05, 0.3]) for o in cands if o is not c and rng.random() < 0.6}
    # make sure every block is covered
    cands.append(RouteCandidate("full", 0, num_blocks, inference_rps=2.0, rtt_from_client=0.5))
    return cands


@pytest.mark.parametrize("relay", ["client", "server"])
def test_inference_route_is_the_true_minimum_over_every_route(relay):
    rng = random.Random(7)
    for _ in range(60):
        num_blocks = rng.randint(1, 6)
        cands = _random_swarm(rng, num_blocks, rng.randint(1, 4))
        start = rng.randrange(num_blocks)
        end = rng.randint(start + 1, num_blocks)
        kw = dict(hop_overhead=rng.choice([0.0, 0.004, 0.05]), no_cache_penalty=1.0, relay=relay)
        brute = min(inference_route_cost(r, cands, **kw) for r in _all_routes(cands, start, end))
        route, cost = find_inference_route_with_cost(cands, start, end, **kw)
        assert cost == pytest.approx(brute, abs=1e-12)
        assert inference_route_cost(route, cands, **kw) == pytest.approx(brute, abs=1e-12)
        assert route[0].start == start and route[-1].end == end
        assert all(a.end == b.start for a, b in zip(route, route[1:]))
        assert all(s.length > 0 for s in route)


def test_high_rtt_server_is_avoided():
    near = RouteCandidate("near", 0, 10, inference_rps=100.0, rtt_from_client=0.01)
    far = RouteCandidate("far", 0, 10, inference_rps=200.0, rtt_from_client=0.3)  # faster, but far away
    assert find_inference_route([far, near], 0, 10) == [RouteSpan("near", 0, 10)]


def test_server_without_cache_room_is_avoided_but_used_when_alone():
    full = RouteCandidate("full", 0, 4, inference_rps=1000.0, rtt_from_client=0.001, cache_room=False)
    slow = RouteCandidate("slow", 0, 4, inference_rps=10.0, rtt_from_client=0.05)
    assert find_inference_route([full, slow], 0, 4) == [RouteSpan("slow", 0, 4)]
    assert find_inference_route([full], 0, 4) == [RouteSpan("full", 0, 4)]


def test_one_server_for_everything_beats_two_hops_when_compute_is_equal():
    a = RouteCandidate("a", 0, 5, 100.0, 0.02)
    b = RouteCandidate("b", 5, 10, 100.0, 0.02)
    whole = RouteCandidate("whole", 0, 10, 100.0, 0.02)
    assert find_inference_route([a, b, whole], 0, 10) == [RouteSpan("whole", 0, 10)]
    # with no per-hop cost and client relay, equal costs: ties go to fewer spans
    assert find_inference_route([a, b, whole], 0, 10, hop_overhead=0.0) == [RouteSpan("whole", 0, 10)]


def test_server_relay_uses_announced_pings_between_servers():
    a1 = RouteCandidate("a1", 0, 5, 100.0, 0.05, next_pings={"b1": 0.3, "b2": 0.002})
    b1 = RouteCandidate("b1", 5, 10, 100.0, 0.05)
    b2 = RouteCandidate("b2", 5, 10, 100.0, 0.05)
    assert find_inference_route([a1, b1, b2], 0, 10, relay="server") == [RouteSpan("a1", 0, 5), RouteSpan("b2", 5, 10)]


def test_no_route_error_names_the_uncovered_blocks():
    cands = [RouteCandidate("a", 0, 47, 10.0, 0.01), RouteCandidate("b", 49, 80, 10.0, 0.01)]
    with pytest.raises(NoRouteError) as info:
        find_inference_route(cands, 0, 80, model_id="Llama-2-70b")
    assert str(info.value) == "blocks 47:49 of Llama-2-70b are served by no one"
    assert info.value.missing == [(47, 49)]
    assert isinstance(info.value, ZswarmError)
    with pytest.raises(NoRouteError, match="blocks 0:1 of M are served by no one"):
        find_forward_route(cands[1:] + [RouteCandidate("c", 1, 49, 1.0, 0.0)], 0, 80, model_id="M")


def test_sub_range_requests_are_served():
    cands = [RouteCandidate("a", 0, 8, 10.0, 0.01)]
    assert find_inference_route(cands, 3, 5) == [RouteSpan("a", 3, 5)]


def test_bad_ranges_and_junk_announcements_give_clear_results():
    with pytest.raises(ValueError):
        find_inference_route([], 5, 5)
    with pytest.raises(ValueError):
        find_inference_route([], -1, 3)
    junk = [RouteCandidate("nan", 0, 4, math.nan, -1.0, next_pings={"x": math.inf}),
            RouteCandidate("empty", 3, 3, 10.0, 0.01),
            RouteCandidate("ok", 0, 4, 10.0, 0.01)]
    assert find_inference_route(junk, 0, 4, relay="server") == [RouteSpan("ok", 0, 4)]
    assert find_inference_route(junk[:1], 0, 4)[0].peer_id == "nan"  # usable, just priced as very slow


def test_forward_route_spreads_over_replicas_by_throughput():
    fast = RouteCandidate("fast", 0, 10, 10.0, 0.01, throughput=300.0)
    slow = RouteCandidate("slow", 0, 10, 10.0, 0.01, throughput=100.0)
    rng = random.Random(3)
    picks = [find_forward_route([fast, slow], 0, 10, rng=rng)[0].peer_id for _ in range(2000)]
    share = picks.count("fast") / len(picks)
    assert 0.70 < share < 0.80  # 3:1 by throughput


def test_forward_route_prefers_long_spans_and_is_contiguous():
    cands = [RouteCandidate(f"short{i}", i, i + 1, 10.0, 0.01, throughput=100.0) for i in range(8)]
    cands.append(RouteCandidate("long", 0, 8, 10.0, 0.01, throughput=100.0))
    rng = random.Random(5)
    hops = []
    for _ in range(300):
        route = find_forward_route(cands, 0, 8, rng=rng)
        assert route[0].start == 0 and route[-1].end == 8
        assert all(a.end == b.start for a, b in zip(route, route[1:]))
        hops.append(len(route))
    assert sum(hops) / len(hops) < 2.5  # a short-span-only walk would take 8


def test_public_api_is_pinned():
    assert set(routing.__all__) == {"RouteCandidate", "RouteSpan", "NoRouteError", "find_inference_route",
                                    "find_inference_route_with_cost", "find_forward_route",
                                    "inference_route_cost", "uncovered_ranges", "candidates", "ROUTING_DEFAULTS"}
