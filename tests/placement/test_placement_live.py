"""A real server started with --placement latency picks the blocks zswarm.placement computes.

Three zswarm-server processes on loopback. A (blocks 0:2, slow: 200 steps/s per block) and B
(blocks 2:6, 200 steps/s per block but half A's throughput) are pinned; C (2 blocks, 3x faster)
joins and chooses. Petals' rule sends C to the weakest blocks (2:4, where B is thin), which
buys no latency: a route through it has three hops. The latency strategy sees that every
window leaves the swarm's minimum block throughput where it is (B's blocks 4:6 stay thin), so
it puts C where it shortens the route: over A's blocks 0:2 (a faster first span, still two
hops). The test recomputes the choice from the records C saw and checks the server agrees.
C also pinged A and B (the latency strategy's stand-in for regions); on loopback both are
near, and placement only tells near from far (50 ms), so the exact RTTs do not matter.
"""

from zswarm.records import fetch_block_servers
from zswarm.swarm_info import ServerState
from zswarm.placement import choose_blocks
from zswarm.server.rebalancer import swarm_view

NUM_BLOCKS = 6  # the tiny model of tests/conftest.py
# --throughput T with N blocks announces inference_rps = T * N per block (no measuring, deterministic)
COMMON = ["--device", "cpu", "--no-rebalance", "--attn-cache-tokens", 512, "--max-session-length", 256,
          "--update-period", 2, "--drain-timeout", 1]


def test_server_with_latency_placement_chooses_the_blocks_placement_computes_from_what_it_sees(
        tiny_model_dir, tiny_model_id, spawn_server, dht_client):
    a = spawn_server(tiny_model_dir, "--new-swarm", "--block-indices", "0:2", "--throughput", 100,
                     *COMMON).wait_serving()
    b = spawn_server(tiny_model_dir, "--initial-peers", a.dht_address, "--block-indices", "2:6",
                     "--throughput", 50, *COMMON).wait_serving()
    node = dht_client(a.dht_address)
    # What C will see when it joins: A and B as the DHT holds them (C's choice excludes itself).
    seen = swarm_view(NUM_BLOCKS, fetch_block_servers(node, tiny_model_id, 0, NUM_BLOCKS))
    assert sorted((s.start, s.end, s.state) for s in seen.servers) == [(0, 2, ServerState.ONLINE),
                                                                      (2, 6, ServerState.ONLINE)]

    c = spawn_server(tiny_model_dir, "--initial-peers", a.dht_address, "--num-blocks", 2, "--throughput", 300,
                     "--placement", "latency", *COMMON).wait_serving()
    assert "(latency placement; 2 other servers in the swarm, 2 answered a ping)" in c.log_text()

    records = fetch_block_servers(node, tiny_model_id, 0, NUM_BLOCKS)
    mine = next(r for per_block in records for r in per_block.values() if r.peer_id == c.peer_id)
    near = {a.peer_id: 0.001, b.peer_id: 0.001}  # any loopback RTT is far below 50 ms
    expected = choose_blocks(seen, 2, strategy="latency", my_peer_id=c.peer_id, throughput=mine.throughput,
                             inference_rps=mine.inference_rps, pings=near)
    assert (c.start, c.end) == expected == (0, 2)
    assert (mine.start, mine.end) == expected
    # ... and it is the latency strategy's own choice: Petals' rule on the same records differs.
    assert choose_blocks(seen, 2, strategy="petals", my_peer_id=c.peer_id, throughput=mine.throughput) == (2, 4)
