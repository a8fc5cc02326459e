"""The swarm as block placement sees it: plain data, no I/O.

A server builds a `SwarmView` from the DHT's server records (`SwarmView.from_records`, one
`ServerSpan` per server), the simulator builds one from its own state; both hand it to
`choose_blocks` / `should_move`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from zswarm.swarm_info import ServerState, finite_nonneg, live_records

__all__ = ["ServerSpan", "SwarmView", "OFFLINE", "JOINING", "ONLINE"]

OFFLINE, JOINING, ONLINE = ServerState.OFFLINE, ServerState.JOINING, ServerState.ONLINE


@dataclass
class ServerSpan:
    """One server: blocks [start, end) and what it announced."""

    peer_id: str
    start: int
    end: int
    throughput: float  # tokens/s of the whole server (Petals' sense): what it adds to each block it holds
    inference_rps: float = 0.0  # per-block single-token steps/s; 0 = unknown
    state: int = ONLINE
    next_pings: dict[str, float] = field(default_factory=dict)  # peer_id -> RTT s, measured by this server
    region: str | None = None  # where it is, when known (the simulator knows; a real server may not)

    @property
    def length(self) -> int:
        return self.end - self.start

    @classmethod
    def from_record(cls, record, num_blocks: int) -> "ServerSpan":
        """A server's record (zswarm.swarm_info.ServerRecord) as placement reads it, its span cut to the model."""
        return cls(peer_id=record.peer_id, start=record.start, end=min(record.end, num_blocks),
                   throughput=record.throughput, inference_rps=record.inference_rps, state=record.state,
                   next_pings=dict(record.next_pings))


@dataclass
class SwarmView:
    """All servers of one model with `num_blocks` blocks."""

    num_blocks: int
    servers: list[ServerSpan] = field(default_factory=list)

    @classmethod
    def from_records(cls, num_blocks: int, blocks: Sequence[Mapping[str, object]], *,
                     exclude: str | None = None) -> "SwarmView":
        """Per-block server records (fetch_block_servers' shape) -> one ServerSpan per live server."""
        spans = [ServerSpan.from_record(r, num_blocks) for r in live_records(blocks, exclude).values()
                 if r.start < num_blocks]
        return cls(num_blocks=num_blocks, servers=spans)

    def live(self, exclude: str | None = None) -> list[ServerSpan]:
        """Servers that hold or are loading their blocks (JOINING or ONLINE), valid spans only."""
        return [s for s in self.servers if s.state >= JOINING and s.peer_id != exclude
                and 0 <= s.start < s.end <= self.num_blocks]

    def find(self, peer_id: str) -> ServerSpan | None:
        for s in self.servers:
            if s.peer_id == peer_id:
                return s
        return None


def clean_throughput(value) -> float:
    """An announced throughput as a usable number: junk (NaN, inf, negative, not a number) counts as 0."""
    return finite_nonneg(value, 0.0)


def block_throughputs(num_blocks: int, spans: Iterable[ServerSpan]) -> list[float]:
    """Per block, the summed throughput of the given servers (Petals' measure of a block's capacity)."""
    thr = [0.0] * num_blocks
    # Sorted so the float sums are the same whatever order the DHT returned records in.
    for s in sorted(spans, key=lambda s: (s.peer_id, s.start)):
        t = clean_throughput(s.throughput)
        for b in range(max(s.start, 0), min(s.end, num_blocks)):
            thr[b] += t
    return thr


def uncovered_blocks(num_blocks: int, spans: Sequence[ServerSpan]) -> int:
    covered = [False] * num_blocks
    for s in spans:
        for b in range(max(s.start, 0), min(s.end, num_blocks)):
            covered[b] = True
    return covered.count(False)


def has_senior_twin(view: SwarmView, me: ServerSpan) -> bool:
    """Whether a server with a smaller peer_id would make exactly this server's decision.

    Twins (same blocks, same throughput and rate within 1%, same region) see the same swarm and
    so decide the same thing; if all of them act on one view at once they all move, leave a new
    gap behind, and all move back (the stampede behind Petals issue #389). Only the senior twin
    (smallest peer_id) moves in a given check; the others see its move at their next check.
    """
    def close(a, b):
        a, b = clean_throughput(a), clean_throughput(b)
        return abs(a - b) <= 0.01 * max(a, b)

    return any(o.peer_id < me.peer_id and o.start == me.start and o.end == me.end and o.region == me.region
               and close(o.throughput, me.throughput) and close(o.inference_rps, me.inference_rps)
               for o in view.live(exclude=me.peer_id))


def check_request(view: SwarmView, num_blocks_to_host: int) -> int:
    """The number of blocks to host, validated against the model (a clear error, not a crash later)."""
    if not isinstance(view.num_blocks, int) or view.num_blocks <= 0:
        raise ValueError(f"the model must have a positive number of blocks, got {view.num_blocks!r}")
    if not isinstance(num_blocks_to_host, int) or num_blocks_to_host <= 0:
        raise ValueError(f"a server must host at least one block, got {num_blocks_to_host!r}")
    return min(num_blocks_to_host, view.num_blocks)
