"""Rebalancing with real server processes: a skewed swarm fills its gap, a balanced one stays put."""
import time

import pytest

from zswarm.records import fetch_block_servers
from zswarm.swarm_info import ServerState

NUM_BLOCKS = 6
FAST = ["--throughput", 100, "--rebalance", "--rebalance-period", 0.6, "--min-move-interval", 1.5,
        "--update-period", 1, "--device", "cpu", "--drain-timeout", 1]


@pytest.fixture(scope="module")
def swarms(tiny_model_dir, tiny_model_id, spawn_server, dht_client):
    """Two separate swarms at once. Skewed: both servers pinned to 0:3, 3:6 unserved. Balanced: 0:3 + 3:6."""
    skew_a = spawn_server(tiny_model_dir, "--new-swarm", "--block-indices", "0:3", *FAST)
    bal_a = spawn_server(tiny_model_dir, "--new-swarm", "--block-indices", "0:3", *FAST)
    skew_a.wait_serving()
    bal_a.wait_serving()
    skew_b = spawn_server(tiny_model_dir, "--initial-peers", skew_a.dht_address, "--block-indices", "0:3", *FAST)
    bal_b = spawn_server(tiny_model_dir, "--initial-peers", bal_a.dht_address, "--block-indices", "3:6", *FAST)
    skew_b.wait_serving()
    bal_b.wait_serving()
    return {"skewed": ([skew_a, skew_b], dht_client(skew_a.dht_address)),
            "balanced": ([bal_a, bal_b], dht_client(bal_a.dht_address)),
            "model_id": tiny_model_id, "ready_at": time.monotonic()}


def online_ranges(node, model_id, servers):
    """peer_id -> (start, end) of each server's ONLINE record, as the DHT shows it now."""
    mine = {s.peer_id for s in servers}
    found = {}
    for per_block in fetch_block_servers(node, model_id, 0, NUM_BLOCKS):
        for peer_id, record in per_block.items():
            if peer_id in mine and record.state == ServerState.ONLINE:
                found[peer_id] = (record.start, record.end)
    return found


def test_skewed_swarm_moves_a_server_into_the_gap_and_stays_there(swarms):
    servers, node = swarms["skewed"]
    deadline = time.monotonic() + 45
    ranges = {}
    while time.monotonic() < deadline:
        ranges = online_ranges(node, swarms["model_id"], servers)
        if sorted(ranges.values()) == [(0, 3), (3, 6)]:
            break
        time.sleep(0.2)
    assert sorted(ranges.values()) == [(0, 3), (3, 6)], (ranges, [s.log_text()[-2000:] for s in servers])
    moves = sum(s.log_text().count("moved from blocks 0:3 to 3:6") for s in servers)
    assert moves >= 1
    time.sleep(3)  # several more check periods: nobody flips back
    assert online_ranges(node, swarms["model_id"], servers) == ranges
    assert sum(s.log_text().count("moved from blocks") for s in servers) == moves


def test_balanced_swarm_stays_put(swarms):
    servers, node = swarms["balanced"]
    remaining = 5.0 - (time.monotonic() - swarms["ready_at"])  # >= 5 check periods after both were ready
    if remaining > 0:
        time.sleep(remaining)
    assert online_ranges(node, swarms["model_id"], servers) == {servers[0].peer_id: (0, 3), servers[1].peer_id: (3, 6)}
    for server in servers:
        assert "rebalancing" not in server.log_text()
