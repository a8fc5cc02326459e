"""SwarmServer: kademlia's Server with our storage and protocol, and batched signed store/find.

kademlia's own get/set (one plain value per key) and save_state/load_state (pickle) are disabled.
"""

from __future__ import annotations

import asyncio
import logging
import random

from kademlia.network import Server
from kademlia.node import Node
from kademlia.utils import digest

from dht.config import DHTConfig
from dht.entry import EntryVerifier
from dht.errors import InvalidEntry
from dht.join import join, refresh
from dht.lookup import MultiKeyLookup
from dht.protocol import SwarmProtocol
from dht.storage import SignedEntryStorage

log = logging.getLogger(__name__)


def key_digest(key: str | bytes) -> bytes:
    """The 20-byte kademlia id of a DHT key (sha1, as kademlia computes it)."""
    return digest(key)


class SwarmServer(Server):
    protocol_class = SwarmProtocol

    def __init__(self, config: DHTConfig):
        self.config = config
        self.verifier = EntryVerifier(config.max_ttl, config.max_clock_skew)
        storage = SignedEntryStorage(self.verifier, config.max_keys, config.max_entries_per_key)
        super().__init__(ksize=config.ksize, alpha=config.alpha,
                         node_id=digest(random.getrandbits(255)), storage=storage)

    def _create_protocol(self):
        return self.protocol_class(self.node, self.storage, self.config)

    def stop(self):
        if self.protocol is not None:
            self.protocol.close()
        super().stop()

    async def bootstrap(self, addrs):
        """Join through `addrs` (ip, port); returns the nodes that answered. See join.py for why
        this replaces kademlia's crawl."""
        return await join(self.protocol, addrs)

    async def _refresh_table(self):
        # kademlia also republishes here; owners re-announce their own entries instead
        await refresh(self.protocol, self.protocol.get_refresh_ids())

    async def store_blobs(self, items: dict[bytes, bytes]) -> dict[bytes, bool]:
        """Store each signed blob on the `replicas` closest live nodes to its key (this node
        included when it is one of them). True for a key when at least one holder accepted it."""
        stored = {dkey: False for dkey in items}
        lookups = await MultiKeyLookup(self.protocol, list(items), want_entries=False).run()
        per_node: dict[bytes, tuple[Node, list]] = {}
        for dkey, kl in lookups.items():
            for node in kl.closest_answered(self.config.replicas):
                if node.id == self.node.id:
                    try:
                        stored[dkey] |= self.storage.merge(dkey, items[dkey])
                    except InvalidEntry as exc:
                        log.warning("own entry rejected by local storage: %s", exc)
                else:
                    per_node.setdefault(node.id, (node, []))[1].append((dkey, items[dkey]))
        nodes = list(per_node.values())
        replies = await asyncio.gather(*(self.protocol.push_entries(n, its) for n, its in nodes))
        for (_, its), accepted in zip(nodes, replies):
            for (dkey, _), ok in zip(its, accepted):
                stored[dkey] |= ok
        return stored

    async def find_blobs(self, dkeys: list[bytes], known: dict | None = None):
        """Ask all of the `replicas` closest live nodes of each key for its entries. Returns
        {dkey: KeyLookup}: .blobs are (sender, blob) pairs sent, .held the hashes of `known`
        entries (the caller's, per key) that some replica still holds."""
        return await MultiKeyLookup(self.protocol, dkeys, want_entries=True, known=known).run()

    # kademlia's single-value API does not apply to multi-entry keys.
    async def get(self, key):
        raise NotImplementedError("use DHTNode.get: keys hold signed multi-entry values")

    async def set(self, key, value):
        raise NotImplementedError("use DHTNode.store: keys hold signed multi-entry values")

    def save_state(self, fname):
        raise NotImplementedError("kademlia's save_state uses pickle; not supported")

    @classmethod
    async def load_state(cls, *args, **kwargs):
        raise NotImplementedError("kademlia's load_state uses pickle; not supported")

    def save_state_regularly(self, *args, **kwargs):
        raise NotImplementedError("kademlia's save_state uses pickle; not supported")
