"""`SequenceManager`: what the client knows of the swarm, and the routes it picks from that.

It reads block -> server records from the DHT (through a `fetch_records` coroutine, so unit
tests can hand it synthetic swarms), refreshes them in the background and at once after a
failure, pings servers for their RTT, and bans failing ones with exponential backoff. A ban
never removes the last server of a block: a banned server comes back as a last resort (after a
ping says it is alive), and the retry budget of the caller bounds how often that happens.
Routes themselves come from the pure functions in `zswarm.routing`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import Awaitable, Callable, Mapping, Sequence

from zswarm.swarm_info import ServerRecord, ServerState
from wire.errors import RequestTimeout
from wire.transport import Reply, Transport
from zswarm.client.bans import BanList
from zswarm.client.config import ClientConfig
from zswarm.client.failures import ServerUnavailable, adapter_detail, describe
from zswarm.reports import LieReport, ReportLog
from zswarm.blocks import format_blocks
from zswarm.errors import ImplausibleReplyError, NoRouteError, ServerMisbehaved
from zswarm.probe import ping_rtt
from zswarm.routing import (RouteCandidate, RouteSpan, candidates, find_forward_route, find_inference_route,
                            uncovered_ranges)

logger = logging.getLogger(__name__)

RecordsFetcher = Callable[[], Awaitable[Sequence[dict[str, ServerRecord]]]]

# Weight of a new RTT sample in the running average.
RTT_SMOOTHING = 0.3
# Weight of a new decode step's time in a server's measured seconds per block (EWMA).
STEP_TIME_SMOOTHING = 0.3
# The least seconds per block a measurement can say (a step faster than its ping is noise).
MIN_BLOCK_SECONDS = 1e-6


class SequenceManager:
    def __init__(self, config: ClientConfig, *, model_id: str, num_blocks: int, transport: Transport,
                 fetch_records: RecordsFetcher, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        self.config = config
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.transport = transport
        self.fetch_records = fetch_records
        self.clock = clock
        self.rng = rng or random.Random()
        self.bans = BanList(config.ban_base_s, config.ban_max_s, clock)
        self.blocks: list[dict[str, ServerRecord]] = [{} for _ in range(num_blocks)]
        self.rtts: dict[str, float] = {}
        # Measured seconds per block of a decode step (EWMA, RTT taken off), per server: routing
        # prices a server by these once it has them, not by the speed it announced.
        self.block_seconds: dict[str, float] = {}
        # Servers whose answers were wrong (peer_id -> why), left out of every route of this
        # connection; and the reports of them (zswarm.client.verification).
        self.distrusted: dict[str, str] = {}
        self.reports = ReportLog(config.report_path)
        self._missed: dict[tuple[int, str], int] = {}  # (block, peer) kept once though a fetch lacked it
        self.updated_at: float | None = None
        self._lock: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._refresh_task: asyncio.Task | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.update()
        self._refresh_task = asyncio.ensure_future(self._refresh_loop())

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            try:
                await self._refresh_task
            except (asyncio.CancelledError, Exception):
                pass
            self._refresh_task = None

    async def _refresh_loop(self) -> None:
        while True:
            self._wake_event().clear()
            try:
                await asyncio.wait_for(self._wake_event().wait(), timeout=self.config.refresh_period_s)
            except asyncio.TimeoutError:
                pass
            try:
                await self.update(ping_all=True)
            except Exception as exc:  # the DHT may be briefly unreachable; keep the old view
                logger.warning("refreshing the servers of %s failed: %s", self.model_id, exc)

    def _wake_event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    # ---- the view of the swarm ---------------------------------------------------------------
    async def update(self, *, ping_all: bool = False) -> None:
        """Fetch the records again; ping servers not seen before (all of them if `ping_all`)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            fetched = list(await self.fetch_records())
            fetched += [{}] * (self.num_blocks - len(fetched))
            self.blocks = self._merged(fetched[: self.num_blocks])
            self.updated_at = self.clock()
            peers = self.peers()
            to_ping = peers if ping_all else [p for p in peers if p not in self.rtts]
            await asyncio.gather(*(self.ping(p) for p in to_ping))

    def _merged(self, fetched: list[dict[str, ServerRecord]]) -> list[dict[str, ServerRecord]]:
        """The usable records of `fetched`, plus those of the last view that this fetch lacks
        (not ones it shows in another state) the first time they are missing. A DHT lookup that
        waits on a node killed a moment ago may come back short; dropping the replica it missed
        left a route only through the dead server ("the last one left ... does not answer")."""
        blocks, missed = [], {}
        for b, block in enumerate(fetched):
            usable = {peer: rec for peer, rec in block.items() if self._usable(rec)}
            old = self.blocks[b] if b < len(self.blocks) else {}
            for peer, rec in old.items():
                if peer not in block and not self._missed.get((b, peer)):
                    usable[peer] = rec
                    missed[(b, peer)] = 1
            blocks.append(usable)
        self._missed = missed
        return blocks

    def _usable(self, rec: ServerRecord) -> bool:
        if rec.state != ServerState.ONLINE or rec.model_id != self.model_id:
            return False
        if rec.peer_id in self.config.blocked_servers or rec.peer_id in self.distrusted:
            return False
        if self.config.active_adapter is not None and self.config.active_adapter not in rec.adapters:
            return False
        return self.config.allowed_servers is None or rec.peer_id in self.config.allowed_servers

    def request_meta(self, **meta) -> dict:
        """The meta of a request to a server: `meta`, plus the adapter every request runs with."""
        if self.config.active_adapter is not None:
            meta["adapter"] = self.config.active_adapter
        return meta

    def peers(self) -> list[str]:
        return sorted({peer for block in self.blocks for peer in block})

    def record(self, peer_id: str) -> ServerRecord:
        for block in self.blocks:
            if peer_id in block:
                return block[peer_id]
        raise KeyError(f"no record of server {peer_id}")

    def address(self, peer_id: str) -> str:
        """What to dial: the record's address naming its CURVE key (ServerRecord.endpoint)."""
        return self.record(peer_id).endpoint

    async def ping(self, peer_id: str) -> bool:
        """Measure the RTT to `peer_id`; a server that does not answer is banned."""
        try:
            rtt = await ping_rtt(self.transport, self.address(peer_id), timeout=self.config.ping_timeout)
        except Exception as exc:
            self.on_failure(peer_id, exc)
            return False
        old = self.rtts.get(peer_id)
        self.rtts[peer_id] = rtt if old is None else (1 - RTT_SMOOTHING) * old + RTT_SMOOTHING * rtt
        return True

    async def call(self, address: str, method: str, meta: dict, tensors: Sequence = (), *,
                   timeout: float) -> Reply:
        """`transport.call`, but a server that stops answering pings while we wait counts as
        failed at once, not after all of `timeout`: a kill -9 answers no ZeroMQ request, so
        without this a dead server would stall every step for the whole timeout."""
        # The call's own future, watched by a timer (no task and no asyncio.wait per call: they
        # cost each hop of every token two more event-loop passes, ~35 us on the dev box).
        call = self.transport.start_call(address, method, meta, tensors, timeout=timeout)
        watch = _LivenessWatch(self, call, address, method)
        try:
            return await call
        finally:
            watch.stop()
            if not call.done():
                call.cancel()

    # ---- failures ------------------------------------------------------------------------------
    def on_failure(self, peer_id: str, exc: BaseException | None = None) -> None:
        if isinstance(exc, ServerMisbehaved):  # wrong, not late: no backoff brings it back
            report = None
            if isinstance(exc, ImplausibleReplyError):
                start, end = exc.blocks or (-1, -1)
                report = LieReport(peer_id=peer_id, model_id=self.model_id, start=start, end=end,
                                   verdict="implausible", detail=exc.reason)
            self.distrust(peer_id, exc, report)
            return
        duration = self.bans.ban(peer_id)
        logger.info("banned server %s for %.1f s (%s)", peer_id, duration, exc)
        self._wake_event().set()

    def on_success(self, peer_id: str) -> None:
        self.bans.clear(peer_id)

    def distrust(self, peer_id: str, why: BaseException, report: LieReport | None = None) -> None:
        """Leave `peer_id` out of every route from now on (even as a block's last server), log it
        once, and keep `report`."""
        if peer_id in self.distrusted:
            return
        self.distrusted[peer_id] = describe(why)
        logger.warning("distrusting server %s for the rest of this connection: %s", peer_id, describe(why))
        if report is not None:
            self.reports.add(report)
        self.blocks = [{peer: rec for peer, rec in block.items() if peer != peer_id} for block in self.blocks]
        self._wake_event().set()

    # ---- measured speed ------------------------------------------------------------------------
    def on_step_time(self, peer_id: str, blocks: int, seconds: float) -> None:
        """A decode step of `blocks` blocks on `peer_id` took `seconds` (round trip included)."""
        compute = max(seconds - self.rtts.get(peer_id, 0.0), 0.0) / max(blocks, 1)
        compute = max(compute, MIN_BLOCK_SECONDS)
        old = self.block_seconds.get(peer_id)
        self.block_seconds[peer_id] = compute if old is None else \
            (1 - STEP_TIME_SMOOTHING) * old + STEP_TIME_SMOOTHING * compute

    def measured_rps(self) -> dict[str, float]:
        """Per-block decode steps/s of the servers this client has measured."""
        return {peer: 1.0 / seconds for peer, seconds in self.block_seconds.items()}

    # ---- routes --------------------------------------------------------------------------------
    def candidates(self, start: int, end: int, *, tokens_needed: int = 0) -> list[RouteCandidate]:
        """Servers for blocks [start, end), their spans cut to that range. Banned servers are left
        out, except where a block would be left with no server at all."""
        return candidates(self.blocks, start, end, rtts=self.rtts, banned=self.bans.active(),
                          tokens_needed=tokens_needed, measured_rps=self.measured_rps())

    async def make_inference_route(self, start: int, end: int, *, batch_size: int = 1,
                                   max_length: int = 0) -> list[RouteSpan]:
        if self.updated_at is None:
            await self.update()
        with self._naming_adapter():
            route = find_inference_route(self.candidates(start, end, tokens_needed=batch_size * max_length),
                                         start, end, hop_overhead=self.config.hop_overhead_s, relay=self.config.relay,
                                         no_cache_penalty=self.config.no_cache_penalty_s,
                                         unknown_rtt=self.config.unknown_rtt_s, model_id=self.model_id)
        await self._probe_banned(route)
        return route

    async def make_forward_route(self, start: int, end: int, *,
                                 busy: Mapping[str, int] | None = None) -> list[RouteSpan]:
        """A load-spreading route; `busy` (requests in flight per server, from the same caller)
        keeps it off busy servers wherever an idle one holds the same blocks."""
        if self.updated_at is None:
            await self.update()
        candidates = self.candidates(start, end)
        if busy:
            candidates = prefer_idle(candidates, start, end, busy)
        with self._naming_adapter():
            route = find_forward_route(candidates, start, end, rng=self.rng, model_id=self.model_id)
        await self._probe_banned(route)
        return route

    @contextlib.contextmanager
    def _naming_adapter(self):
        """With an active adapter, "served by no one" means "by no one with that adapter": say so."""
        try:
            yield
        except NoRouteError as exc:
            adapter = self.config.active_adapter
            if adapter is None:
                raise
            raise NoRouteError(exc.missing, self.model_id, adapter_detail(adapter), adapter=adapter) from exc

    async def _probe_banned(self, route: list[RouteSpan]) -> None:
        """A banned server on a route is the last of its blocks: use it only if it answers."""
        for span in route:
            if self.bans.is_banned(span.peer_id):
                if not await self.ping(span.peer_id):
                    raise ServerUnavailable(f"server {span.peer_id}, the last one left for blocks "
                                            f"{format_blocks(span.start, span.end)}, does not answer")


def prefer_idle(candidates: list[RouteCandidate], start: int, end: int,
                busy: Mapping[str, int]) -> list[RouteCandidate]:
    """Idle candidates, plus busy ones only for blocks no idle one holds (their throughput
    divided by 1 + their requests in flight): concurrent row groups of one batch then land on
    different replicas whenever there are enough."""
    idle = [c for c in candidates if not busy.get(c.peer_id)]
    gaps = uncovered_ranges(idle, start, end)
    needed = [dataclasses.replace(c, throughput=(c.throughput or c.inference_rps) / (1 + busy[c.peer_id]))
              for c in candidates if busy.get(c.peer_id) and any(c.start < b and c.end > a for a, b in gaps)]
    return idle + needed


class _LivenessWatch:
    """While `call` is pending, ping its server every `liveness_interval_s`; a ping that fails
    before the call ends fails the call with RequestTimeout (a reply that came first wins)."""

    def __init__(self, manager: "SequenceManager", call: asyncio.Future, address: str, method: str):
        self.manager, self.call, self.address, self.method = manager, call, address, method
        self.loop = asyncio.get_running_loop()
        self.ping: asyncio.Future | None = None
        self.timer = self.loop.call_later(manager.config.liveness_interval_s, self._ping)

    def _ping(self) -> None:
        if self.call.done():
            return
        try:
            self.ping = self.manager.transport.start_call(self.address, "ping", {},
                                                          timeout=self.manager.config.ping_timeout)
        except Exception as exc:  # e.g. the transport closed: as good as no answer
            self.ping = self.loop.create_future()
            self.ping.set_exception(exc)
        self.ping.add_done_callback(self._pinged)

    def _pinged(self, ping: asyncio.Future) -> None:
        if ping.cancelled():
            return
        exc = ping.exception()  # read even when unused: asyncio logs exceptions nobody read
        if self.call.done():
            return
        if exc is None:
            self.timer = self.loop.call_later(self.manager.config.liveness_interval_s, self._ping)
            return
        error = RequestTimeout(f"{self.method} to {self.address}: the server stopped answering pings "
                               f"({type(exc).__name__})")
        error.__cause__ = exc
        self.call.set_exception(error)

    def stop(self) -> None:
        self.timer.cancel()
        if self.ping is not None and not self.ping.done():
            self.ping.cancel()
