"""dht: the swarm directory on Kademlia. Keys hold signed, expiring entries from many servers.

See docs/architecture.md (section dht/) for the contract.
"""

from dht.config import DHTConfig
from dht.entry import Entry
from dht.errors import (
    BadRequest, BootstrapError, DHTError, ExpiredEntry, IdentityError, InvalidEntry, RecordError,
)
from dht.identity import Identity
from dht.node import DHTNode
from dht.records import (
    ServerRecord, ServerState, aannounce_blocks, afetch_block_servers, alist_models,
    announce_blocks, fetch_block_servers, list_models,
)

__all__ = [
    "DHTNode", "DHTConfig", "Identity", "Entry",
    "ServerRecord", "ServerState",
    "announce_blocks", "aannounce_blocks", "fetch_block_servers", "afetch_block_servers",
    "list_models", "alist_models",
    "DHTError", "IdentityError", "InvalidEntry", "ExpiredEntry", "RecordError", "BadRequest", "BootstrapError",
]
