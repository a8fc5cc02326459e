"""`/metrics`: a server's state in Prometheus' text format, for `--metrics-port` (off by default).

What `info` counts is read at scrape time from where it lives (sessions, the cache budget, the
compute queue, the decode batcher, ServingState.stats); what nothing counted before -- how long
each RPC takes and which ones fail, with which error code -- is measured by wrapping the RPC
handlers (`instrument`). prometheus_client writes the text format and serves it from its own
thread, so a scrape never waits on the event loop that answers clients.

    zswarm_sessions                        open inference sessions
    zswarm_cache_tokens{kind=used|left|capacity}   the KV-cache budget, in tokens
    zswarm_cache_waiters                   sessions waiting for cache room
    zswarm_compute_queue_depth             compute jobs queued or running
    zswarm_compute_busy_seconds_total      time the compute thread spent computing
    zswarm_steps_total{kind=inference|forward|backward}   steps served
    zswarm_decode_ticks_total, zswarm_decode_rows_total   batched decode ticks, and rows in them
    zswarm_rpc_seconds{method}             histogram of handler time per RPC method
    zswarm_rpc_errors_total{method,code}   error replies, by the protocol's error code
    zswarm_server_info{model_id,blocks,dtype,quant,version,peer_id}   1
"""
from __future__ import annotations

import functools
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zswarm.blocks import format_blocks

logger = logging.getLogger(__name__)

# Decode steps on a GPU take milliseconds, prefills and CPU steps up to seconds.
RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self, rpc):
        """`rpc`: the server's ServerRPC (its state, sessions, compute queue and batcher are read)."""
        self.rpc = rpc
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_seconds = Histogram("zswarm_rpc_seconds", "Handler time of one RPC, by method", ["method"],
                                     buckets=RPC_SECONDS_BUCKETS, registry=self.registry)
        self.rpc_errors = Counter("zswarm_rpc_errors", "Error replies, by method and error code",
                                  ["method", "code"], registry=self.registry)
        self.registry.register(_StateCollector(rpc))
        self._http = None

    def instrument(self, handlers: dict) -> dict:
        """The same handlers, each timed and its errors counted."""
        return {method: self._timed(method, handler) for method, handler in handlers.items()}

    def _timed(self, method: str, handler):
        seconds = self.rpc_seconds.labels(method)

        @functools.wraps(handler)
        async def timed(request):
            began = time.perf_counter()
            try:
                return await handler(request)
            except Exception as exc:
                self.rpc_errors.labels(method, getattr(exc, "code", None) or type(exc).__name__).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - began)
        return timed

    def serve(self, host: str, port: int) -> int:
        """Serve GET /metrics on host:port (0: a free port) from a thread; returns the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_address[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _StateCollector:
    """What the server already counts, read when Prometheus scrapes."""

    def __init__(self, rpc):
        self.rpc = rpc

    def describe(self):
        return []  # the families are known only at collect time; nothing to check at registration

    def collect(self):
        state, sessions, compute, batcher = self.rpc.state, self.rpc.sessions, self.rpc.compute, self.rpc.batcher
        budget = sessions.budget
        yield _gauge("zswarm_sessions", "Open inference sessions", len(sessions))
        cache = GaugeMetricFamily("zswarm_cache_tokens", "KV-cache budget in tokens", labels=["kind"])
        for kind, value in (("used", budget.capacity - budget.free), ("left", budget.free),
                            ("capacity", budget.capacity)):
            cache.add_metric([kind], value)
        yield cache
        yield _gauge("zswarm_cache_waiters", "Sessions waiting for cache room", budget.waiting)
        yield _gauge("zswarm_compute_queue_depth", "Compute jobs queued or running", compute.inflight)
        yield CounterMetricFamily("zswarm_compute_busy_seconds", "Seconds the compute thread computed",
                                  value=compute.busy_seconds)
        steps = CounterMetricFamily("zswarm_steps", "Steps served, by kind", labels=["kind"])
        for key, kind in (("inference_steps", "inference"), ("forward", "forward"), ("backward", "backward")):
            steps.add_metric([kind], state.stats.get(key, 0))
        yield steps
        yield CounterMetricFamily("zswarm_decode_ticks", "Batched decode ticks", value=batcher.ticks)
        yield CounterMetricFamily("zswarm_decode_rows", "Rows decoded in batched ticks", value=batcher.rows)
        info = GaugeMetricFamily("zswarm_server_info", "What this server serves (always 1)",
                                 labels=["model_id", "blocks", "dtype", "quant", "version", "peer_id"])
        info.add_metric([state.model_id, format_blocks(state.start, state.end), state.dtype, state.quant,
                         state.version, state.peer_id], 1)
        yield info


def _gauge(name: str, documentation: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
