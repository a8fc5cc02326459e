"""dht: the swarm directory on Kademlia. Keys hold signed, expiring entries from many servers;
what the entries mean (zswarm's server records) is zswarm's business (zswarm/records.py).

See docs/architecture.md (section dht/) for the contract.
"""

from dht.config import DHTConfig
from dht.entry import Entry
from dht.errors import (
    AddressError, BadRequest, BootstrapError, DHTError, ExpiredEntry, IdentityError, InvalidEntry,
)
from dht.identity import Identity
from dht.node import DHTNode

__all__ = [
    "DHTNode", "DHTConfig", "Identity", "Entry",
    "DHTError", "IdentityError", "InvalidEntry", "ExpiredEntry", "BadRequest", "BootstrapError",
    "AddressError",
]
