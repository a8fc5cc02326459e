"""The server: start-up, serving, moving blocks and shutting down, in that order.

    start:    model -> DHT -> how many blocks -> throughput -> which blocks -> RPC server
              -> announce JOINING -> load weights -> announce ONLINE
    serve:    handlers.py (RPC), announcer.py (every period), rebalancer.py (random period),
              session expiry
    move:     stop taking sessions -> announce new blocks JOINING, old OFFLINE -> drain -> load
              -> announce ONLINE
    shutdown: (SIGTERM/SIGINT) stop taking sessions -> announce OFFLINE -> finish in-flight work
              -> close everything -> exit 0
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Optional

import zmq

import zswarm
from dht import DHTError, DHTNode, Identity
from wire import RpcServer, WireError, ZmqTransport
from wire.endpoint import endpoint
from zswarm import dtypes
from zswarm.blocks import format_blocks
from zswarm.errors import ZswarmError
from zswarm.models import resolve_model
from zswarm.models.decode_graph import capture_buckets
from zswarm.server.addresses import WILDCARD_HOSTS, announced_host, bind_error, check_ports_free
from zswarm.server.adapters import attach_adapters, open_adapters
from zswarm.server.announcer import Announcer
from zswarm.server.push_targets import PushTargets
from zswarm.server.reachability import AnnounceWhenReachable, ConnectBack, ask_swarm
from zswarm.server.cache_budget import CacheBudget
from zswarm.server.compute import ComputeQueue
from zswarm.server.config import SERVER_LIMITS, ConfigError, ServerConfig
from zswarm.server.handlers import ServerRPC, ServingState
from zswarm.server.keys import server_curve_keys
from zswarm.server.loading import graphs_refused, load_blocks, resolve_device, resolve_dtype
from zswarm.server.memory import BlockShape, default_cache_tokens, fit_cache_tokens, free_device_bytes, plan_num_blocks
from zswarm.server.quant import check_quant_available
from zswarm.server.rebalancer import Rebalancer, choose_initial_blocks
from zswarm.server.sessions import ServerSessions
from zswarm.server.throughput import Rates, get_rates
from zswarm.swarm_info import ServerRecord, ServerState

logger = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0002  # see run_server
LOAD_PROGRESS_EVERY_S = 10.0  # a load that takes longer says how far it got, at most this often

# The fields a ServerRecord takes from ServingState as they are (both name them the same).
_FROM_SERVING_STATE = ("peer_id", "model_id", "start", "end", "throughput", "inference_rps", "forward_rps",
                       "dtype", "quant", "version")


class Server:
    rpc_class = ServerRPC  # the handlers; a subclass may serve others (zswarm.testing.liar's)

    def __init__(self, config: ServerConfig):
        self.config = config
        self.node: Optional[DHTNode] = None
        self.rpc_server: Optional[RpcServer] = None
        self.transport: Optional[ZmqTransport] = None
        self.compute: Optional[ComputeQueue] = None
        self.sessions: Optional[ServerSessions] = None
        self.state: Optional[ServingState] = None
        self.announcer: Optional[Announcer] = None
        self.rebalancer: Optional[Rebalancer] = None
        self.rates: Optional[Rates] = None
        self.adapters: list = []  # LoraAdapter, checked at start; put on every span loaded
        self.address = ""  # tcp://host:port it announces (ServerRecord.address)
        self.curve_key = b""  # its CURVE public key (ServerRecord.curve_key); b"" when plaintext
        self.dht_address = ""  # HOST:PORT others give as --initial-peers to join through this server
        self.started_at = time.time()  # announced, for the uptime zswarm-inspect shows
        self.metrics = None  # ServerMetrics with --metrics-port
        self.metrics_address = ""
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._moving = asyncio.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests, tools)
                pass
        starting = loop.create_task(self.start(), name="start-up")
        stopping = loop.create_task(self._stop.wait(), name="stop signal")
        try:
            done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()  # a start-up error ends the run here
                await stopping
            else:  # stopped while starting: leave without finishing the start
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        finally:
            stopping.cancel()
            await self.shutdown()
        return 0

    def request_stop(self, sig=None) -> None:
        if not self._stop.is_set():
            logger.info("received %s: shutting down", signal.Signals(sig).name if sig else "stop request")
        self._stop.set()

    async def start(self) -> None:
        cfg = self.config
        if not cfg.new_swarm and not cfg.initial_peers:
            raise ConfigError("give --initial-peers HOST:PORT to join a swarm, or --new-swarm to start one")
        # Every setting is checked here, before the slow work (preparing the model, joining the DHT).
        public_host = announced_host(cfg.host, cfg.public_host, cfg.initial_peers)
        check_ports_free(cfg.host, cfg.port, cfg.dht_port, cfg.metrics_port)
        loop = asyncio.get_running_loop()

        device = resolve_device(cfg.device)
        check_quant_available(cfg.quant, device)
        if not device.startswith("cuda") and cfg.num_blocks is None and cfg.block_indices is None:
            raise ConfigError("on a CPU, give --num-blocks N or --block-indices A:B (free memory is not a limit there, "
                              "so the server cannot work out how many blocks to host)")
        source = await loop.run_in_executor(None, resolve_model, cfg.model)
        self.source = source
        if cfg.block_indices is not None and cfg.block_indices[1] > source.num_blocks:
            start, end = cfg.block_indices
            raise ConfigError(f"--block-indices {format_blocks(start, end)}, but {source.model_id} has "
                              f"{source.num_blocks} blocks (0:{source.num_blocks})")
        if cfg.num_blocks is not None and cfg.num_blocks > source.num_blocks:
            logger.warning("--num-blocks %d, but %s has %d blocks: hosting all %d", cfg.num_blocks, source.model_id,
                           source.num_blocks, source.num_blocks)
        self.adapters = await loop.run_in_executor(None, open_adapters, cfg.adapters, source)
        dtype = resolve_dtype(cfg.dtype, source.config, device)
        dtype_name = dtypes.dtype_name(dtype)
        self.device, self.dtype = device, dtype

        identity = Identity.load_or_create(cfg.identity) if cfg.identity else Identity.generate()
        self.node = DHTNode(host=cfg.host, port=cfg.dht_port, initial_peers=cfg.initial_peers, identity=identity)
        try:
            await loop.run_in_executor(None, self.node.start)
        except OSError as exc:
            raise bind_error(exc, "DHT port (UDP)", cfg.host, cfg.dht_port, "--dht-port") from None
        dht_port = self.node.address.rsplit(":", 1)[1]
        join_at = self.node.address if cfg.host not in WILDCARD_HOSTS else f"{public_host}:{dht_port}"
        logger.info("DHT node %s at %s (others join this swarm with --initial-peers %s)",
                    self.node.peer_id, self.node.address, join_at)
        self.dht_address = join_at

        shape = BlockShape.from_source(source)
        cache_tokens = cfg.attn_cache_tokens or default_cache_tokens(device)
        blocks_to_host = self._plan_blocks(shape, dtype_name, cache_tokens, device, source.num_blocks)
        if cfg.attn_cache_tokens is None and device.startswith("cuda"):  # the default shrinks to what fits
            cache_tokens = fit_cache_tokens(free_device_bytes(device), shape, dtype_name, cfg.quant, blocks_to_host,
                                            cache_tokens)
        self.rates = await loop.run_in_executor(None, self._get_rates, blocks_to_host)
        # every ping this server sends (placement, next_pings) goes through it, encrypted like a client's
        self.transport = ZmqTransport(insecure_plaintext=cfg.insecure_plaintext)
        throughput = cfg.throughput or self.rates.throughput(blocks_to_host)

        if cfg.block_indices is not None:
            start, end = cfg.block_indices
        else:
            start, end = await choose_initial_blocks(self.node, self.transport, source.model_id, source.num_blocks,
                                                     blocks_to_host, cfg.placement, self.node.peer_id, throughput,
                                                     self.rates.inference_rps)

        self.compute = ComputeQueue()
        self.sessions = ServerSessions(CacheBudget(cache_tokens), cfg.session_idle_timeout,
                                       client_cache_share=cfg.client_cache_share,
                                       max_client_sessions=cfg.max_client_sessions)
        self.state = ServingState(
            model_id=source.model_id, num_blocks=source.num_blocks, hidden_size=int(source.config.hidden_size),
            dtype=dtype_name, quant=cfg.quant, peer_id=self.node.peer_id, version=zswarm.__version__,
            start=start, end=end, throughput=throughput, inference_rps=self.rates.inference_rps,
            forward_rps=self.rates.forward_rps, adapters=tuple(adapter.name for adapter in self.adapters),
            **{name: getattr(cfg, name) for name in SERVER_LIMITS},
        )
        rpc = self.rpc_class(self.state, self.sessions, self.compute, self.transport, ConnectBack(self.node),
                             PushTargets(self.node, source.model_id, source.num_blocks))
        handlers = rpc.handlers()
        if cfg.metrics_port is not None:
            from zswarm.server.metrics import ServerMetrics  # prometheus_client: only when asked for

            self.metrics = ServerMetrics(rpc)
            handlers = self.metrics.instrument(handlers)
            try:
                port = self.metrics.serve(cfg.host, cfg.metrics_port)
            except OSError as exc:
                raise bind_error(exc, "metrics port (TCP)", cfg.host, cfg.metrics_port, "--metrics-port") from None
            self.metrics_address = f"http://{public_host}:{port}/metrics"
            logger.info("Prometheus metrics at %s", self.metrics_address)
        keys = None if cfg.insecure_plaintext else server_curve_keys(identity)
        self.rpc_server = RpcServer(handlers, host=cfg.host, port=cfg.port, admit=rpc.admit, keys=keys,
                                    insecure_plaintext=cfg.insecure_plaintext)
        try:
            await self.rpc_server.start()
        except zmq.ZMQError as exc:
            raise bind_error(exc, "RPC port (TCP)", cfg.host, cfg.port, "--port") from None
        self.address = f"tcp://{public_host}:{self.rpc_server.port}"
        self.curve_key = keys.public if keys is not None else b""
        if keys is None:
            logger.warning("--insecure-plaintext: hidden states and session ids to and from this server travel "
                           "in clear, and clients cannot tell it from an impostor at its address")
        self.announcer = Announcer(self.node, self.transport, self._record, num_blocks=source.num_blocks,
                                   ttl=cfg.record_ttl, period=cfg.update_period)
        if cfg.reachability_check:
            reachability = AnnounceWhenReachable(
                lambda: ask_swarm(self.node, self.transport, source.model_id, source.num_blocks, self.node.peer_id,
                                  self.endpoint, self.dht_address),
                self.announcer, self.endpoint, self.dht_address)
            if not await reachability.check():
                self._spawn(reachability.until_reachable(lambda: self.announcer.announce(
                    ServerState.ONLINE if self.state.span is not None else ServerState.JOINING)), "reachability re-check")
        await self.announcer.announce(ServerState.JOINING)

        self.state.span = await self._load(start, end)
        await self.announcer.measure_next_pings(self.node.peer_id, end, source.model_id)
        await self.announcer.announce(ServerState.ONLINE)
        logger.info("serving %s blocks %s of %d on %s, %s, quant=%s, throughput %.1f tokens/s, "
                    "%d cache tokens, at %s (peer %s)", source.model_id, format_blocks(start, end), source.num_blocks,
                    device, dtype_name, cfg.quant, throughput, cache_tokens, self.endpoint, self.node.peer_id)
        self._write_ready_file()

        self._spawn(self.announcer.run(self.node.peer_id, lambda: self.state.end, source.model_id), "announcer")
        self._spawn(self.sessions.expiry_loop(), "session expiry")
        if cfg.rebalance_enabled:
            self.rebalancer = Rebalancer(
                node=self.node, transport=self.transport, model_id=source.model_id, num_blocks=source.num_blocks,
                peer_id=self.node.peer_id,
                strategy=cfg.placement, balance_quality=cfg.balance_quality, mean_period=cfg.rebalance_period,
                min_move_interval=cfg.min_move_interval, current_range=lambda: (self.state.start, self.state.end),
                move=self.move_to)
            self._spawn(self.rebalancer.run(), "rebalancer")

    async def shutdown(self) -> None:
        cfg = self.config
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.sessions is not None:
            self.sessions.stop_accepting("the server is shutting down")
        if self.announcer is not None:
            try:
                await asyncio.wait_for(self.announcer.announce(ServerState.OFFLINE), timeout=5.0)
            except asyncio.TimeoutError:
                logger.warning("could not announce OFFLINE within 5s")
        if self.compute is not None:
            await self._drain(cfg.drain_timeout, sessions_too=False)
        if self.sessions is not None:
            self.sessions.close_all("was ended: the server shut down")
        if self.rpc_server is not None:
            await self.rpc_server.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.compute is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.compute.close)
        if self.node is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.node.shutdown)
        if self.metrics is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.metrics.close)
        logger.info("server stopped")

    # ---- moving blocks ---------------------------------------------------------------------
    async def move_to(self, start: int, end: int) -> None:
        """Serve blocks [start, end) instead: fail no one silently, announce every state change."""
        async with self._moving:
            old_start, old_end = self.state.start, self.state.end
            self.sessions.stop_accepting(f"the server is moving from blocks {format_blocks(old_start, old_end)} "
                                         f"to {format_blocks(start, end)}")
            await self.announcer.announce(record=self._record(ServerState.OFFLINE))
            self.state.start, self.state.end = start, end
            await self.announcer.announce(ServerState.JOINING)
            await self._drain(self.config.drain_timeout, sessions_too=True)
            self.sessions.close_all(f"was ended: the server moved to blocks {format_blocks(start, end)}")
            self.state.span = None
            self.state.span = await self._load(start, end)
            self.sessions.resume_accepting()
            await self.announcer.measure_next_pings(self.node.peer_id, end, self.state.model_id)
            await self.announcer.announce(ServerState.ONLINE)
            logger.info("moved from blocks %s to %s", format_blocks(old_start, old_end), format_blocks(start, end))
            self._write_ready_file()

    # ---- helpers ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """What a client dials: `address` naming `curve_key` (as ServerRecord.endpoint)."""
        return endpoint(self.address, self.curve_key)

    def _write_ready_file(self) -> None:
        """--ready-file: the signal that this server serves, and where (zswarm.testing.launch reads
        it). Written whole (a temporary file renamed over it), so a reader never sees half of it."""
        path = self.config.ready_file
        if not path:
            return
        ready = {"address": self.endpoint, "dht_address": self.dht_address, "peer_id": self.node.peer_id,
                 "model_id": self.state.model_id, "start": self.state.start, "end": self.state.end}
        if self.metrics_address:
            ready["metrics_address"] = self.metrics_address
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as out:
            json.dump(ready, out)
        os.replace(tmp, path)

    def _record(self, state: ServerState) -> ServerRecord:
        """What this server offers now, as announced: ServingState's fields of the same name, plus
        what only the server knows (its address, free cache, public name)."""
        return ServerRecord(**{name: getattr(self.state, name) for name in _FROM_SERVING_STATE},
                            adapters=tuple(self.state.adapters), address=self.address, curve_key=self.curve_key,
                            state=state,
                            cache_tokens_left=self.sessions.budget.free, public_name=self.config.public_name,
                            started_at=self.started_at)

    def _plan_blocks(self, shape: BlockShape, dtype: str, cache_tokens: int, device: str, total: int) -> int:
        cfg = self.config
        if cfg.block_indices is not None:
            return cfg.block_indices[1] - cfg.block_indices[0]
        if cfg.num_blocks is not None:
            return min(cfg.num_blocks, total)  # clamping was warned about at start
        free = free_device_bytes(device)
        count = plan_num_blocks(free, shape, dtype, cfg.quant, cache_tokens, total)
        logger.info("%.1f GiB free on %s: hosting %d blocks (%d cache tokens)", free / 2**30, device, count,
                    cache_tokens)
        return count

    def _get_rates(self, blocks_to_host: int) -> Rates:
        cfg = self.config
        if cfg.throughput is not None:  # given: every per-block rate follows from it
            per_block = cfg.throughput * blocks_to_host
            return Rates(inference_rps=per_block, forward_rps=per_block)

        dtype_name = dtypes.dtype_name(self.dtype)
        # the cached rates were measured on one decode path: with graphs they are ~10x higher on a GPU
        graphs = self.device.startswith("cuda") and graphs_refused(cfg.cuda_graphs, cfg.quant) is None
        return get_rates(self.source.model_id, self.device, dtype_name, cfg.quant + (",cuda-graphs" if graphs else ""),
                         lambda: load_blocks(self.source, 0, 1, dtype=self.dtype, device=self.device,
                                             quant=cfg.quant, cuda_graphs=cfg.cuda_graphs, progress=logger.debug),
                         cfg.throughput_cache)

    async def _load(self, start: int, end: int):

        began = time.monotonic()
        what = f"blocks {format_blocks(start, end)} ({self.device}, {dtypes.dtype_name(self.dtype)}, " \
               f"quant={self.config.quant})"
        last_line = [began]

        def progress(line: str) -> None:  # per block at DEBUG; at INFO only on a load long enough to wonder
            now = time.monotonic()
            if now - last_line[0] >= LOAD_PROGRESS_EVERY_S:
                last_line[0] = now
                logger.info("%s", line)
            else:
                logger.debug("%s", line)

        def load():
            span = load_blocks(self.source, start, end, dtype=self.dtype, device=self.device,
                               quant=self.config.quant, cuda_graphs=self.config.cuda_graphs, progress=progress)
            attach_adapters(span, self.adapters)
            # one KV pool for every session, of the cache budget's size: sessions take and return its
            # pages, and decode graphs captured over it stay valid until the blocks change
            span.attach_pool(self.sessions.budget.capacity)
            capture_buckets(span, self.config.max_session_length, progress=logger.info)
            return span

        span = await asyncio.get_running_loop().run_in_executor(None, load)
        logger.info("loaded %s in %.1fs", what, time.monotonic() - began)
        return span

    async def _drain(self, timeout: float, *, sessions_too: bool) -> None:
        """Wait up to `timeout` for running steps (and, when moving, open sessions) to finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.compute.inflight or any(s.lock.locked() for s in self.sessions)
            if not busy and not (sessions_too and len(self.sessions)):
                return
            await asyncio.sleep(0.05)
        logger.info("drain: %d sessions still open after %.1fs; ending them", len(self.sessions), timeout)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %r crashed", task.get_name(), exc_info=task.exception())


def run_server(config: ServerConfig, server_class: type = Server) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 2 on a configuration or start-up error."""
    # Two threads share the interpreter: the event loop (requests of every session) and the compute
    # thread, which gives the GIL up at every torch call and must get it back at once. With the
    # default 5 ms switch interval a busy loop thread holds it that long each time: ticks of many
    # sessions slowed several-fold (GIL convoy). A short interval bounds each such wait.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        code = asyncio.run(server_class(config).run())
        logger.debug("event loop closed; exiting with %d", code)
        return code
    except (ZswarmError, DHTError, WireError) as exc:  # zswarm's tree, and the two below it
        logger.error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
