"""Continuous batching in a real server process: concurrent sessions that join and leave at different
steps (different lengths, beams, left pads, deep prompts) share decode ticks, and each gets the
numbers it gets alone; a long prompt runs in chunks between other sessions' ticks; after many
sessions the cache budget and the KV pool are whole again."""
import asyncio

import pytest
import torch

from wire import ZmqTransport

COMMON = ["--new-swarm", "--block-indices", "0:6", "--throughput", 100, "--no-rebalance", "--device", "cpu",
          "--attn-cache-tokens", 2048, "--max-session-length", 256, "--prefill-chunk-tokens", 8]
HIDDEN = 64


@pytest.fixture(scope="module")
def server(tiny_model_dir, spawn_server):
    return spawn_server(tiny_model_dir, *COMMON).wait_serving()


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    """One session, its own shape: batch (beams), left pads, a deep prompt, a prompt length, a start step."""

    def __init__(self, seed, batch=1, left_pad=None, prompt=4, deep_prompt=0, hypo_ids=None, joins=0, steps=6):
        g = torch.Generator().manual_seed(seed)
        self.batch, self.left_pad, self.hypo_ids, self.joins = batch, left_pad, hypo_ids, joins
        self.inputs = [torch.randn(batch, prompt, HIDDEN, generator=g)] + \
                      [torch.randn(batch, 1, HIDDEN, generator=g) for _ in range(steps)]
        self.prompts = torch.randn(6, batch, deep_prompt, HIDDEN, generator=g) if deep_prompt else None

    def meta(self, server):
        meta = {"start": 0, "end": 6, "max_length": 64, "batch_size": self.batch, "wait_timeout": 5}
        if self.left_pad:
            meta["left_pad"] = self.left_pad
        return meta

    def alone(self, span):
        """What the span computes for this client in-process, with nobody else."""
        cache = span.new_cache(self.batch, 64, left_pad=self.left_pad)
        outs = []
        for i, x in enumerate(self.inputs):
            if i == 2 and self.hypo_ids is not None:
                cache.reorder(self.hypo_ids)
            outs.append(span.inference_step(x, cache, prompts=self.prompts))
        return outs

    async def run(self, transport, server, tick: asyncio.Event):
        for _ in range(self.joins):  # join a few ticks late
            await tick.wait()
        sid = (await transport.call(server.address, "open_session", self.meta(server), timeout=10)).meta["session_id"]
        outs, position = [], 0
        for i, x in enumerate(self.inputs):
            tensors, names = [x], ["hidden"]
            if self.prompts is not None:
                tensors.append(self.prompts)
                names.append("prompts")
            if i == 2 and self.hypo_ids is not None:
                tensors.append(torch.tensor(self.hypo_ids))
                names.append("hypo_ids")
            reply = await transport.call(server.address, "inference_step",
                                         {"session_id": sid, "position": position, "tensor_names": names},
                                         tensors, timeout=30)
            outs.append(reply.tensors[0])
            position += x.shape[1]
        await transport.call(server.address, "close_session", {"session_id": sid}, timeout=10)
        return outs


async def ticker(event: asyncio.Event, stop: asyncio.Event):
    while not stop.is_set():
        event.set()
        event.clear()
        await asyncio.sleep(0.01)


def test_concurrent_sessions_that_join_and_leave_get_their_numbers_alone_in_shared_ticks(server, tiny_span):
    clients = [Client(1), Client(2, prompt=9, joins=2), Client(3, batch=2, left_pad=[3, 0], prompt=7),
               Client(4, batch=3, hypo_ids=[2, 2, 0], joins=1), Client(5, deep_prompt=2, prompt=1, steps=8),
               Client(6, prompt=30, joins=3), Client(7, steps=3), Client(8, batch=2, prompt=2, joins=4)]
    expected = [c.alone(tiny_span) for c in clients]

    async def scenario():
        transport = ZmqTransport()
        tick, stop = asyncio.Event(), asyncio.Event()
        pacing = asyncio.ensure_future(ticker(tick, stop))
        try:
            before = (await transport.call(server.address, "info", timeout=10)).meta["load"]
            results = await asyncio.gather(*(c.run(transport, server, tick) for c in clients))
            after = (await transport.call(server.address, "info", timeout=10)).meta
        finally:
            stop.set()
            await pacing
            await transport.close()
        return results, before, after

    results, before, after = run(scenario())
    for k, (got, want) in enumerate(zip(results, expected)):
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape and (g - w).abs().max() <= 1e-4 * max(1.0, w.abs().max()), f"client {k} step {i}: {(g - w).abs().max()}"
    ticks = after["load"]["decode_ticks"] - before["decode_ticks"]
    rows = after["load"]["decode_rows"] - before["decode_rows"]
    decode_rows = sum(c.batch * (len(c.inputs) - 1) for c in clients)
    # the deep-prompt client's first decode positions are still covered by its prompt: those step alone
    assert rows <= decode_rows and ticks < rows, (ticks, rows)  # ticks carried several sessions' rows
    assert after["sessions"] == 0 and after["cache_tokens_left"] == 2048


def test_1000_sessions_later_host_memory_and_the_cache_budget_are_back_and_steps_still_match(server, tiny_span):
    import psutil

    process = psutil.Process(server.popen.pid)

    async def wave(transport, first, count=8):
        await asyncio.gather(*(Client(first + k, prompt=1 + k, steps=1).run(transport, server, asyncio.Event())
                               for k in range(count)))

    async def scenario():
        transport = ZmqTransport()
        try:
            for w in range(13):  # ~100 sessions: allocator pools and caches reach their working size
                await wave(transport, 100 + 8 * w)
            settled = process.memory_info().rss
            for w in range(112):  # 896 more, 8 at a time, closing in the order they finish
                await wave(transport, 1000 + 8 * w)
            after = process.memory_info().rss
            last = await Client(999, prompt=5).run(transport, server, asyncio.Event())
            info = (await transport.call(server.address, "info", timeout=10)).meta
        finally:
            await transport.close()
        return settled, after, last, info

    settled, after, last, info = run(scenario(), timeout=600)
    assert info["sessions"] == 0 and info["cache_tokens_left"] == 2048
    assert abs(after - settled) <= 0.01 * settled, (settled, after)  # host memory within 1%
    for g, w in zip(last, Client(999, prompt=5).alone(tiny_span)):
        assert (g - w).abs().max() <= 1e-4 * max(1.0, w.abs().max())
