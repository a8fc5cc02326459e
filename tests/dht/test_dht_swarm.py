"""A 30-node swarm in one process: multi-server keys, expiry, updates, forgery, churn."""

import asyncio
import time

from dht import DHTNode
from zswarm.records import announce_blocks, fetch_block_servers, list_models
from zswarm.swarm_info import ServerRecord
from dht.entry import sign_entry
from dht.identity import Identity
from dht.server import key_digest
from kademlia.node import Node


def _run_on(node: DHTNode, coro):
    """Run a coroutine on a node's own loop (to drive its protocol directly)."""
    return asyncio.run_coroutine_threadsafe(coro, node._loop).result(30)


def _record(node, start, end, **kw):
    return ServerRecord(peer_id=node.peer_id, address=f"tcp://127.0.0.1:{1000 + start}",
                        model_id="tiny-model", start=start, end=end, **kw)


def test_six_servers_on_one_block_are_all_seen_from_every_node(make_swarm):
    nodes = make_swarm(30)
    servers = nodes[:6]
    for i, s in enumerate(servers):
        assert announce_blocks(s, _record(s, i, 12, throughput=float(i)), ttl=60, num_blocks=24)
    want = {s.peer_id for s in servers}
    for reader in nodes:
        per_block = fetch_block_servers(reader, "tiny-model", 5, 7)
        assert [set(b) for b in per_block] == [want, want]
        assert per_block[0][servers[3].peer_id].throughput == 3.0
    assert list_models(nodes[-1]) == {"tiny-model": 24}


def test_thirty_servers_on_one_block_are_all_found_across_datagram_pages(make_swarm):
    nodes = make_swarm(30)
    pings = {f"{j:032d}": 0.001 * j for j in range(8)}  # ~400-byte entries: 30 need two datagrams
    for i, s in enumerate(nodes):
        assert announce_blocks(s, _record(s, 0, 2, next_pings=pings, public_name=f"s{i}"), ttl=60)
    for reader in (nodes[0], nodes[17]):
        for _ in range(2):  # the second lookup exchanges hashes of known entries, not entries
            per_block = fetch_block_servers(reader, "tiny-model", 0, 2)
            assert [len(b) for b in per_block] == [30, 30]
            assert per_block[1][nodes[5].peer_id].next_pings == pings


def test_expired_entry_is_gone_and_reannounce_updates_it(make_swarm):
    nodes = make_swarm(12)
    server, reader = nodes[4], nodes[9]
    assert server.store("k-short", b"first", time.time() + 1.0)
    assert server.store("k-long", b"v1", time.time() + 60)
    assert reader.get("k-short")[server.peer_id].value == b"first"
    assert server.store("k-long", b"v2", time.time() + 60)
    assert reader.get("k-long")[server.peer_id].value == b"v2"
    deadline = time.time() + 10
    while reader.get("k-short") and time.time() < deadline:
        time.sleep(0.25)
    assert reader.get("k-short") == {}
    assert reader.get("k-long")[server.peer_id].value == b"v2"


def test_forged_entries_are_refused_by_every_replica(make_swarm):
    nodes = make_swarm(10)
    honest, attacker = nodes[1], nodes[2]
    dkey = key_digest("victim")
    assert honest.store("victim", b"real", time.time() + 60)
    genuine = sign_entry(honest.identity, dkey, b"real", time.time() + 60)
    mallory = Identity.generate()
    forged = [
        genuine[:-10] + bytes(10),  # honest server's entry with a broken signature
        sign_entry(mallory, key_digest("elsewhere"), b"replayed", time.time() + 60),  # signed for another key
        sign_entry(mallory, dkey, b"forever", time.time() + 30 * 86400),  # expiry far ahead
    ]
    for target in nodes:
        if target is attacker:
            continue
        accepted = _run_on(attacker, attacker._server.protocol.push_entries(
            Node(target._server.node.id, "127.0.0.1", int(target.address.rsplit(":", 1)[1])),
            [(dkey, blob) for blob in forged]))
        assert accepted == [False, False, False]
    for reader in nodes:
        entries = reader.get("victim")
        assert set(entries) == {honest.peer_id} and entries[honest.peer_id].value == b"real"


def test_readers_reject_forged_entries_a_replica_serves(make_swarm):
    nodes = make_swarm(6)
    honest, liar, reader = nodes[1], nodes[2], nodes[3]
    dkey = key_digest("block")
    assert honest.store("block", b"real", time.time() + 60)
    # The liar bypasses its own storage checks and serves a newer "entry" under the honest key.
    genuine = sign_entry(honest.identity, dkey, b"real", time.time() + 60, signed_at=time.time() + 5)
    impostor = genuine.replace(b"real", b"evil")
    held = liar._server.storage._data.setdefault(dkey, {})
    held[honest.identity.public_key_bytes] = (time.time() + 5, time.time() + 60, impostor)
    entries = reader.get("block")
    assert entries[honest.peer_id].value == b"real"


def test_every_record_is_found_with_a_quarter_of_the_nodes_killed(make_swarm):
    nodes = make_swarm(32)
    servers, doomed, readers = nodes[:6], nodes[8:16], nodes[16:]
    for i, s in enumerate(servers):
        assert announce_blocks(s, _record(s, i * 4, i * 4 + 8), ttl=60)
    for node in doomed:
        node.shutdown()
    for reader in readers[:4]:
        per_block = fetch_block_servers(reader, "tiny-model", 0, 28)
        for block, found in enumerate(per_block):
            expected = {s.peer_id for i, s in enumerate(servers) if i * 4 <= block < i * 4 + 8}
            assert set(found) == expected, f"block {block}"


def test_async_twins_work_from_another_event_loop_and_the_nodes_own(make_swarm):
    a, b = make_swarm(2)

    async def from_foreign_loop():
        assert await a.astore("k", b"v", time.time() + 60)
        got = await b.aget_many(["k", "missing"])
        return got["k"][a.peer_id].value, got["missing"]

    assert asyncio.run(from_foreign_loop()) == (b"v", {})
    assert _run_on(b, b.aget("k"))[a.peer_id].value == b"v"


def test_entries_are_handed_to_joining_nodes_and_outlive_their_first_holders(make_swarm):
    holders = make_swarm(8)
    for i in range(20):
        assert holders[1].store(f"handover-{i}", b"v", time.time() + 60)
    newcomers = make_swarm(24, join=holders[0].address)
    time.sleep(0.5)  # let the hand-over stores (sent as nodes join) land
    for node in holders:
        node.shutdown()
    found = newcomers[3].get_many([f"handover-{i}" for i in range(20)])
    assert all(holders[1].peer_id in entries for entries in found.values())
