"""A discrete-event simulation of one swarm under one placement strategy.

What is modelled, and how (time in seconds):

- Servers join one by one: each calls `zswarm.placement.choose_blocks` on the swarm it sees
  (JOINING and ONLINE servers), is JOINING while it loads (`load_s_per_block` per block), then
  ONLINE. Each ONLINE server calls `should_move` at random times around the rebalance period;
  a move is: OFFLINE (its sessions fail over), reload, ONLINE. Churn makes servers leave without
  warning and come back later, choosing blocks afresh.
- A server computes queued steps in batches: a batch costs `hop_overhead_s` plus, per block
  any request in it touches, `block_ms * (1 + 0.05 * (requests on that block - 1))` (decode is
  memory-bound, so batching is cheap). It announces what a real server would: per-block
  inference rate `1000 / block_ms`, throughput = tokens/s through its whole span with a full
  cache (capped by its network), pings to the servers of its next block.
- KV cache: a server hosts `cache_tokens_per_block // max_length` sessions; a full server is
  announced without cache room. A session that cannot get room everywhere on its route waits
  a second and routes again.
- Clients (closed loop) open a session, route it with `zswarm.routing.find_inference_route`
  over what servers announced and their own RTTs, decode `session_tokens` tokens, think,
  repeat. A token travels span by span (through the client, or server to server with relay
  "server"): half an RTT plus the transfer of one hidden state per leg. When a server on the
  route has gone, the client notices (1 s for a vanished server, one RTT for a moving one),
  routes the rest again and replays its history to the new servers (a prefill).
- Network: RTT between regions from the scenario, plus a fixed per-pair offset of 0-4 ms
  (the same in every run) so that servers in one region are not all alike.

Strategy-independent randomness (churn times, think times, check times) comes from separate
seeded streams, so both strategies face exactly the same events.
"""

from __future__ import annotations

import heapq
import random
import zlib
from dataclasses import dataclass, field

from zswarm.placement import JOINING, OFFLINE, ONLINE, LatencyModel, ServerSpan, SwarmView, choose_blocks, should_move
from zswarm.routing import NoRouteError, RouteCandidate, find_inference_route

from .scenario import Scenario

BATCH_COST = 0.05  # extra cost of each further request in a batch, per block (memory-bound decode)
VANISHED_DETECT_S = 1.0  # a client notices a dead server after this timeout
ROUTE_RETRY_S = 1.0
REPLAY_COST_PER_TOKEN = 0.02  # a replayed token costs this share of a decode step (prefill is batched)


@dataclass
class SimServer:
    index: int
    peer_id: str
    region: str
    blocks: int
    block_ms: float
    mbps: float
    load_s: float
    slots: int
    throughput: float
    state: int = OFFLINE
    start: int = 0
    end: int = 0
    epoch: int = 0  # bumped whenever it stops serving, so stale requests can tell
    used_slots: int = 0
    queue: list = field(default_factory=list)
    batch: list = field(default_factory=list)
    busy: bool = False

    @property
    def rps(self) -> float:
        return 1000.0 / self.block_ms


@dataclass
class Session:
    client: "Client"
    route: list
    held: list  # per route span: (server, its epoch when this session got a cache slot there)
    tokens: int = 0
    t0: float = 0.0


@dataclass
class Client:
    index: int
    name: str
    region: str
    rng: random.Random


class Simulation:
    def __init__(self, scenario: Scenario, strategy: str, *, relay: str | None = None,
                 petals_hysteresis: bool = False, regions_known: bool = True, **latency_knobs):
        self.sc = scenario
        self.strategy = strategy
        # False: placement sees what a real server can know, no region labels, only the RTTs it
        # measured itself to every other server (and the next-block pings others announced).
        self.regions_known = regions_known
        # Petals' own rule has no hysteresis; True runs our anti-flip-flop variant of it instead.
        self.petals_hysteresis = petals_hysteresis
        self.relay = relay or scenario.relay
        self.now = 0.0
        self._events: list = []
        self._seq = 0
        hidden_bytes = scenario.hidden_size * 2
        self.hidden_bits = hidden_bytes * 8
        slots = max(1, scenario.cache_tokens_per_block // scenario.max_length)
        self.servers = []
        for i, spec in enumerate(scenario.servers):
            step = spec.blocks * spec.gpu.block_ms / 1000 * (1 + BATCH_COST * (slots - 1))
            network_tps = spec.gpu.mbps * 1e6 / self.hidden_bits
            self.servers.append(SimServer(i, spec.name, spec.region, spec.blocks, spec.gpu.block_ms, spec.gpu.mbps,
                                          spec.gpu.load_s_per_block, slots, min(slots / step, network_tps)))
        self.by_id = {s.peer_id: s for s in self.servers}
        self.model = LatencyModel(region_rtt=lambda a, b: scenario.rtt_s.get((a, b)),
                                  hop_overhead=scenario.hop_overhead_s, relay=self.relay, **latency_knobs)
        self.check_rng = random.Random(scenario.seed * 7919 + 1)
        self.petals_rng = random.Random(scenario.seed * 7919 + 2)
        # metrics
        self.token_times: list[float] = []
        self.tokens_done = 0
        self.route_hops: list[int] = []
        self.samples: list[tuple[float, float, float, int]] = []
        self.moves = 0
        self.reroutes = 0
        self.open_waits = 0

    # ---- the event queue ------------------------------------------------------------------
    def at(self, t: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn, args))

    def run(self) -> "Simulation":
        sc = self.sc
        for s, spec in zip(self.servers, sc.servers):
            self.at(spec.join_at_s, self.join, s)
        self._schedule_churn()
        regions = _assign_regions(sc.client_regions, sc.clients)
        for i, region in enumerate(regions):
            c = Client(i, f"client-{i}", region, random.Random(sc.seed * 1009 + i))
            self.at(sc.clients_start_at_s + 0.25 * i, self.open_session, c)
        t = 0.0
        while t <= sc.duration_s:
            self.at(t, self.sample)
            t += sc.sample_every_s
        while self._events:
            t, _, fn, args = heapq.heappop(self._events)
            if t > sc.duration_s:
                break
            self.now = t
            fn(*args)
        return self

    def _schedule_churn(self) -> None:
        sc = self.sc
        for ev in sc.churn:
            s = self.servers[ev.server]
            self.at(ev.leave_at_s, self.leave, s)
            if ev.return_at_s is not None:
                self.at(ev.return_at_s, self.join, s)
        if sc.random_churn:
            rng = random.Random(sc.seed * 7919 + 3)
            up, down = sc.random_churn["mean_uptime_s"], sc.random_churn["mean_downtime_s"]
            for s, spec in zip(self.servers, sc.servers):
                t = max(sc.random_churn["from_s"], spec.join_at_s)
                while True:
                    t += rng.expovariate(1 / up)
                    if t > sc.duration_s:
                        break
                    self.at(t, self.leave, s)
                    t += rng.expovariate(1 / down)
                    self.at(t, self.join, s)

    # ---- network --------------------------------------------------------------------------
    def rtt(self, a_name: str, a_region: str, b_name: str, b_region: str) -> float:
        offset = (zlib.crc32(f"{min(a_name, b_name)}|{max(a_name, b_name)}".encode()) % 5) / 1000
        return self.sc.rtt(a_region, b_region) + offset

    def server_rtt(self, a: SimServer, b: SimServer) -> float:
        return self.rtt(a.peer_id, a.region, b.peer_id, b.region)

    def client_rtt(self, c: Client, s: SimServer) -> float:
        return self.rtt(c.name, c.region, s.peer_id, s.region)

    def transfer(self, mbps_a: float, mbps_b: float) -> float:
        return self.hidden_bits / (min(mbps_a, mbps_b) * 1e6)

    def next_pings(self, s: SimServer) -> dict[str, float]:
        return {o.peer_id: self.server_rtt(s, o) for o in self.servers
                if o is not s and o.state == ONLINE and o.start <= s.end < o.end}

    # ---- servers --------------------------------------------------------------------------
    def span_of(self, s: SimServer) -> ServerSpan:
        return ServerSpan(s.peer_id, s.start, s.end, s.throughput, s.rps, s.state, self.next_pings(s),
                          s.region if self.regions_known else None)

    def pings_from(self, s: SimServer) -> dict[str, float]:
        """RTTs `s` measures to every server it can see (a real server can ping them all)."""
        return {o.peer_id: self.server_rtt(s, o) for o in self.servers if o is not s and o.state != OFFLINE}

    def view(self) -> SwarmView:
        return SwarmView(self.sc.num_blocks, [self.span_of(s) for s in self.servers if s.state != OFFLINE])

    def join(self, s: SimServer) -> None:
        if s.state != OFFLINE:
            return
        start, end = choose_blocks(self.view(), s.blocks, self.strategy, my_peer_id=s.peer_id,
                                   throughput=s.throughput, inference_rps=s.rps,
                                   region=s.region if self.regions_known else None, pings=self.pings_from(s),
                                   model=self.model)
        self._load(s, start, end)

    def _load(self, s: SimServer, start: int, end: int) -> None:
        s.start, s.end, s.state = start, end, JOINING
        s.epoch += 1
        self.at(self.now + (end - start) * s.load_s, self.online, s, s.epoch)

    def online(self, s: SimServer, epoch: int) -> None:
        if s.epoch == epoch and s.state == JOINING:
            s.state = ONLINE
            self.at(self.now + self.check_rng.uniform(0.5, 1.5) * self.sc.rebalance_period_s, self.check, s, epoch)

    def check(self, s: SimServer, epoch: int) -> None:
        if s.epoch != epoch or s.state != ONLINE:
            return
        target = should_move(self.view(), s.peer_id, self.strategy, balance_quality=0.75,
                             rng=self.petals_rng, hysteresis=self.petals_hysteresis, model=self.model,
                             pings=self.pings_from(s))
        if target is not None and tuple(target) != (s.start, s.end):
            self.moves += 1
            self._stop(s, vanished=False)
            self._load(s, *target)
        else:
            self.at(self.now + self.check_rng.uniform(0.5, 1.5) * self.sc.rebalance_period_s, self.check, s, epoch)

    def leave(self, s: SimServer) -> None:
        if s.state != OFFLINE:
            self._stop(s, vanished=True)

    def _stop(self, s: SimServer, *, vanished: bool) -> None:
        stranded = s.queue + s.batch
        s.state, s.queue, s.batch, s.busy, s.used_slots = OFFLINE, [], [], False, 0
        s.epoch += 1
        for sess, i in stranded:
            self.fail(sess, i, vanished)

    def arrive(self, sess: Session, i: int, s: SimServer, epoch: int) -> None:
        span = sess.route[i]
        if s.epoch != epoch or s.state != ONLINE or not (s.start <= span.start and span.end <= s.end):
            self.fail(sess, i, vanished=s.state == OFFLINE)
            return
        s.queue.append((sess, i))
        if not s.busy:
            self._start_batch(s)

    def _start_batch(self, s: SimServer) -> None:
        s.batch, s.queue, s.busy = s.queue, [], True
        ranges = sorted((sess.route[i].start, sess.route[i].end) for sess, i in s.batch)
        total = sum(b - a for a, b in ranges)
        union, reach = 0, -1
        for a, b in ranges:
            union += max(0, b - max(a, reach))
            reach = max(reach, b)
        compute = s.block_ms / 1000 * (BATCH_COST * total + (1 - BATCH_COST) * union)
        self.at(self.now + self.sc.hop_overhead_s + compute, self._batch_done, s, s.epoch)

    def _batch_done(self, s: SimServer, epoch: int) -> None:
        if s.epoch != epoch:
            return  # it stopped mid-batch; _stop already failed these requests
        done, s.batch, s.busy = s.batch, [], False
        for sess, i in done:
            self.reply(sess, i, s)
        if s.queue:
            self._start_batch(s)

    # ---- clients --------------------------------------------------------------------------
    def candidates(self, c: Client) -> list[RouteCandidate]:
        return [RouteCandidate(s.peer_id, s.start, s.end, s.rps, self.client_rtt(c, s), self.next_pings(s),
                               s.used_slots < s.slots, s.throughput)
                for s in self.servers if s.state == ONLINE]

    def route(self, c: Client, start: int) -> list | None:
        try:
            return find_inference_route(self.candidates(c), start, self.sc.num_blocks,
                                        hop_overhead=self.sc.hop_overhead_s, relay=self.relay)
        except NoRouteError:
            return None

    def _hold(self, route) -> list | None:
        servers = [self.by_id[span.peer_id] for span in route]
        if any(s.used_slots >= s.slots for s in servers):
            return None
        for s in servers:
            s.used_slots += 1
        return [(s, s.epoch) for s in servers]

    def _release(self, held) -> None:
        for s, epoch in held:
            if s.epoch == epoch:
                s.used_slots -= 1

    def open_session(self, c: Client) -> None:
        route = self.route(c, 0)
        held = self._hold(route) if route else None
        if held is None:
            self.open_waits += 1
            self.at(self.now + ROUTE_RETRY_S, self.open_session, c)
            return
        self.route_hops.append(len(route))
        sess = Session(c, route, held)
        self.step(sess)

    def step(self, sess: Session) -> None:
        sess.t0 = self.now
        self.send(sess, 0, None)

    def send(self, sess: Session, i: int, src: SimServer | None) -> None:
        s, epoch = sess.held[i]  # a server that restarted since lost this session's cache: it must fail
        c = sess.client
        if src is None:
            delay = self.client_rtt(c, s) / 2 + self.transfer(self.sc.client_mbps, s.mbps)
        else:
            delay = self.server_rtt(src, s) / 2 + self.transfer(src.mbps, s.mbps)
        self.at(self.now + delay, self.arrive, sess, i, s, epoch)

    def reply(self, sess: Session, i: int, s: SimServer) -> None:
        last = i == len(sess.route) - 1
        if self.relay == "server" and not last:
            self.send(sess, i + 1, s)
            return
        delay = self.client_rtt(sess.client, s) / 2 + self.transfer(s.mbps, self.sc.client_mbps)
        self.at(self.now + delay, self.client_got, sess, i)

    def client_got(self, sess: Session, i: int) -> None:
        if i + 1 < len(sess.route):
            self.send(sess, i + 1, None)
            return
        if sess.t0 >= self.sc.clients_start_at_s:
            self.token_times.append(self.now - sess.t0)
        self.tokens_done += 1
        sess.tokens += 1
        if sess.tokens >= self.sc.session_tokens:
            self._release(sess.held)
            think = self.sc.think_s * sess.client.rng.uniform(0.5, 1.5)
            self.at(self.now + think, self.open_session, sess.client)
        else:
            self.step(sess)

    def fail(self, sess: Session, i: int, vanished: bool) -> None:
        """Span i of this token failed: notice, route blocks from there again, replay, go on."""
        s = self.by_id[sess.route[i].peer_id]
        detect = VANISHED_DETECT_S if vanished else self.client_rtt(sess.client, s)
        self.at(self.now + detect, self._reroute, sess, i)

    def _reroute(self, sess: Session, i: int) -> None:
        self.reroutes += 1
        start = sess.route[i].start
        self._release(sess.held[i:])
        sess.held = sess.held[:i]
        rest = self.route(sess.client, start)
        held = self._hold(rest) if rest else None
        if held is None:  # no route or no room right now: try again shortly
            self.at(self.now + ROUTE_RETRY_S, self._reroute, sess, i)
            return
        sess.route, sess.held = sess.route[:i] + rest, sess.held + held
        # the new servers rebuild their cache from the history the client kept
        replay = max(self.by_id[span.peer_id].block_ms * span.length for span in rest) / 1000
        replay *= 1 + REPLAY_COST_PER_TOKEN * sess.tokens
        self.at(self.now + replay, self.send, sess, i, None if i == 0 or self.relay == "client"
                else self.by_id[sess.route[i - 1].peer_id])

    # ---- metrics --------------------------------------------------------------------------
    def sample(self) -> None:
        n = self.sc.num_blocks
        thr = [0.0] * n
        for s in self.servers:
            if s.state == ONLINE:
                for b in range(s.start, s.end):
                    thr[b] += s.throughput
        covered = sum(1 for t in thr if t > 0) / n
        online = sum(1 for s in self.servers if s.state == ONLINE)
        self.samples.append((self.now, covered, min(thr), online))


def _assign_regions(shares: dict[str, float], count: int) -> list[str]:
    """`count` client regions in proportion to `shares` (largest remainder), interleaved."""
    total = sum(shares.values()) or 1.0
    exact = {r: count * w / total for r, w in shares.items()}
    alloc = {r: int(x) for r, x in exact.items()}
    for r in sorted(exact, key=lambda r: exact[r] - alloc[r], reverse=True)[:count - sum(alloc.values())]:
        alloc[r] += 1
    out: list[str] = []
    while len(out) < count:
        for r in sorted(alloc):
            if alloc[r] > 0:
                out.append(r)
                alloc[r] -= 1
    return out
