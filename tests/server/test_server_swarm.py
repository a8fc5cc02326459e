"""Real server processes on loopback: joining without gaps, serving a chain, full cache, SIGTERM."""
import asyncio
import time

import pytest
import torch

from zswarm.records import fetch_block_servers
from zswarm.swarm_info import ServerState
from wire import ZmqTransport
from zswarm.errors import BadPositionError, BlocksNotServedError, CacheFullError

NUM_BLOCKS = 6  # conftest's tiny model
COMMON = ["--num-blocks", 2, "--throughput", 100, "--no-rebalance", "--device", "cpu", "--attn-cache-tokens", 512,
          "--max-session-length", 256, "--update-period", 2, "--drain-timeout", 2]


@pytest.fixture(scope="module")
def swarm(tiny_model_dir, tiny_model_id, spawn_server, dht_client, tmp_path_factory):
    """Three servers started one after another, each choosing its 2 blocks from what it sees."""
    key = tmp_path_factory.mktemp("identity") / "server.key"
    first = spawn_server(tiny_model_dir, "--new-swarm", "--identity", key, *COMMON).wait_serving()
    first.identity_path = key
    servers = [first]
    for _ in range(2):
        servers.append(spawn_server(tiny_model_dir, "--initial-peers", first.dht_address, *COMMON).wait_serving())
    return servers, dht_client(first.dht_address), tiny_model_id


def online_ranges(node, model_id, peer_ids=None):
    found = set()
    for per_block in fetch_block_servers(node, model_id, 0, NUM_BLOCKS):
        for peer_id, record in per_block.items():
            if record.state == ServerState.ONLINE and (peer_ids is None or peer_id in peer_ids):
                found.add((peer_id, record.start, record.end))
    return found


def test_three_servers_joining_one_after_another_cover_the_model_without_gaps(swarm):
    servers, node, model_id = swarm
    ranges = sorted((s.start, s.end) for s in servers)
    assert ranges == [(0, 2), (2, 4), (4, 6)], ranges
    announced = online_ranges(node, model_id)
    assert {(s.peer_id, s.start, s.end) for s in servers} <= announced


def test_records_carry_measured_pings_to_the_servers_of_the_next_block(swarm):
    servers, node, model_id = swarm
    by_start = {s.start: s for s in servers}
    first, second = by_start[0], by_start[2]
    deadline = time.monotonic() + 20  # re-announced every update period (2 s here)
    while time.monotonic() < deadline:
        record = fetch_block_servers(node, model_id, 0, 1)[0].get(first.peer_id)
        if record is not None and second.peer_id in record.next_pings:
            break
        time.sleep(0.2)
    assert second.peer_id in record.next_pings, record
    assert 0 < record.next_pings[second.peer_id] < 2.0
    assert record.cache_tokens_left == 512 and record.throughput == 100


def test_identity_file_gives_the_server_its_peer_id(swarm):
    from dht import Identity

    first = swarm[0][0]
    assert Identity.load_or_create(first.identity_path).peer_id == first.peer_id


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def generate(transport, chain, inputs, positions=None):
    """One client's session through the chain of servers: prefill, then one token per step."""
    sessions = []
    for server in chain:
        reply = await transport.call(server.address, "open_session", {
            "start": server.start, "end": server.end, "max_length": 32, "batch_size": 1, "wait_timeout": 5}, timeout=10)
        sessions.append(reply.meta["session_id"])
    outputs, position = [], 0
    for x in inputs:
        new_tokens = x.shape[1]
        for server, sid in zip(chain, sessions):
            x = (await transport.call(server.address, "inference_step", {"session_id": sid, "position": position},
                                      [x], timeout=10)).tensors[0]
        outputs.append(x)
        position += new_tokens
        await asyncio.sleep(0)  # let the other client's step in between ours
    for server, sid in zip(chain, sessions):
        await transport.call(server.address, "close_session", {"session_id": sid}, timeout=10)
    return outputs


def client_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 4, 64, generator=g)] + [torch.randn(1, 1, 64, generator=g) for _ in range(5)]


def test_two_clients_interleaved_get_the_same_outputs_as_each_alone(swarm, tiny_span):
    servers = swarm[0]
    chain = sorted(servers, key=lambda s: s.start)
    a_in, b_in = client_inputs(1), client_inputs(2)

    async def alone(inputs):
        transport = ZmqTransport()
        try:
            return await generate(transport, chain, inputs)
        finally:
            await transport.close()

    async def together():
        return await asyncio.gather(alone(a_in), alone(b_in))

    a_alone, b_alone = run(alone(a_in)), run(alone(b_in))
    a_mixed, b_mixed = run(together())
    for mixed, single in zip(a_mixed + b_mixed, a_alone + b_alone):
        # together, their decode steps share batched ticks: equal up to fp32 summation order
        assert (mixed - single).abs().max() <= 1e-4 * max(1.0, single.abs().max())
    cache = tiny_span.new_cache(1)  # and the swarm computes what the whole model computes
    for x, out in zip(a_in, a_alone):
        torch.testing.assert_close(out, tiny_span.inference_step(x, cache), rtol=1e-4, atol=1e-5)


def test_full_cache_waits_then_fails_clearly_and_succeeds_after_a_close(swarm):
    server = swarm[0][0]
    meta = {"start": server.start, "end": server.end, "batch_size": 1}

    async def scenario():
        transport = ZmqTransport()
        try:
            call = transport.call
            hogs = [(await call(server.address, "open_session", {**meta, "max_length": 256}, timeout=10)).meta["session_id"]
                    for _ in range(2)]
            with pytest.raises(CacheFullError, match=r"cache full: 2 sessions hold 512 of 512 tokens \(512 of them yours\); "
                                                     r"16 asked, 0 free after waiting 0\.[3-9]"):
                await call(server.address, "open_session", {**meta, "max_length": 8, "wait_timeout": 0.3}, timeout=10)
            waiting = asyncio.ensure_future(
                call(server.address, "open_session", {**meta, "max_length": 8, "wait_timeout": 20}, timeout=30))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await call(server.address, "close_session", {"session_id": hogs[0]}, timeout=10)
            late = (await waiting).meta["session_id"]
            for sid in (late, hogs[1]):
                await call(server.address, "close_session", {"session_id": sid}, timeout=10)
            info = (await call(server.address, "info", timeout=10)).meta
            assert info["cache_tokens_left"] == 512 and info["sessions"] == 0
        finally:
            await transport.close()
    run(scenario())


def test_typed_errors_cross_the_process_boundary(swarm):
    server = swarm[0][0]

    async def scenario():
        transport = ZmqTransport()
        try:
            other = (server.end, server.end + 1)
            with pytest.raises(BlocksNotServedError, match=f"{other[0]}:{other[1]} asked"):
                await transport.call(server.address, "forward", {"start": other[0], "end": other[1]},
                                     [torch.zeros(1, 1, 64)], timeout=10)
            sid = (await transport.call(server.address, "open_session",
                                        {"start": server.start, "end": server.end, "max_length": 8}, timeout=10)).meta["session_id"]
            with pytest.raises(BadPositionError):
                await transport.call(server.address, "inference_step", {"session_id": sid, "position": 1},
                                     [torch.zeros(1, 1, 64)], timeout=10)
            await transport.call(server.address, "close_session", {"session_id": sid}, timeout=10)
        finally:
            await transport.close()
    run(scenario())


def test_after_sigterm_the_server_exits_cleanly_and_no_record_of_it_is_online(swarm):
    servers, node, model_id = swarm
    leaving = servers[-1]
    assert (leaving.peer_id, leaving.start, leaving.end) in online_ranges(node, model_id)
    assert leaving.terminate() == 0
    assert "as OFFLINE" in leaving.log_text()
    assert online_ranges(node, model_id, {leaving.peer_id}) == set()
