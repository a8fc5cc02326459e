import pytest

from dht import DHTConfig, DHTNode

# Short RPC timeouts keep fault tests quick on loopback; nothing here waits on wall-clock speed.
FAST = DHTConfig(rpc_timeout=0.3, dead_contact_ttl=30.0, start_timeout=20.0, call_timeout=30.0)


@pytest.fixture
def make_swarm():
    """make_swarm(n, config=FAST, join=None) -> list of started DHTNodes, joined through the
    first (or through `join`); every node started here is shut down at teardown."""
    started: list[DHTNode] = []

    def make(n: int, config: DHTConfig = FAST, join: str | None = None) -> list[DHTNode]:
        """n nodes: a new swarm, or n more nodes joining the swarm at address `join`."""
        nodes: list[DHTNode] = []
        for _ in range(n):
            peers = [join] if join else [nodes[0].address] if nodes else []
            node = DHTNode(initial_peers=peers, config=config).start()
            started.append(node)
            nodes.append(node)
        return nodes

    try:
        yield make
    finally:
        for node in started:
            node.shutdown()
