"""ServerRecord schema (zswarm.swarm_info), the records helpers' checks (zswarm.records), and the
public surface of dht/ (signed entries only: the records are zswarm's)."""

import asyncio
import subprocess
import sys
import time

import msgpack
import pytest

import dht
from dht import AddressError, BootstrapError, DHTConfig, DHTNode
from zswarm.errors import RecordError
from zswarm.records import announce_blocks, block_key, fetch_block_servers
from zswarm.swarm_info import ServerRecord, ServerState


def test_public_api_is_pinned():
    assert sorted(dht.__all__) == sorted([
        "DHTNode", "DHTConfig", "Identity", "Entry",
        "DHTError", "IdentityError", "InvalidEntry", "ExpiredEntry", "BadRequest",
        "BootstrapError", "AddressError",
    ])
    assert all(hasattr(dht, name) for name in dht.__all__)


def _full_record():
    return ServerRecord(
        peer_id="p" * 32, address="tcp://10.0.0.1:5000", model_id="org/model", start=3, end=9,
        state=ServerState.JOINING, throughput=12.5, inference_rps=30.0, forward_rps=900.0,
        dtype="bfloat16", quant="nf4", cache_tokens_left=8192, adapters=("a", "b"),
        version="0.1.0", public_name="alice", next_pings={"q" * 32: 0.012, "r" * 32: 0.3},
    )


def test_record_round_trips_and_keeps_unknown_fields():
    record = _full_record()
    assert ServerRecord.from_bytes(record.to_bytes()) == record
    grown = msgpack.unpackb(record.to_bytes())
    grown["gpu"] = "H100"
    parsed = ServerRecord.from_bytes(msgpack.packb(grown))
    assert parsed.extra == {"gpu": "H100"}
    assert msgpack.unpackb(parsed.to_bytes())["gpu"] == "H100"
    assert len(record.to_bytes()) < 300  # 30 such records fit one 8 KiB datagram


@pytest.mark.parametrize("change", [
    {"v": 2}, {"v": None}, {"s": -1}, {"e": 3}, {"st": 7}, {"tp": float("nan")},
    {"p": 5}, {"np": {"x": -1.0}}, {"ad": "not-a-list"}, {"a": "x" * 1000},
])
def test_record_of_wrong_schema_or_version_is_rejected(change):
    raw = msgpack.unpackb(_full_record().to_bytes())
    raw.update(change)
    with pytest.raises(RecordError):
        ServerRecord.from_bytes(msgpack.packb(raw))
    with pytest.raises(RecordError):
        ServerRecord.from_bytes(b"\xc1junk")


def test_reader_drops_records_that_claim_another_peer_or_block(make_swarm):
    a, b, reader = make_swarm(3)
    impersonation = ServerRecord(peer_id=b.peer_id, address="tcp://evil:1", model_id="m", start=0, end=2)
    a.store(block_key("m", 0), impersonation.to_bytes(), time.time() + 60)
    misplaced = ServerRecord(peer_id=a.peer_id, address="tcp://a:1", model_id="m", start=5, end=6)
    a.store(block_key("m", 1), misplaced.to_bytes(), time.time() + 60)
    b.store(block_key("m", 1), b"\x81\xa1v\x63", time.time() + 60)  # version 99
    assert fetch_block_servers(reader, "m", 0, 2) == [{}, {}]


def test_announce_rejects_bad_arguments(make_swarm):
    (node,) = make_swarm(1)
    record = ServerRecord(peer_id=node.peer_id, address="tcp://x:1", model_id="m", start=2, end=2)
    with pytest.raises(ValueError):
        announce_blocks(node, record, ttl=60)
    record.end = 3
    with pytest.raises(ValueError):
        announce_blocks(node, record, ttl=0)
    with pytest.raises(ValueError):
        fetch_block_servers(node, "m", 5, 1)


def test_lone_node_is_a_new_swarm_and_resolves_host_names():
    with DHTNode(host="localhost", port=0) as node:
        assert node.address.startswith("localhost:") and not node.address.endswith(":0")
        assert node.store("k", b"v", time.time() + 60)
        assert node.get("k")[node.peer_id].value == b"v"
        with DHTNode(initial_peers=[node.address]) as other:
            assert other.get("k")[node.peer_id].value == b"v"


def test_unreachable_initial_peers_raise_bootstrap_error():
    with socket_port() as dead_port:
        node = DHTNode(initial_peers=[f"127.0.0.1:{dead_port}"], config=DHTConfig(rpc_timeout=0.2))
        with pytest.raises(BootstrapError, match=str(dead_port)):
            node.start()
    with pytest.raises(AddressError, match="no-port"):  # a ValueError too
        DHTNode(initial_peers=["no-port"])


def test_sync_call_from_the_nodes_own_loop_is_refused(make_swarm):
    (node,) = make_swarm(1)

    async def inside():
        with pytest.raises(RuntimeError, match="a-prefixed"):
            node.get("k")
        return await node.aget("k")

    assert asyncio.run_coroutine_threadsafe(inside(), node._loop).result(10) == {}


def test_bootstrap_cli_has_help():
    out = subprocess.run([sys.executable, "-m", "dht.bootstrap", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--identity" in out.stdout


class socket_port:
    """A UDP port with nobody listening on it."""

    def __enter__(self):
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False
