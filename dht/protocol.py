"""SwarmProtocol: the swarm's RPCs -- batched, for signed multi-entry keys -- on top of the
hardened datagram layer in rpc.py; limits and validation of what peers send are in messages.py.

Added RPCs (the `rpc_` prefix is the dispatch table, as in kademlia):
  find_entries(nodeid, items=[[dkey, cursor, known_hashes], ...], want_entries)
      -> [node_table, [[neighbor_indexes, blobs, next_cursor, held_known_indexes], ...]]
      neighbors are the responder's closest contacts to dkey (only on a first page, cursor b"");
      blobs are the unexpired signed entries after `cursor`, as many as fit one datagram, minus
      those whose entry_hash is in known_hashes (the asker holds those bytes already): for
      these only their index in known_hashes is returned. Readers look the same keys up on every
      route refresh, so steady-state replies carry a few bytes per entry instead of ~400.
      next_cursor is None when the key is complete, otherwise the cursor to ask again with.
  store_entries(nodeid, items=[[dkey, blob], ...]) -> [accepted: bool, ...]
kademlia's plain `store` is refused and `find_value` answers with contacts only: values enter and
leave a node only as verified entries.

A request from a node never seen before does not put it in the routing table, nor draw entries
pushed to it (Kademlia section 2.5's replication): that would let a datagram with a forged source
address reflect many times its size onto a victim (issue 14). The node is pinged back first
(`heard_from`); only a reply to that ping, which a forged address cannot give, admits it.
"""

from __future__ import annotations

import asyncio

from kademlia.node import Node

from dht.diversity import diverse
from dht.errors import BadRequest, InvalidEntry
from dht.log_once import LogOnce
from dht.messages import (
    CONTACTS_BUDGET, MAX_DATAGRAM, MAX_FIND_ITEMS, MAX_KNOWN, MAX_PAYLOAD, MAX_STORE_ITEMS, REPLY_BUDGET,
    check_contact, check_node_id, chunk_store_items, known_per_item, parse_find_items, parse_find_reply,
)
from dht.rpc import DatagramRPC

__all__ = [  # the names this module had before messages.py and rpc.py were split out of it
    "SwarmProtocol", "LogOnce", "MAX_PAYLOAD", "MAX_DATAGRAM", "MAX_FIND_ITEMS", "MAX_KNOWN", "MAX_STORE_ITEMS",
    "check_node_id", "check_contact", "known_per_item", "parse_find_reply", "chunk_store_items",
]


class SwarmProtocol(DatagramRPC):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._verifying: set[tuple] = set()  # addresses pinged back, not answered yet

    async def call_find_entries(self, node: Node, items, want_entries: bool):
        result = await self._call((node.ip, node.port), "find_entries", self.source_node.id, items, want_entries)
        return self.handle_call_response(result, node)

    async def call_store_entries(self, node: Node, items):
        result = await self._call((node.ip, node.port), "store_entries", self.source_node.id, items)
        return self.handle_call_response(result, node)

    # -- handlers -------------------------------------------------------------------------
    def rpc_ping(self, sender, nodeid):
        self.heard_from(Node(check_node_id(nodeid), sender[0], sender[1]))
        return self.source_node.id

    def rpc_find_node(self, sender, nodeid, key):
        source = Node(check_node_id(nodeid), sender[0], sender[1])
        target = Node(check_node_id(key))
        self.heard_from(source)
        return [tuple(n) for n in self.live_neighbors(target, self.config.ksize, exclude=source)]

    def rpc_find_value(self, sender, nodeid, key):
        # Values leave a node only through find_entries; answer as find_node does.
        return self.rpc_find_node(sender, nodeid, key)

    def rpc_store(self, sender, nodeid, key, value):
        raise BadRequest("plain kademlia store is refused; use store_entries with signed entries")

    def rpc_store_entries(self, sender, nodeid, items):
        check_node_id(nodeid)
        if not isinstance(items, list) or len(items) > MAX_STORE_ITEMS:
            raise BadRequest("store_entries takes a list of at most 64 [dkey, blob] pairs")
        self.heard_from(Node(nodeid, sender[0], sender[1]))
        accepted = []
        for item in items:
            try:
                if not (isinstance(item, list) and len(item) == 2):
                    raise InvalidEntry("item is not [dkey, blob]")
                accepted.append(self.storage.merge(item[0], item[1]))
            except InvalidEntry as exc:
                self.log_once(sender, "entry", str(exc))
                accepted.append(False)
        return accepted

    def rpc_find_entries(self, sender, nodeid, items, want_entries):
        check_node_id(nodeid)
        if not isinstance(items, list) or len(items) > MAX_FIND_ITEMS or not isinstance(want_entries, bool):
            raise BadRequest(f"find_entries takes at most {MAX_FIND_ITEMS} items and a bool")
        source = Node(nodeid, sender[0], sender[1])
        reply = self.answer_find(items, want_entries, exclude=source)
        self.heard_from(source)  # only once the request proved well-formed
        return reply

    def answer_find(self, items, want_entries: bool, exclude: Node | None = None):
        """The find_entries reply; also used directly when a lookup reaches this node itself.
        Contacts come first, within a fixed share of the datagram; entries fill what is left."""
        parsed = parse_find_items(items)
        table: list[list] = []
        index: dict[bytes, int] = {}
        neighbor_lists = []
        share = CONTACTS_BUDGET // max(len(parsed), 1)
        table_bytes = 0
        for dkey, cursor, _ in parsed:
            idxs, spent = [], 0
            if not cursor:
                for n in self.live_neighbors(Node(dkey), self.config.replicas, exclude=exclude):
                    cost = 2 if n.id in index else len(n.ip) + 30
                    if spent + cost > share:
                        break
                    spent += cost
                    if n.id not in index:
                        index[n.id] = len(table)
                        table.append([n.id, n.ip, n.port])
                    idxs.append(index[n.id])
            table_bytes += spent
            neighbor_lists.append(idxs)
        # Per item: array headers, a cursor (a 32-byte key) and held indexes are framing.
        budget = REPLY_BUDGET - table_bytes - len(parsed) * 48
        replies = []
        for (dkey, cursor, known), idxs in zip(parsed, neighbor_lists):
            blobs, next_cursor, held = [], None, []
            if want_entries:
                blobs, next_cursor, used, held_hashes = self.storage.page(dkey, cursor, max(budget, 0), set(known))
                budget -= used
                if held_hashes:
                    position = {h: i for i, h in enumerate(known)}
                    held = [position[h] for h in held_hashes]
            replies.append([idxs, blobs, next_cursor, held])
        return [table, replies]

    def live_neighbors(self, target: Node, k: int, exclude: Node | None = None) -> list[Node]:
        """The `k` closest contacts to `target`, less those this node saw time out: a departed
        node lingers in routing tables until someone asks it something, and every asker it is
        handed to would wait for it."""
        near = self.router.find_neighbors(target, k=2 * k, exclude=exclude)
        return diverse((n for n in near if not self.is_dead(n)), k, self.limits)

    # -- joining nodes ----------------------------------------------------------------------
    def heard_from(self, node: Node) -> None:
        """A request came from `node`: a known contact is refreshed (from its own address only); a
        new one is pinged back and
        admitted (`welcome_if_new`) only when it answers as the id it claimed. At most one check
        per address at a time, `max_verifying` in all; an address whose ip:port another id holds
        in the table is not checked at all (routing.py keeps the first). A client-only sender is
        neither (rpc.py)."""
        if self.answering_client:
            return
        known = self.router.contact(node)
        if known is not None:
            # refreshed only from its own address: a request naming a known id from elsewhere
            # must not move that contact to the sender
            if (known.ip, known.port) == (node.ip, node.port):
                self.router.add_contact(node)
            return
        address = (node.ip, node.port)
        if (address in self._verifying or len(self._verifying) >= self.config.max_verifying
                or not self.router.admits(node)):
            return
        self._verifying.add(address)
        asyncio.ensure_future(self._verify(node))

    def handle_call_response(self, result, node: Node):
        """kademlia's, except that a call that failed drops the table's contact of that id only
        when it was made to that contact's address: a reply may name a known id at a bogus one."""
        if not result[0]:
            known = self.router.contact(node)
            if known is not None and (known.ip, known.port) == (node.ip, node.port):
                self.router.remove_contact(node)
            return result
        self.welcome_if_new(node)
        return result

    async def _verify(self, node: Node) -> None:
        address = (node.ip, node.port)
        try:
            ok, reply = await self.ping(address, self.source_node.id)
        finally:
            self._verifying.discard(address)
        if ok and reply == node.id:
            self.welcome_if_new(node)

    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact, first handing it the entries it is now one of the closest
        holders of, when this node is the closest known holder (Kademlia section 2.5). Callers
        have heard `node` answer a request of ours; one the table would not admit gets nothing. A
        client-only sender is never a contact (rpc.py)."""
        if self.answering_client or not self.router.is_new_node(node) or not self.router.admits(node):
            return
        self.dead.pop((node.ip, node.port), None)
        batch = []
        for dkey in self.storage.keys():
            keynode = Node(dkey)
            neighbors = self.router.find_neighbors(keynode, k=self.config.replicas)
            if neighbors:
                new_close = (len(neighbors) < self.config.replicas
                             or node.distance_to(keynode) < neighbors[-1].distance_to(keynode))
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(keynode)
                if not (new_close and this_closest):
                    continue
            batch.extend((dkey, blob) for blob in self.storage.blobs(dkey))
        if batch:
            asyncio.ensure_future(self.push_entries(node, batch))
        self.router.add_contact(node)

    async def push_entries(self, node: Node, items) -> list[bool]:
        """Send [(dkey, blob)] to `node` in as few datagrams as fit; returns acceptance per item."""
        results: list[bool] = []
        for chunk in chunk_store_items(items):
            ok, reply = await self.call_store_entries(node, [[k, b] for k, b in chunk])
            if ok and isinstance(reply, list) and len(reply) == len(chunk):
                results.extend(r is True for r in reply)
            else:
                results.extend([False] * len(chunk))
        return results
