"""An in-process swarm for the client's unit tests: the real server RPC (`ServerRPC`, with its
sessions, cache budget and compute thread) over real model spans, mounted on a MockTransport, and
the ServerRecords a DHT would return for them. Only for testing the client's own logic (routing,
failover, replay) fast; the protocol is the server's own, so the two cannot drift apart. The proof
tests in test_swarm_*.py run real server processes."""
from __future__ import annotations

import itertools

import torch

import zswarm
from wire import MockTransport
from zswarm.client import ClientConfig
from zswarm.client.swarm import SwarmConnection
from zswarm.models import load_client_parts, load_span, resolve_model
from zswarm.server.cache_budget import CacheBudget
from zswarm.server.compute import ComputeQueue
from zswarm.server.handlers import ServerRPC, ServingState
from zswarm.server.sessions import ServerSessions
from zswarm.swarm_info import ServerRecord, ServerState

_ids = itertools.count(1)

CACHE_TOKENS = 4096  # each server's KV budget, and what its record announces free at the start


class SpanServer:
    """One server over blocks [start, end) of a real model: ServerRPC's handlers, in this process."""

    def __init__(self, source, start: int, end: int, *, peer_id: str | None = None, inference_rps: float = 100.0,
                 adapters: tuple[str, ...] = (), dtype: torch.dtype = torch.float32):
        """`adapters`: the names it serves (no LoRA weights behind them: the base model runs);
        `dtype`: what its blocks compute in."""
        self.span = load_span(source, start, end, dtype=dtype)
        self.span.attach_pool(CACHE_TOKENS)  # as a server does: one KV pool of the budget's size
        self.start, self.end = start, end
        self.peer_id = peer_id or f"peer-{next(_ids)}-{start}-{end}"
        self.address = f"tcp://mock-{self.peer_id}:1"
        self.model_id = source.model_id
        self.compute = ComputeQueue(name=f"compute-{self.peer_id}")
        self.sessions = ServerSessions(CacheBudget(CACHE_TOKENS), idle_timeout=300.0)
        self.state = ServingState(
            model_id=source.model_id, num_blocks=source.num_blocks, hidden_size=int(source.config.hidden_size),
            dtype=str(dtype).replace("torch.", ""), quant="none", peer_id=self.peer_id, version=zswarm.__version__, start=start, end=end,
            span=self.span, throughput=100.0, inference_rps=inference_rps, forward_rps=1000.0,
            adapters=tuple(adapters))
        self.rpc = ServerRPC(self.state, self.sessions, self.compute)
        self.steps = 0  # inference_step calls served

    def record(self) -> ServerRecord:
        s = self.state
        return ServerRecord(peer_id=s.peer_id, address=self.address, model_id=s.model_id, start=s.start, end=s.end,
                            state=ServerState.ONLINE, throughput=s.throughput, inference_rps=s.inference_rps,
                            forward_rps=s.forward_rps, dtype=s.dtype, cache_tokens_left=self.sessions.budget.free,
                            adapters=tuple(s.adapters))

    def handlers(self) -> dict:
        handlers = self.rpc.handlers()
        step = handlers["inference_step"]

        async def inference_step(request):
            reply = await step(request)
            self.steps += 1
            return reply

        return {**handlers, "inference_step": inference_step}

    def close(self) -> None:
        self.sessions.close_all("was ended: the test is over")
        self.compute.close()


class InProcessSwarm:
    """Fake servers on a MockTransport; `kill(server)` makes it vanish (calls time out)."""

    def __init__(self, source):
        self.source = source
        self.transport = MockTransport()
        self.servers: list[SpanServer] = []
        self.killed: set[str] = set()

    def add(self, start: int, end: int, **kwargs) -> SpanServer:
        server = SpanServer(self.source, start, end, **kwargs)
        self.servers.append(server)
        self.transport.add_server(server.address, server.handlers())
        return server

    def kill(self, server: SpanServer) -> None:
        self.transport.remove_server(server.address)
        self.killed.add(server.peer_id)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def fetch_records(self):
        """What the DHT would say: killed servers stay listed (their records have not expired)."""
        blocks = [{} for _ in range(self.source.num_blocks)]
        for server in self.servers:
            for block in range(server.start, server.end):
                blocks[block][server.peer_id] = server.record()
        return blocks

    def connect(self, **config) -> SwarmConnection:
        config = ClientConfig(**{"wire_dtype": "float32", "max_retries": 3, "retry_backoff_s": 0.01,
                                 "ping_timeout": 1.0, **config})
        return SwarmConnection(config, model_id=self.source.model_id, num_blocks=self.source.num_blocks,
                               transport=self.transport, fetch_records=self.fetch_records)


def client_model(source, swarm: SwarmConnection):
    from zswarm import AutoDistributedModelForCausalLM

    parts = load_client_parts(source, dtype=torch.float32)
    return AutoDistributedModelForCausalLM.from_parts(source, parts, swarm, swarm.config)


def load_source(path):
    return resolve_model(str(path))
