"""Petals' block selection, reproduced: put a server where the swarm is weakest, move when unbalanced.

Choosing (Petals' `choose_best_blocks`)
    Per block, sum the throughput of the servers that hold it (JOINING or ONLINE). A server that
    hosts `n` blocks takes the window of `n` consecutive blocks whose throughputs, sorted
    ascending, are lexicographically smallest: first the window with the weakest block, then,
    among those, the one whose second-weakest block is weakest, and so on; ties go to the
    lowest start. A gap (throughput 0) is therefore always filled first.

Rebalancing (Petals' `should_choose_other_blocks`)
    Take this server out (its old blocks minus a hair more than its throughput, so it prefers
    to stay put on a tie); if that uncovers a block of a fully covered swarm, stay (the swarm
    would fall apart while it reloads); else find its best window; if that is where it already is, stay. Otherwise
    put it there and let every server, in random order, greedily move to its own best window
    until no one moves: the swarm's predicted minimum block throughput. Move when
    ``current_min / predicted_min < balance_quality`` (0.75: the swarm must gain at least a
    third) and the prediction does not lower the minimum.

Hysteresis (ours; Petals issue #389: servers that keep reloading)
    The prediction above assumes that every other server moves too; when they do not, the
    mover can find the swarm no better and move again, back and forth. With
    ``hysteresis=True`` a move must also pay off on its own, others staying where they are: the
    swarm's sorted per-block throughputs must become lexicographically larger. That ordering is a
    potential every executed move strictly raises, so a sequence of moves can never return to
    an earlier placement: no flip-flop, whatever the order in which servers check. Servers that
    check at the same moment on the same view can still stampede; the common case, identical
    servers on the same blocks ("twins"), is broken by letting only the smallest peer_id move.
"""

from __future__ import annotations

import random

from zswarm.placement.swarm import SwarmView, block_throughputs, check_request, clean_throughput, has_senior_twin

__all__ = ["best_start", "petals_choose_blocks", "petals_should_move", "potential_improves"]

_EPS = 1e-3  # Petals' epsilon: relative weight that makes a server prefer its own blocks on a tie
_MAX_PASSES = 64  # the greedy "everyone moves" loop converges in a few passes; this only bounds it


def best_start(throughputs: list[float], length: int) -> int:
    """Start of the window of `length` blocks whose sorted throughputs are lexicographically smallest."""
    return min(range(len(throughputs) - length + 1),
               key=lambda i: (sorted(throughputs[i:i + length]), i))


def petals_choose_blocks(view: SwarmView, num_blocks_to_host: int, *, my_peer_id: str | None = None,
                         **_ignored) -> tuple[int, int]:
    """Petals' choice for a joining server (itself, if listed, is left out as if OFFLINE)."""
    n = check_request(view, num_blocks_to_host)
    thr = block_throughputs(view.num_blocks, view.live(exclude=my_peer_id))
    start = best_start(thr, n)
    return start, start + n


def _shift(thr: list[float], start: int, end: int, amount: float) -> None:
    for b in range(start, end):
        thr[b] += amount


def _rounded_sorted(thr: list[float]) -> list[float]:
    # Compare throughputs a little coarsely, so float noise cannot make a move look like a gain.
    scale = max(max(thr), 1e-12)
    return sorted(round(t / scale, 9) for t in thr)


def potential_improves(view: SwarmView, peer_id: str, new_start: int) -> bool:
    """Whether moving only `peer_id` to `new_start` makes the sorted block throughputs larger."""
    me = view.find(peer_id)
    live = view.live()
    before = block_throughputs(view.num_blocks, live)
    after = list(before)
    t = clean_throughput(me.throughput)
    _shift(after, me.start, me.end, -t)
    _shift(after, new_start, new_start + me.length, t)
    return _rounded_sorted(after) > _rounded_sorted(before)


def petals_should_move(view: SwarmView, my_peer_id: str, *, balance_quality: float = 0.75,
                       rng: random.Random | None = None, hysteresis: bool = True,
                       **_ignored) -> tuple[int, int] | None:
    """The new blocks this server should move to, or None to stay (see the module docstring)."""
    me = view.find(my_peer_id)
    live = view.live()
    if me is None or me not in live:
        return None  # not serving anything the swarm can see: nothing to rebalance
    n = check_request(view, me.length)
    rng = rng if rng is not None else random.Random(0)
    thr_without_me = block_throughputs(view.num_blocks, view.live(exclude=my_peer_id))
    target = best_start(thr_without_me, n)  # where a fresh choice would put this server
    if balance_quality > 1.0:  # Petals' switch to force a move on every check (for debugging)
        return (target, target + n) if target != me.start else None

    spans = {s.peer_id: [s.start, s.length, clean_throughput(s.throughput)] for s in live}
    thr = block_throughputs(view.num_blocks, live)
    initial_min = min(thr)
    start, length, t = spans[my_peer_id]
    _shift(thr, start, start + length, -t * (1 + _EPS))
    if initial_min > _EPS and min(thr) <= 0:
        return None  # leaving would uncover blocks only this server holds (Petals 2.3: "disjoint swarm")
    new_start = best_start(thr, length)
    if new_start == start:
        return None  # already at its best place
    _shift(thr, start, start + length, t * _EPS)
    spans[my_peer_id][0] = new_start
    _shift(thr, new_start, new_start + length, t)

    moved, passes = True, 0
    while moved and passes < _MAX_PASSES:  # every other server greedily follows
        moved, passes = False, passes + 1
        peers = sorted(spans)
        rng.shuffle(peers)
        for peer in peers:
            s_start, s_len, s_t = spans[peer]
            _shift(thr, s_start, s_start + s_len, -s_t * (1 + _EPS))
            s_new = best_start(thr, s_len)
            _shift(thr, s_start, s_start + s_len, s_t * _EPS)
            if s_new != s_start:
                spans[peer][0] = s_new
                moved = True
            _shift(thr, spans[peer][0], spans[peer][0] + s_len, s_t)

    new_min = min(thr)
    if new_min < initial_min or new_min < _EPS:
        return None
    if initial_min / new_min >= balance_quality - _EPS:
        return None  # balanced enough
    if hysteresis and not potential_improves(view, my_peer_id, target):
        return None  # pays off only if others follow: the start of a flip-flop
    if hysteresis and has_senior_twin(view, me):
        return None  # an identical server moves first; we see its move at our next check
    return target, target + n
