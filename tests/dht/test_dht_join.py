"""Joining a swarm whose routing tables still list departed nodes: the join does not wait on
them, and they leave the joiner's routing table. Counts of RPCs, not seconds, are asserted."""

import asyncio
import time
from collections import Counter

from dht import DHTConfig, DHTNode
from dht.node import parse_address

# A timeout far longer than any join here: a join that waited on one would still finish (slowly),
# but with a timeout counted. So `timeouts == 0` after start() proves nothing waited for one.
PATIENT = DHTConfig(rpc_timeout=20.0, dead_contact_ttl=60.0, start_timeout=120.0, call_timeout=120.0)


def _on_loop(node: DHTNode, fn):
    """fn() evaluated on the node's own loop thread (its protocol state lives there)."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), node._loop).result(30)


def _address(node: DHTNode) -> tuple[str, int]:
    return parse_address(node.address)


def _asked(node: DHTNode, addresses: set) -> dict:
    """address -> requests in flight to it, for those of `addresses` that have any."""
    protocol = node._server.protocol
    return _on_loop(node, lambda: dict(Counter(a for *_, a in protocol._outstanding.values() if a in addresses)))


def _outstanding_to(node: DHTNode, addresses: set) -> int:
    return sum(_asked(node, addresses).values())


def _routing_addresses(node: DHTNode) -> set:
    protocol = node._server.protocol
    return _on_loop(node, lambda: {(n.ip, n.port) for b in protocol.router.buckets for n in b.get_nodes()})


def _settle(node: DHTNode) -> None:
    """Wait until the node has no RPC in flight (those to departed nodes end by timing out)."""
    protocol = node._server.protocol
    deadline = time.monotonic() + 30
    while _on_loop(node, lambda: len(protocol._outstanding)) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_join_through_departed_contacts_waits_for_no_rpc_timeout_nor_asks_them_twice(make_swarm):
    nodes = make_swarm(14)
    departed = nodes[2:8]
    gone = {_address(n) for n in departed}
    assert nodes[1].store("before-join", b"v", time.time() + 60)
    for node in departed:
        node.shutdown()  # the others still list them: nobody has asked them anything since
    newcomer = DHTNode(initial_peers=[nodes[0].address], config=PATIENT).start()
    try:
        protocol = newcomer._server.protocol
        assert protocol.timeouts == 0  # start() returned without waiting for a departed node
        asked = _asked(newcomer, gone)
        assert asked, "the departed nodes were never offered to the joiner: the test proves nothing"
        live = {_address(n) for n in nodes if n not in departed}
        # the join filled its table: contacts that answered are added once verified (pinged back),
        # so give it a moment, far inside the 20 s RPC timeout the departed nodes' requests wait out
        deadline = time.monotonic() + 5.0
        while len(_routing_addresses(newcomer) & live) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_routing_addresses(newcomer) & live) >= 4
        # The next lookup comes long before those requests time out; it does not repeat them.
        assert newcomer.get("before-join")[nodes[1].peer_id].value == b"v"
        assert _asked(newcomer, set(asked)) == asked
        assert protocol.timeouts == 0
    finally:
        newcomer.shutdown()


def test_any_rpc_that_times_out_drops_the_contact_from_the_routing_table(make_swarm):
    nodes = make_swarm(8)
    hub, departed = nodes[0], nodes[2:5]
    gone = {_address(n) for n in departed}
    assert gone <= _routing_addresses(hub)  # everyone joined through the hub
    for node in departed:
        node.shutdown()
    protocol = hub._server.protocol
    # raw pings: kademlia's own clean-up (in its call_* helpers) does not see these
    _on_loop(hub, lambda: [protocol.ping(a, protocol.source_node.id) for a in gone])
    _settle(hub)
    assert protocol.timeouts == len(gone)
    assert not _routing_addresses(hub) & gone
    assert len(_routing_addresses(hub)) == len(nodes) - 1 - len(departed)


def test_departed_contacts_leave_the_routing_table_and_are_not_asked_again(make_swarm):
    nodes = make_swarm(14)
    departed = nodes[2:8]
    gone = {_address(n) for n in departed}
    for node in departed:
        node.shutdown()
    newcomer = make_swarm(1, join=nodes[0].address)[0]
    protocol = newcomer._server.protocol
    _settle(newcomer)
    timed_out = protocol.timeouts
    assert timed_out >= 1  # some departed node was asked and did not answer
    assert not _routing_addresses(newcomer) & gone
    known_dead = _on_loop(newcomer, lambda: {a: t for a, t in protocol.dead.items() if a in gone})
    assert known_dead
    assert nodes[1].store("after-join", b"v", time.time() + 60)
    assert newcomer.get("after-join")[nodes[1].peer_id].value == b"v"
    assert _outstanding_to(newcomer, set(known_dead)) == 0  # known dead: not asked again
    _settle(newcomer)
    # a re-ask that timed out would have renewed its mark
    assert _on_loop(newcomer, lambda: {a: protocol.dead.get(a) for a in known_dead}) == known_dead
