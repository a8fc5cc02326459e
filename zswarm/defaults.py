"""Defaults that more than one module reads, each written once.

Pure constants, no imports: routing, placement, the client and server configs, inspect and
tools/simulator all take theirs from here.
"""

# The embedded default model (its DHT name); zswarm.models.default_model prepares it.
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

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

# Verification of results (zswarm.client.verification, ClientConfig, tools/bench_client.py).
# One step in SPOT_CHECK_RATE of each route span is recomputed on a replica and compared: a
# liar that lies on every step is caught within 1 / SPOT_CHECK_RATE steps of its span.
SPOT_CHECK_RATE = 0.02
