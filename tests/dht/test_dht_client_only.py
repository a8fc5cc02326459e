"""Client-only DHT nodes (clients, zswarm-inspect) read and store through the DHT but enter no
routing table: after clients and inspect runs have come and gone, a new server's join asks no
departed node, so no RPC of it times out.
The same scenario with full-node clients is the control: there the join does hit timeouts."""

import logging
import time

import pytest

from dht import BootstrapError, DHTConfig, DHTNode
from dht.node import parse_address
from zswarm.inspect.fetch import Inspector

from test_dht_join import _on_loop, _routing_addresses, _settle

FAST = DHTConfig(rpc_timeout=0.3, dead_contact_ttl=30.0, start_timeout=20.0, call_timeout=30.0)
CLIENT = DHTConfig(rpc_timeout=0.3, dead_contact_ttl=30.0, start_timeout=20.0, call_timeout=30.0, client_only=True)


def _joined(peer: str) -> tuple[DHTNode, int, int, list]:
    """A full node joined through `peer`, once all its RPCs have ended: (node, RPCs sent, RPCs
    timed out, the addresses they went to)."""
    node = DHTNode(initial_peers=[peer], config=FAST).start()
    _settle(node)
    protocol = node._server.protocol
    return (node, _on_loop(node, lambda: protocol.sent), _on_loop(node, lambda: protocol.timeouts),
            _on_loop(node, lambda: list(protocol.recent_destinations)))


def _come_and_go(peer: str, config: DHTConfig, i: int) -> tuple[str, str]:
    """One client: joins, stores a key, reads it back, leaves. Returns (its address, the key)."""
    with DHTNode(initial_peers=[peer], config=config) as client:
        key = f"client-{i}-{config.client_only}"
        assert client.store(key, b"from a client", time.time() + 60)
        assert [e.value for e in client.get(key).values()] == [b"from a client"]
        return client.address, key


@pytest.mark.parametrize("client_only", [True, False], ids=["client-only", "full-node-control"])
def test_clients_and_inspect_runs_that_left_cost_a_new_servers_join_no_timeouts(make_swarm, caplog, client_only):
    servers = make_swarm(3, config=FAST)
    boot = servers[0].address
    first, first_sent, first_timeouts, _ = _joined(boot)
    servers.append(first)
    assert first_timeouts == 0

    config = CLIENT if client_only else FAST
    left, keys = set(), []
    for i in range(5):
        address, key = _come_and_go(boot, config, i)
        left.add(parse_address(address))
        keys.append(key)
        # an inspect run, as zswarm-inspect makes it (its own DHT config, client-only by default)
        with Inspector([boot], ping_servers=False, dht_rpc_timeout=0.3) as inspector:
            if not client_only:
                inspector.dht_config = FAST
            inspector.swarm()
            left.add(parse_address(inspector.node.address))
    # what clients stored stays readable by the servers
    for key in keys:
        assert [e.value for e in servers[1].get(key).values()] == [b"from a client"]
    remembered = set().union(*(_routing_addresses(s) for s in servers)) & left

    caplog.clear()
    with caplog.at_level(logging.INFO):
        newcomer, sent, timeouts, destinations = _joined(boot)
    try:
        no_response = [r for r in caplog.records if "no response" in r.getMessage() or "no reply" in r.getMessage()]
        if client_only:
            assert remembered == set()  # no routing table lists a client or an inspect run
            # RPC counts: none of the join's RPCs went to a departed client or inspect run, and
            # every one was answered (how many it sends to the live nodes varies with the order
            # their answers arrive in: 4 to 9 seen for 4 live nodes, first join 4 to 5)
            assert first_sent <= len(destinations) == sent <= 2 * (first_sent + 1)
            assert not set(destinations) & left and timeouts == 0 and no_response == []
        else:  # the control: full-node clients stay in routing tables and the join waits on them
            assert remembered and timeouts > 0 and no_response and set(destinations) & left
    finally:
        newcomer.shutdown()


def test_a_client_only_node_answers_no_requests_and_cannot_start_a_swarm(make_swarm):
    (server,) = make_swarm(1, config=FAST)
    with pytest.raises(BootstrapError, match="client-only"):
        DHTNode(config=CLIENT).start()
    with DHTNode(initial_peers=[server.address], config=CLIENT) as client:
        host, port = parse_address(client.address)
        protocol = server._server.protocol

        async def ping_client():
            return await protocol.ping((host, port), protocol.source_node.id)

        import asyncio

        ok, _ = asyncio.run_coroutine_threadsafe(ping_client(), server._loop).result(10)
        assert ok is False  # it stayed silent: no one can use it as a node
        assert (host, port) not in _routing_addresses(server)
