"""The Server object in-process: start, serve, stop (also while still starting), record states."""
import asyncio

import pytest
import torch

from dht import DHTNode
from zswarm.records import afetch_block_servers
from zswarm.swarm_info import ServerState
from wire import ZmqTransport
from zswarm.server import ConfigError, Server, ServerConfig


def config_for(model_dir, **kw):
    return ServerConfig(model=model_dir, new_swarm=True, block_indices=(0, 6), throughput=100.0, device="cpu",
                        update_period=5, **kw)


def test_server_serves_then_stops_with_exit_code_0_and_an_offline_record(tiny_model_dir, tiny_model_id, tiny_span,
                                                                         wait_until):
    async def main():
        server = Server(config_for(tiny_model_dir))
        running = asyncio.ensure_future(server.run())
        await wait_until(lambda: server.state is not None and server.state.span is not None and server.announcer
                         and server.announcer.state == ServerState.ONLINE)
        transport = ZmqTransport()
        x = torch.randn(1, 3, 64)
        out = (await transport.call(server.endpoint, "forward", {}, [x], timeout=10)).tensors[0]
        torch.testing.assert_close(out, tiny_span.forward(x), rtol=1e-5, atol=1e-5)
        await transport.close()
        watcher = DHTNode(initial_peers=[server.node.address])
        await asyncio.get_running_loop().run_in_executor(None, watcher.start)
        try:
            (servers,) = await afetch_block_servers(watcher, tiny_model_id, 0, 1)
            assert servers[server.node.peer_id].state == ServerState.ONLINE
            server.request_stop()
            assert await asyncio.wait_for(running, 30) == 0
            (servers,) = await afetch_block_servers(watcher, tiny_model_id, 0, 1)
            assert servers.get(server.node.peer_id) is None or servers[server.node.peer_id].state == ServerState.OFFLINE
        finally:
            await asyncio.get_running_loop().run_in_executor(None, watcher.shutdown)
    asyncio.run(main())


def test_a_stop_while_starting_ends_the_run_cleanly(tiny_model_dir):
    async def main():
        server = Server(config_for(tiny_model_dir))
        running = asyncio.ensure_future(server.run())
        await asyncio.sleep(0)  # start-up has begun
        server.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    asyncio.run(main())


def test_start_without_a_swarm_to_join_or_start_says_which_flag_to_give(tiny_model_dir):
    async def main():
        server = Server(ServerConfig(model=tiny_model_dir, block_indices=(0, 6)))
        with pytest.raises(ConfigError, match="--initial-peers HOST:PORT to join a swarm, or --new-swarm"):
            await server.run()
    asyncio.run(main())
