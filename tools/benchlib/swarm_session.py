"""GreedySession: one client of the swarm, as a user's process would be: its own connection, one
inference session on each server of the chain (chain_client.Chain), and the client parts
(embeddings, final norm, LM head) on the local device. Greedy decoding, timed per token.

A token's time runs from handing the hidden state to the first server to having the next token id
on the host (`.cpu()`: what a client that streams tokens waits for), so it needs no device-wide
synchronise and several sessions can step in one event loop. Run under torch.inference_mode()
entered outside the event loop (a context manager held across awaits would interleave between
sessions).
"""
from __future__ import annotations

import time

import torch

from wire import ZmqTransport

from .chain_client import Chain


def prompt_lengths(n: int, lo: int, hi: int) -> list:
    """n prompt lengths spread evenly over [lo, hi] (one session: lo)."""
    return [lo + (hi - lo) * i // max(1, n - 1) for i in range(n)]


def random_prompt(length: int, vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


class GreedySession:
    def __init__(self, parts, servers, device: str):
        self.parts, self.servers, self.device = parts, servers, device
        self.transport = self.chain = None
        self.hidden = None  # the next step's input, on the device
        self.tokens: list = []
        self.open_s = 0.0

    async def open(self, max_length: int) -> "GreedySession":
        began = time.perf_counter()
        self.transport = ZmqTransport()
        self.chain = await Chain(self.transport, self.servers).open(max_length)
        self.open_s = time.perf_counter() - began
        return self

    async def _token(self) -> None:
        out = await self.chain.step(self.hidden.to("cpu", torch.float16))
        logits = self.parts.head(self.parts.norm(out.to(self.device)[:, -1:]))
        next_id = logits.argmax(-1).cpu()
        self.tokens.append(int(next_id[0, 0]))
        self.hidden = self.parts.embed(next_id.to(self.device))

    async def prefill(self, prompt: torch.Tensor) -> float:
        """Send the prompt; seconds to the first generated token (embedding included)."""
        began = time.perf_counter()
        self.hidden = self.parts.embed(prompt.to(self.device))
        await self._token()
        return time.perf_counter() - began

    async def decode(self, n: int) -> list:
        """n more greedy tokens; seconds per token."""
        times = []
        for _ in range(n):
            began = time.perf_counter()
            await self._token()
            times.append(time.perf_counter() - began)
        return times

    async def close(self) -> None:
        try:
            if self.chain is not None:
                await self.chain.close()
        finally:
            if self.transport is not None:
                await self.transport.close()


class HeadlessSession(GreedySession):
    """A session whose client does no device work: each step sends a fixed random hidden state
    (on the host) and takes the reply. It measures what the servers can serve: a real client's
    embeddings and LM head run on its own machine, but a client process on the servers' GPU makes
    that GPU switch between processes and slows the servers' ticks (measured: a tick of 8 rows
    took 5 ms with 4 client processes on the GPU, 10-12 ms with 16)."""

    def __init__(self, hidden_size: int, servers, seed: int = 0):
        super().__init__(None, servers, "cpu")
        gen = torch.Generator().manual_seed(seed)
        self.step_input = torch.randn(1, 1, hidden_size, generator=gen).to(torch.float16)
        self.hidden_size, self.seed = hidden_size, seed

    async def _token(self) -> None:
        await self.chain.step(self.hidden)
        self.tokens.append(0)
        self.hidden = self.step_input

    async def prefill(self, prompt: torch.Tensor) -> float:
        began = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.hidden = torch.randn(1, prompt.shape[1], self.hidden_size, generator=gen).to(torch.float16)
        await self._token()
        return time.perf_counter() - began


async def one_session(parts, servers, device: str, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Open, prefill, decode new_tokens, close: the timings of one session."""
    session = await GreedySession(parts, servers, device).open(prompt.shape[1] + new_tokens + 1)
    try:
        prefill_s = await session.prefill(prompt)
        times = await session.decode(new_tokens)
    finally:
        await session.close()
    return {"open_s": session.open_s, "prefill_s": prefill_s, "times": times, "tokens": session.tokens}
