"""A separate process holding one DHT node that announces a ServerRecord, for multi-process tests.

    python dht_announcer_process.py PEER MODEL START END
Prints "READY <address> <peer_id>" once announced, then serves until stdin closes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's dht and zswarm, not an installed copy

from dht import DHTConfig, DHTNode  # noqa: E402
from zswarm.records import announce_blocks  # noqa: E402
from zswarm.swarm_info import ServerRecord  # noqa: E402


def main() -> None:
    peer, model, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    node = DHTNode(initial_peers=[peer], config=DHTConfig(rpc_timeout=0.3)).start()
    try:
        record = ServerRecord(peer_id=node.peer_id, address="tcp://127.0.0.1:9", model_id=model,
                              start=start, end=end, public_name="proc")
        assert announce_blocks(node, record, ttl=60, num_blocks=end)
        print("READY", node.address, node.peer_id, flush=True)
        sys.stdin.read()
    finally:
        node.shutdown()


if __name__ == "__main__":
    main()
