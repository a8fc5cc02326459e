import pytest

from dht import DHTConfig, DHTNode

# Short RPC timeouts keep fault tests quick on loopback; nothing here waits on wall-clock speed.
FAST = DHTConfig(rpc_timeout=0.3, dead_contact_ttl=30.0, start_timeout=20.0, call_timeout=30.0)


@pytest.fixture
def make_swarm():
    """make_swarm(n, config=FAST) -> list of started DHTNodes, all joined through the first;
    every node started here is shut down at teardown."""
    started: list[DHTNode] = []

    def make(n: int, config: DHTConfig = FAST) -> list[DHTNode]:
        first = DHTNode(config=config).start()
        nodes = [first]
        started.append(first)
        for _ in range(n - 1):
            node = DHTNode(initial_peers=[first.address], config=config).start()
            started.append(node)
            nodes.append(node)
        return nodes

    try:
        yield make
    finally:
        for node in started:
            node.shutdown()
