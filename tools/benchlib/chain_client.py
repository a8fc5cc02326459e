"""A minimal client on wire's transport: the server protocol with nothing of zswarm.client
around it, so a benchmark measures the servers, not the client's routing."""
from __future__ import annotations

from typing import NamedTuple

import torch

from wire import ZmqTransport


class Hop(NamedTuple):
    """Where one server of a chain listens and which blocks it serves: all a client process needs
    (picklable, unlike a ServerProcess)."""

    address: str
    start: int
    end: int


def hops(servers) -> list:
    return [Hop(s.address, s.start, s.end) for s in servers]


class Chain:
    """One inference session on each server of a chain, stepped in order (the protocol, bare)."""

    def __init__(self, transport, servers):
        self.transport, self.servers, self.sessions, self.position = transport, servers, [], 0

    async def open(self, max_length: int, batch_size: int = 1) -> "Chain":
        for s in self.servers:
            reply = await self.transport.call(s.address, "open_session", {
                "start": s.start, "end": s.end, "max_length": max_length, "batch_size": batch_size,
                "wait_timeout": 30}, timeout=60)
            self.sessions.append(reply.meta["session_id"])
        return self

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        for s, sid in zip(self.servers, self.sessions):
            hidden = (await self.transport.call(s.address, "inference_step", {
                "session_id": sid, "position": self.position}, [hidden], timeout=120)).tensors[0]
        self.position += hidden.shape[1]
        return hidden

    async def close(self) -> None:
        for s, sid in zip(self.servers, self.sessions):
            await self.transport.call(s.address, "close_session", {"session_id": sid}, timeout=30)


async def server_info(server) -> dict:
    transport = ZmqTransport()
    try:
        return (await transport.call(server.address, "info", timeout=30)).meta
    finally:
        await transport.close()
