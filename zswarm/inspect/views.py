"""What zswarm-inspect shows, as plain data, and the pure functions that derive it.

Fetching (fetch.py) produces DHT records and ping results; the functions here turn them into
views (health, coverage, routes) without any I/O, and `render.py` turns views into text. So every
judgement the tool makes -- "blocks 12:13 are served by no one", "this route costs 31 ms per token" --
is unit-testable on synthetic swarms.

A server counts toward a block's coverage when its record there says ONLINE and, if we pinged
it, it answered: a server that a client here cannot reach serves no one here, whatever its record
still says (a killed server's record lives on until it expires).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

from zswarm.errors import NoRouteError
from zswarm.routing import ROUTING_DEFAULTS, RouteCandidate, candidates, find_inference_route_with_cost
from zswarm.swarm_info import ServerRecord, ServerState, finite_nonneg

STATE_NAMES = {ServerState.OFFLINE: "offline", ServerState.JOINING: "joining", ServerState.ONLINE: "online"}
_STATE_RANK = {ServerState.ONLINE: 2, ServerState.JOINING: 1, ServerState.OFFLINE: 0}


@dataclass
class ServerRow:
    """One server as seen from here: its record, plus what our ping said."""

    peer_id: str
    address: str
    start: int
    end: int
    state: str  # online | joining | offline (the record's); see `reachable` for ours
    throughput: float
    inference_rps: float
    cache_tokens_left: int
    version: str
    dtype: str
    quant: str
    public_name: str
    adapters: tuple[str, ...] = ()
    started_at: float = 0.0  # unix time the server started; 0: its record does not say
    rtt: float | None = None  # seconds, from here; None when not pinged or no answer
    reachable: bool | None = None  # None: not pinged

    @property
    def serving(self) -> bool:
        """Counts toward coverage: announced ONLINE and not found unreachable."""
        return self.state == "online" and self.reachable is not False

    @classmethod
    def from_record(cls, record: ServerRecord, rtt: float | None, reachable: bool | None) -> "ServerRow":
        """The row of a server's record: its fields of the same name, its state by name, our ping."""
        shown = {f.name: getattr(record, f.name) for f in fields(cls) if f.name not in ("state", "rtt", "reachable")}
        return cls(**shown, state=STATE_NAMES.get(record.state, str(int(record.state))), rtt=rtt, reachable=reachable)


@dataclass
class BlockCoverage:
    block: int
    servers: int  # serving servers (ONLINE and reachable)
    throughput: float  # sum of their throughputs, tokens/s
    joining: int = 0  # servers announced JOINING here (loading weights)


@dataclass
class ModelHealth:
    model_id: str
    num_blocks: int
    gaps: list[tuple[int, int]]  # half-open block ranges served by no one
    blocks: list[BlockCoverage]
    servers: list[ServerRow]

    @property
    def healthy(self) -> bool:
        return not self.gaps

    @property
    def status(self) -> str:
        return "healthy" if self.healthy else "broken"


@dataclass
class SwarmReport:
    """Every model's health as seen from here at one moment (not placement's SwarmView, the input
    of the block-placement algorithms)."""

    initial_peers: list[str]
    taken_at: float  # unix time
    models: list[ModelHealth] = field(default_factory=list)


@dataclass
class RouteHop:
    peer_id: str
    address: str  # what to dial: ServerRecord.endpoint (names its CURVE key)
    start: int
    end: int
    rtt: float | None
    compute: float  # seconds per token on this server: blocks / inference_rps


@dataclass
class RouteView:
    model_id: str
    num_blocks: int
    hops: list[RouteHop]
    seconds_per_token: float | None  # None when there is no route
    gaps: list[tuple[int, int]]  # when there is no route: the blocks no usable server holds
    max_length: int


@dataclass
class RawEntry:
    peer_id: str | None  # None when the blob could not be decoded far enough to know its signer
    expiration_time: float | None
    signed_at: float | None
    status: str  # "valid" | "expired" | "bad signature" | "invalid: why"
    value: object  # decoded value: a dict for known record kinds, else {"hex": ...}
    kind: str  # "server record" | "model index" | "msgpack" | "bytes" | "-"
    holders: int = 1  # how many DHT nodes returned this exact entry


@dataclass
class RawView:
    key: str
    digest: str  # hex of the 20-byte kademlia id
    entries: list[RawEntry]
    checked: bool  # True: every blob was checked here; False: only the DHT's verified entries are shown


# ---- pure derivations ----------------------------------------------------------------------------

def gap_message(model_id: str, gaps: Sequence[tuple[int, int]]) -> str:
    """What a client would be told about these gaps: NoRouteError's own message."""
    return str(NoRouteError(gaps, model_id))


def unique_records(blocks: Sequence[dict[str, ServerRecord]]) -> dict[str, ServerRecord]:
    """One record per server. A server that moved has an OFFLINE record under its old blocks
    until it expires and its live one under the new blocks: the live one wins."""
    found: dict[str, ServerRecord] = {}
    for block in blocks:
        for peer_id, record in block.items():
            old = found.get(peer_id)
            if old is None or _STATE_RANK.get(record.state, -1) > _STATE_RANK.get(old.state, -1):
                found[peer_id] = record
    return found


def assess_model(model_id: str, num_blocks: int, blocks: Sequence[dict[str, ServerRecord]],
                 pings: dict[str, float | None] | None = None) -> ModelHealth:
    """Health, per-block coverage and the server table of one model.

    `blocks`: one {peer_id: record} per block (fetch_block_servers' shape). `pings`: peer_id ->
    RTT in seconds, or None for a server that did not answer; a peer missing from `pings` was not
    pinged and is trusted on its record.
    """
    pings = pings or {}
    rows = {}
    for peer_id, record in sorted(unique_records(blocks).items(), key=lambda kv: (kv[1].start, kv[1].end, kv[0])):
        rtt = pings.get(peer_id)
        reachable = None if peer_id not in pings else rtt is not None
        rows[peer_id] = ServerRow.from_record(record, rtt, reachable)
    coverage = []
    for i in range(num_blocks):
        here = blocks[i] if i < len(blocks) else {}
        serving = [r for p, r in here.items() if r.state == ServerState.ONLINE and rows[p].reachable is not False]
        joining = sum(1 for r in here.values() if r.state == ServerState.JOINING)
        coverage.append(BlockCoverage(i, len(serving), sum(finite_nonneg(r.throughput, 0.0) for r in serving), joining))
    gaps = _ranges_where(coverage, lambda c: c.servers == 0)
    return ModelHealth(model_id, num_blocks, gaps, coverage, list(rows.values()))


def _ranges_where(coverage: Sequence[BlockCoverage], predicate) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for c in coverage:
        if predicate(c):
            if ranges and ranges[-1][1] == c.block:
                ranges[-1] = (ranges[-1][0], c.block + 1)
            else:
                ranges.append((c.block, c.block + 1))
    return ranges


def coverage_runs(coverage: Sequence[BlockCoverage]) -> list[tuple[int, int, int, float]]:
    """Consecutive blocks with the same servers count and throughput, as (start, end, servers,
    throughput): a 80-block model with 4 servers is 4 lines, not 80."""
    runs: list[list] = []
    for c in coverage:
        if runs and runs[-1][1] == c.block and runs[-1][2] == c.servers and math.isclose(runs[-1][3], c.throughput):
            runs[-1][1] = c.block + 1
        else:
            runs.append([c.block, c.block + 1, c.servers, c.throughput])
    return [tuple(r) for r in runs]


def route_candidates(blocks: Sequence[dict[str, ServerRecord]], rtts: dict[str, float], start: int, end: int, *,
                     tokens_needed: int = 0) -> list[RouteCandidate]:
    """The candidates a client's SequenceManager would build from the same records and RTTs (its
    `candidates`, with no bans): ONLINE servers only, spans cut to [start, end). A server we could
    not ping is left out, as a client bans a server that does not answer its ping."""
    online = [{peer: rec for peer, rec in block.items() if rec.state == ServerState.ONLINE} for block in blocks]
    return candidates(online, start, end, rtts=rtts, tokens_needed=tokens_needed)


def plan_route(model_id: str, num_blocks: int, blocks: Sequence[dict[str, ServerRecord]],
               rtts: dict[str, float | None], *, max_length: int = 0) -> RouteView:
    """The inference route a client here would take now, priced by the router's own cost model."""
    candidates = route_candidates(blocks, rtts, 0, num_blocks, tokens_needed=max_length)
    try:
        route, cost = find_inference_route_with_cost(candidates, 0, num_blocks, model_id=model_id, **ROUTING_DEFAULTS)
    except NoRouteError as exc:
        return RouteView(model_id, num_blocks, [], None, exc.missing, max_length)
    by_peer = {c.peer_id: c for c in candidates}
    records = unique_records(blocks)
    hops = []
    for span in route:
        c = by_peer[span.peer_id]
        rps = c.inference_rps if c.inference_rps and c.inference_rps > 0 else float("nan")
        hops.append(RouteHop(span.peer_id, records[span.peer_id].endpoint, span.start, span.end,
                             rtts.get(span.peer_id), span.length / rps))
    return RouteView(model_id, num_blocks, hops, cost, [], max_length)


def to_jsonable(view) -> dict:
    """A view as JSON-ready data (tuples become lists, computed properties are included)."""
    data = asdict(view)
    if isinstance(view, SwarmReport):
        for model, health in zip(data["models"], view.models):
            model["status"] = health.status
            model["healthy"] = health.healthy
            model["gaps_text"] = gap_message(health.model_id, health.gaps) if health.gaps else ""
    if isinstance(view, RouteView) and view.gaps:
        data["gaps_text"] = gap_message(view.model_id, view.gaps)
    return _lists(data)


def _lists(x):
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf
    return x


__all__ = ["ServerRow", "BlockCoverage", "ModelHealth", "SwarmReport", "RouteHop", "RouteView", "RawEntry",
           "RawView",
           "assess_model", "coverage_runs", "gap_message", "plan_route",
           "route_candidates", "to_jsonable", "unique_records", "ROUTING_DEFAULTS"]
