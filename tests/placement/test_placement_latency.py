"""Our latency placement on synthetic swarms: coverage first, throughput kept, routes made short."""

import random

import pytest

import zswarm.placement as placement
from zswarm.placement import LatencyModel, ServerSpan, SwarmView, block_throughputs, choose_blocks, should_move
from zswarm.placement.petals import petals_choose_blocks


def _span(peer, start, end, thr=1.0, rps=100.0, region=None):
    return ServerSpan(peer, start, end, thr, rps, 2, {}, region)


def test_a_gap_is_filled_before_anything_else():
    view = SwarmView(20, [_span("a", 0, 10, region="us"), _span("b", 0, 10, region="eu")])
    assert choose_blocks(view, 10, "latency", region="eu", throughput=1.0, inference_rps=100.0) == (10, 20)


def test_a_server_completes_the_chain_of_its_own_region_where_petals_does_not():
    # every block has throughput 2; the EU holds only the first half of the model
    view = SwarmView(80, [_span("us1", 0, 40, region="us"), _span("us2", 40, 80, region="us"),
                          _span("us3", 40, 80, region="us"), _span("eu1", 0, 40, region="eu")])
    assert choose_blocks(view, 40, "latency", region="eu", inference_rps=100.0) == (40, 80)
    assert choose_blocks(view, 40, "petals", region="eu") == (0, 40)  # a tie, broken by the lowest start


def test_without_region_labels_the_servers_own_pings_find_its_region():
    # the same swarm as above, as a real server sees it: no regions, only the RTTs it measured
    view = SwarmView(80, [_span("us1", 0, 40), _span("us2", 40, 80), _span("us3", 40, 80), _span("eu1", 0, 40)])
    pings = {"us1": 0.11, "us2": 0.12, "us3": 0.1, "eu1": 0.02}
    assert choose_blocks(view, 40, "latency", inference_rps=100.0, pings=pings) == (40, 80)
    assert choose_blocks(view, 40, "latency", inference_rps=100.0) == (0, 40)  # nothing measured: a tie


def test_a_new_server_aligns_with_existing_span_boundaries():
    view = SwarmView(90, [_span("a", 0, 30), _span("b", 30, 60), _span("c", 60, 90)])
    start, end = choose_blocks(view, 30, "latency", throughput=1.0, inference_rps=300.0)
    assert start % 30 == 0  # an unaligned window would cost its routes an extra hop


def test_a_fast_server_that_fits_the_whole_model_takes_it_all():
    view = SwarmView(40, [_span(f"s{i}", 10 * i, 10 * i + 10) for i in range(4)])
    assert choose_blocks(view, 40, "latency", inference_rps=1000.0) == (0, 40)


def _random_swarm(rng, num_blocks=40, num_servers=8):
    servers = []
    for i in range(num_servers):
        n = rng.randint(5, 25)
        start = rng.randrange(num_blocks - n + 1)
        servers.append(_span(f"s{i}", start, start + n, rng.choice([1.0, 2.0, 4.0]),
                             rng.choice([50.0, 200.0]), rng.choice(["us", "eu"])))
    return SwarmView(num_blocks, servers)


def test_throughput_stays_within_the_slack_of_petals_choice():
    rng = random.Random(2)
    for _ in range(30):
        view = _random_swarm(rng)
        n = rng.randint(5, 30)
        mine = dict(throughput=rng.choice([1.0, 3.0]), inference_rps=100.0, region=rng.choice(["us", "eu"]))

        def min_after(window):
            added = _span("me", window[0], window[1], mine["throughput"])
            return min(block_throughputs(view.num_blocks, view.servers + [added]))

        ours = min_after(choose_blocks(view, n, "latency", **mine))
        theirs = min_after(choose_blocks(view, n, "petals", **mine))
        assert ours >= 0.9 * theirs - 1e-9


def test_should_move_fills_a_gap_and_stays_in_a_balanced_swarm():
    skewed = SwarmView(16, [_span("a", 0, 8), _span("b", 0, 8), _span("c", 4, 8)])
    assert should_move(skewed, "a", "latency") == (8, 16)
    balanced = SwarmView(16, [_span("a", 0, 8), _span("b", 8, 16), _span("c", 0, 8), _span("d", 8, 16)])
    assert all(should_move(balanced, p, "latency") is None for p in "abcd")


def test_a_server_moves_to_complete_its_regions_chain_when_that_costs_no_throughput():
    # per block: 3 on 0..10 (a, b in the US, c in the EU), 2 on 10..20 (d, e in the EU): every US
    # route crosses the ocean for 10..20. Moving a US twin there keeps the weakest block at 2.
    view = SwarmView(20, [_span("a", 0, 10, region="us"), _span("b", 0, 10, region="us"),
                          _span("c", 0, 10, region="eu"), _span("d", 10, 20, region="eu"),
                          _span("e", 10, 20, region="eu")])
    assert should_move(view, "a", "latency") == (10, 20)
    assert should_move(view, "b", "latency") is None  # its twin "a" moves first
    assert should_move(view, "a", "petals") is None  # Petals' rule sees a balanced enough swarm


def test_the_latency_move_works_from_measured_pings_alone():
    view = SwarmView(20, [_span("a", 0, 10), _span("b", 0, 10), _span("c", 0, 10), _span("d", 10, 20),
                          _span("e", 10, 20)])
    pings = {"b": 0.03, "c": 0.1, "d": 0.1, "e": 0.11}  # "a" is near "b" only: both in the US
    assert should_move(view, "a", "latency", pings=pings) == (10, 20)
    assert should_move(view, "a", "latency") is None  # without measurements nothing says where "a" is


def test_a_server_does_not_move_for_latency_if_the_weakest_block_would_get_weaker():
    # without c, 0..10 has throughput 2 (a and b) like 10..20: a move would leave 0..10 at 1
    view = SwarmView(20, [_span("a", 0, 10, region="us"), _span("b", 0, 10, region="us"),
                          _span("d", 10, 20, region="eu"), _span("e", 10, 20, region="eu")])
    assert should_move(view, "a", "latency") is None


def test_rebalancing_settles_without_returning_to_an_earlier_placement():
    rng = random.Random(4)
    moves = 0
    for _ in range(12):
        view = _random_swarm(rng, num_blocks=30, num_servers=6)
        seen = {tuple((s.start, s.end) for s in view.servers)}
        for _round in range(30):
            moved = False
            for s in rng.sample(view.servers, len(view.servers)):
                target = should_move(view, s.peer_id, "latency")
                if target is not None:
                    s.start, s.end = target
                    state = tuple((x.start, x.end) for x in view.servers)
                    assert state not in seen, "flip-flop: the swarm came back to an earlier placement"
                    seen.add(state)
                    moved, moves = True, moves + 1
            if not moved:
                break
        else:
            pytest.fail("rebalancing did not settle in 30 rounds")
    assert moves > 0


def test_bad_requests_are_clear_errors():
    view = SwarmView(10, [])
    with pytest.raises(ValueError, match="unknown placement strategy"):
        choose_blocks(view, 3, "fastest")
    with pytest.raises(ValueError, match="at least one block"):
        choose_blocks(view, 0)
    assert choose_blocks(view, 25) == (0, 10)  # more than the model has: all of it
    with pytest.raises(ValueError, match="positive number of blocks"):
        choose_blocks(SwarmView(0, []), 3)


def test_public_api_is_pinned():
    assert set(placement.__all__) == {"SwarmView", "ServerSpan", "OFFLINE", "JOINING", "ONLINE", "STRATEGIES",
                                      "LatencyModel", "choose_blocks", "should_move", "block_throughputs",
                                      "expected_time_per_token"}
