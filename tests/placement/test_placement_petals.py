"""Petals' rule as reproduced in zswarm.placement.petals, plus our hysteresis, on synthetic swarms."""

import random

import pytest

from zswarm.placement import JOINING, OFFLINE, ServerSpan, SwarmView, block_throughputs, choose_blocks, should_move
from zswarm.placement.petals import best_start


def _span(peer, start, end, thr=1.0, state=2):
    return ServerSpan(peer, start, end, thr, 0.0, state)


def test_best_start_takes_the_lexicographically_smallest_sorted_window():
    # windows of 2: (3,1) (1,2) (2,1) (1,1) (1,5) -> sorted (1,3) (1,2) (1,2) (1,1) (1,5): the (1,1) window wins
    assert best_start([3, 1, 2, 1, 1, 5], 2) == 3
    assert best_start([1, 1, 1, 1], 2) == 0  # ties go to the lowest start


def test_petals_choose_blocks_picks_the_weakest_window():
    view = SwarmView(12, [_span("a", 0, 6, 2.0), _span("b", 0, 12, 1.0), _span("c", 9, 12, 0.5)])
    # per block: 3 3 3 3 3 3 1 1 1 1.5 1.5 1.5 -> the 3 weakest consecutive blocks are 6..8
    assert choose_blocks(view, 3, "petals") == (6, 9)


def test_petals_fills_a_gap_first_and_counts_joining_but_not_offline_servers():
    view = SwarmView(10, [_span("a", 0, 4, 5.0), _span("b", 6, 10, 5.0, state=JOINING),
                          _span("gone", 4, 6, 5.0, state=OFFLINE)])
    assert choose_blocks(view, 2, "petals") == (4, 6)


def test_servers_joining_one_by_one_cover_the_model_without_gaps():
    view = SwarmView(30, [])
    for i, n in enumerate([10, 12, 8, 10]):
        start, end = choose_blocks(view, n, "petals", my_peer_id=f"p{i}")
        view.servers.append(_span(f"p{i}", start, end))
    assert min(block_throughputs(30, view.servers)) > 0


def test_should_move_fills_a_gap_in_a_skewed_swarm():
    # two servers on the same blocks, nobody on 8..16
    view = SwarmView(16, [_span("a", 0, 8), _span("b", 0, 8), _span("c", 4, 8)])
    assert should_move(view, "a", "petals") == (8, 16)


def test_should_move_stays_put_in_a_balanced_swarm():
    view = SwarmView(16, [_span("a", 0, 8), _span("b", 8, 16), _span("c", 0, 8), _span("d", 8, 16)])
    assert all(should_move(view, p, "petals") is None for p in "abcd")
    assert should_move(view, "unknown", "petals") is None


def test_a_server_that_alone_holds_some_blocks_of_a_covered_swarm_stays_put():
    # per block 0.5 0.5 1 1 3 3: "a" (2..6) would gain the swarm most on 0..4, but it alone holds
    # blocks 2..4, which would go unserved while it reloads (Petals 2.3 refuses; 2.0 moved)
    view = SwarmView(6, [_span("a", 2, 6, 1.0), _span("b", 0, 2, 0.5), _span("c", 4, 6, 2.0)])
    assert should_move(view, "a", "petals", hysteresis=False) is None
    view.servers.append(_span("d", 2, 4, 0.1))  # now someone else holds 2..4 too: the move goes ahead
    assert should_move(view, "a", "petals", hysteresis=False) == (0, 4)


def test_balance_quality_above_one_forces_a_move_and_quality_gates_small_gains():
    view = SwarmView(8, [_span("a", 0, 4, 1.0), _span("b", 0, 4, 1.0), _span("c", 4, 8, 0.9)])
    # moving "a" onto 4..8 raises the minimum from 0.9 to 1.0 only: under a third, no move
    assert should_move(view, "a", "petals") is None
    assert should_move(view, "a", "petals", balance_quality=1.1) == (4, 8)


def _random_skewed_swarm(rng, num_blocks=24, num_servers=7):
    servers = []
    for i in range(num_servers):
        n = rng.randint(3, 12)
        start = rng.choice([0, 0, rng.randrange(num_blocks - n + 1)])  # piled up at the front
        servers.append(_span(f"s{i}", start, start + n, rng.choice([1.0, 2.0, 3.0])))
    return SwarmView(num_blocks, servers)


def _settle(view, strategy, rng, max_moves=100, **kw):
    """Servers check one at a time in random order and move when told, until a round has no move.

    Fails if the swarm ever comes back to a placement it had before (a flip-flop).
    """
    placement = lambda: tuple((s.start, s.end) for s in view.servers)
    seen = {placement()}
    moves = []
    while len(moves) < max_moves:
        order = [s.peer_id for s in view.servers]
        rng.shuffle(order)
        moved = False
        for peer in order:
            target = should_move(view, peer, strategy, rng=random.Random(len(moves)), **kw)
            if target is not None:
                before = sorted(block_throughputs(view.num_blocks, view.servers))
                me = view.find(peer)
                me.start, me.end = target
                assert placement() not in seen, f"{peer} moved the swarm back to an earlier placement"
                seen.add(placement())
                if strategy == "petals":  # the potential behind the hysteresis: every move raises it
                    assert sorted(block_throughputs(view.num_blocks, view.servers)) > before
                moves.append((peer, target))
                moved = True
        if not moved:
            return moves
    pytest.fail(f"no steady state after {max_moves} moves: {moves[-6:]}")


def test_rebalancing_settles_without_flip_flop_on_random_skewed_swarms():
    rng = random.Random(11)
    total = 0
    for _ in range(25):
        view = _random_skewed_swarm(rng)
        before = min(block_throughputs(view.num_blocks, view.servers))
        total += len(_settle(view, "petals", rng))
        assert min(block_throughputs(view.num_blocks, view.servers)) >= before
    assert total > 0  # the swarms were skewed enough that servers did move


def _all_decide_at_once(view, rounds, **kw):
    """Every server decides on the same view, then all moves happen together; the placements seen."""
    history = []
    for _ in range(rounds):
        history.append(tuple((s.start, s.end) for s in view.servers))
        targets = {s.peer_id: should_move(view, s.peer_id, "petals", **kw) for s in view.servers}
        for s in view.servers:
            if targets[s.peer_id] is not None:
                s.start, s.end = targets[s.peer_id]
    return history


def test_twins_deciding_at_once_stampede_back_and_forth_under_plain_petals_but_not_ours():
    twins = lambda: SwarmView(16, [_span("a", 0, 8), _span("b", 0, 8)])
    plain = _all_decide_at_once(twins(), 4, hysteresis=False, balance_quality=1.0 + 1e-9)
    assert plain == [((0, 8), (0, 8)), ((8, 16), (8, 16))] * 2  # both jump to the gap, then both jump back
    ours = _all_decide_at_once(twins(), 4)
    assert ours[1:] == [((8, 16), (0, 8))] * 3  # the senior twin fills the gap; the other stays
