"""What a server announces when bound to every interface, and what it says when it cannot bind.

Servers run in-process here (a real RpcServer and DHT node on loopback, no child process): the
code paths are the CLI's, and a test costs no interpreter start.
"""
import asyncio
import socket

import pytest

from dht import DHTNode
from zswarm.records import afetch_block_servers
from zswarm.swarm_info import ServerState
from wire import ZmqTransport
from zswarm.server.addresses import announced_host
from zswarm.server.config import ConfigError, ServerConfig
from zswarm.server.server import Server, run_server

IN_PROCESS = dict(block_indices=(0, 6), throughput=100.0, device="cpu", attn_cache_tokens=256, update_period=5,
                  drain_timeout=1)


def test_the_announced_host_is_public_host_then_host_then_the_route_to_the_swarm():
    assert announced_host("0.0.0.0", "203.0.113.7", ["10.0.0.1:31337"]) == "203.0.113.7"
    assert announced_host("192.168.1.5", None, ["10.0.0.1:31337"]) == "192.168.1.5"
    assert announced_host("0.0.0.0", None, ["127.0.0.1:31337"]) == "127.0.0.1"  # a real routing-table lookup
    routes = {("10.0.0.1", 31337): "10.0.0.42", ("10.255.255.255", 1): "192.168.1.5"}
    route = lambda host, port: routes.get((host, port))  # noqa: E731
    assert announced_host("0.0.0.0", None, ["10.0.0.1:31337"], route=route) == "10.0.0.42"
    assert announced_host("0.0.0.0", None, [], route=route) == "192.168.1.5"  # a new swarm: the default route
    with pytest.raises(ConfigError, match="give --public-host ADDRESS"):
        announced_host("0.0.0.0", None, [], route=lambda host, port: None)
    with pytest.raises(ConfigError, match="give --public-host"):  # loopback cannot reach a peer elsewhere
        announced_host("0.0.0.0", None, ["10.0.0.1:31337"], route=lambda host, port: "127.0.0.1")


def test_a_server_on_every_interface_announces_an_address_others_can_reach(tiny_model_dir, tiny_model_id, wait_until):
    async def main():
        loop = asyncio.get_running_loop()
        swarm = DHTNode()  # a swarm on loopback to join
        await loop.run_in_executor(None, swarm.start)
        server = Server(ServerConfig(model=tiny_model_dir, host="0.0.0.0", initial_peers=(swarm.address,),
                                     **IN_PROCESS))
        running = asyncio.ensure_future(server.run())
        try:
            await wait_until(lambda: server.announcer is not None and server.announcer.state == ServerState.ONLINE)
            assert server.address.startswith("tcp://127.0.0.1:"), server.address
            (servers,) = await afetch_block_servers(swarm, tiny_model_id, 0, 1)
            record = servers[server.node.peer_id]
            assert record.address == server.address
            transport = ZmqTransport()
            try:
                assert (await transport.call(record.endpoint, "ping", {}, timeout=10)).meta == {}
            finally:
                await transport.close()
        finally:
            server.request_stop()
            assert await asyncio.wait_for(running, 30) == 0
            await loop.run_in_executor(None, swarm.shutdown)
    asyncio.run(main())


@pytest.mark.parametrize("flag, what", [("port", "RPC port (TCP)"), ("dht_port", "DHT port (UDP)")])
def test_a_port_in_use_stops_the_server_with_one_line(tiny_model_dir, caplog, flag, what):
    kind = socket.SOCK_STREAM if flag == "port" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig(model=tiny_model_dir, new_swarm=True, **{flag: port}, **IN_PROCESS)
        assert run_server(config) == 2  # an exception escaping would fail the test here (the CLI's traceback)
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage() == (f"cannot start: {what} 127.0.0.1:{port} is already in use (Address already in use); "
                                  f"stop what holds it or choose another --{flag.replace('_', '-')}")
    assert error.exc_info is None
    assert not _started_slow_work(caplog)  # found before the model was read or the DHT joined


def _started_slow_work(caplog) -> list[str]:
    """Log lines that mean the server went past its checks: joined the DHT, prepared the model."""
    return [r.getMessage() for r in caplog.records if "DHT node" in r.getMessage() or r.name.startswith("zswarm.models")]


@pytest.mark.parametrize("settings, message", [
    (dict(block_indices=(2, 40)), "--block-indices 2:40, but {model} has 6 blocks (0:6)"),
    (dict(block_indices=None), "on a CPU, give --num-blocks N or --block-indices A:B"),
])
def test_settings_the_model_or_device_refuse_stop_the_start_before_the_dht_is_joined(
        tiny_model_dir, tiny_model_id, caplog, settings, message):
    config = ServerConfig(model=tiny_model_dir, new_swarm=True, **dict(IN_PROCESS, **settings))
    assert run_server(config) == 2
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert message.format(model=tiny_model_id) in error.getMessage()
    assert not _started_slow_work(caplog)


def test_too_many_blocks_is_clamped_with_a_warning_before_joining(tiny_model_dir, tiny_model_id, caplog):
    async def main():
        config = ServerConfig(model=tiny_model_dir, new_swarm=True,
                              **dict(IN_PROCESS, block_indices=None, num_blocks=40, rebalance=False))
        server = Server(config)
        running = asyncio.get_running_loop().create_task(server.run())
        try:
            for _ in range(600):
                if server.state is not None and server.state.span is not None:
                    break
                assert not running.done(), running
                await asyncio.sleep(0.05)
            assert (server.state.start, server.state.end) == (0, 6)
        finally:
            server.request_stop()
            assert await asyncio.wait_for(running, 30) == 0

    with caplog.at_level("INFO"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    warned = lines.index(f"--num-blocks 40, but {tiny_model_id} has 6 blocks: hosting all 6")
    joined = next(i for i, line in enumerate(lines) if "DHT node" in line)
    assert warned < joined
