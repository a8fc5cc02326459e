"""An in-process swarm for the client's unit tests: MockTransport handlers that speak the RPC
protocol of docs/architecture.md over real model spans (`load_span`), and the ServerRecords a
DHT would return for them. Only for testing the client's own logic (routing, failover, replay)
fast; the proof tests in test_swarm_*.py run real server processes."""
from __future__ import annotations

import itertools

import torch

from zswarm.swarm_info import ServerRecord, ServerState
from wire import MockTransport
from zswarm.client import ClientConfig
from zswarm.client.swarm import SwarmConnection
from zswarm.errors import BadPositionError, UnknownSessionError
from zswarm.models import load_client_parts, load_span, resolve_model

_ids = itertools.count(1)


class SpanServer:
    """One fake server over blocks [start, end) of a real model."""

    def __init__(self, source, start: int, end: int, *, peer_id: str | None = None, inference_rps: float = 100.0):
        self.span = load_span(source, start, end, dtype=torch.float32)
        self.start, self.end = start, end
        self.peer_id = peer_id or f"peer-{next(_ids)}-{start}-{end}"
        self.address = f"tcp://mock-{self.peer_id}:1"
        self.model_id = source.model_id
        self.inference_rps = inference_rps
        self.sessions: dict[str, tuple] = {}
        self.steps = 0           # inference_step calls served
        self.fail_after: int | None = None   # die (stop answering) after this many steps

    def record(self) -> ServerRecord:
        return ServerRecord(peer_id=self.peer_id, address=self.address, model_id=self.model_id, start=self.start,
                            end=self.end, state=ServerState.ONLINE, throughput=100.0,
                            inference_rps=self.inference_rps, forward_rps=1000.0, dtype="float32",
                            cache_tokens_left=10_000)

    def handlers(self) -> dict:
        return {"ping": self.ping, "open_session": self.open_session, "inference_step": self.inference_step,
                "close_session": self.close_session, "forward": self.forward, "backward": self.backward}

    async def ping(self, request):
        return {}, []

    async def open_session(self, request):
        meta = request.meta
        sub = self.span.sub(meta["start"], meta["end"])
        session_id = f"s{next(_ids)}"
        self.sessions[session_id] = (sub, sub.new_cache(meta["batch_size"]))
        return {"session_id": session_id}, []

    async def inference_step(self, request):
        meta = request.meta
        if meta["session_id"] not in self.sessions:
            raise UnknownSessionError("no such session")
        sub, cache = self.sessions[meta["session_id"]]
        named = dict(zip(meta.get("tensor_names", ["hidden"]), request.tensors))
        position = meta["position"]
        if position > cache.length:
            raise BadPositionError(f"position {position} skips past {cache.length}")
        cache.rollback(position)
        if "hypo_ids" in named:
            cache.reorder(named["hypo_ids"])
        hidden = named["hidden"]
        self.steps += 1
        return {}, [sub.inference_step(hidden, cache).to(hidden.dtype)]

    async def close_session(self, request):
        self.sessions.pop(request.meta["session_id"], None)
        return {}, []

    async def forward(self, request):
        hidden = request.tensors[0]
        sub = self.span.sub(request.meta["start"], request.meta["end"])
        return {}, [sub.forward(hidden).to(hidden.dtype)]

    async def backward(self, request):
        hidden, grad = request.tensors[:2]
        sub = self.span.sub(request.meta["start"], request.meta["end"])
        grad_hidden, _ = sub.backward(hidden, grad)
        return {}, [grad_hidden.to(hidden.dtype)]


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
