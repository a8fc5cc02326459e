"""MultiKeyLookup: Kademlia's iterative node lookup (section 2.3), run for many keys at once.

kademlia's ValueSpiderCrawl stops at the first value it finds; we need every replica's entries,
so for each key we keep asking until the `replicas` closest live nodes we know of have all
answered, and collect entries from all of them. Keys that land on the same node share one
find_entries datagram (up to 8 keys), so looking up the 80 blocks of a model costs about one
datagram per node contacted, not one per (key, replica). All requests of a round go out at once;
a node that does not answer is dropped and the next closest is asked in the following round.
Entries larger than one reply are fetched page by page from the same node.

A caller may pass, per key, the hashes of entries it already holds (from its previous lookup);
replicas then answer those with an index instead of the bytes. Every replica is still asked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from kademlia.node import Node

from dht.errors import BadRequest
from dht.protocol import MAX_FIND_ITEMS, SwarmProtocol, known_per_item, parse_find_reply

log = logging.getLogger(__name__)


@dataclass
class KeyLookup:
    dkey: bytes
    target: Node
    candidates: dict[bytes, Node] = field(default_factory=dict)
    asked: set[bytes] = field(default_factory=set)
    answered: dict[bytes, Node] = field(default_factory=dict)
    blobs: list[tuple[Node, bytes]] = field(default_factory=list)
    known: list[bytes] = field(default_factory=list)  # entry hashes the caller holds
    held: set[bytes] = field(default_factory=set)  # those of `known` some replica still holds

    def closest(self, exclude: set[bytes], count: int) -> list[Node]:
        live = [n for n in self.candidates.values() if n.id not in exclude]
        live.sort(key=self.target.distance_to)
        return live[:count]

    def closest_answered(self, count: int) -> list[Node]:
        return sorted(self.answered.values(), key=self.target.distance_to)[:count]


class MultiKeyLookup:
    def __init__(self, protocol: SwarmProtocol, dkeys, *, want_entries: bool, known: dict | None = None):
        self.protocol = protocol
        self.want_entries = want_entries
        self.replicas = protocol.config.replicas
        self.me = protocol.source_node
        self.failed: set[bytes] = set()
        self.lookups: dict[bytes, KeyLookup] = {}
        width = max(protocol.config.ksize, self.replicas)
        for dkey in dkeys:
            kl = KeyLookup(dkey, Node(dkey))
            if want_entries and known and known.get(dkey):
                kl.known = list(known[dkey])[: known_per_item(MAX_FIND_ITEMS)]
            for n in protocol.router.find_neighbors(kl.target, k=width):
                if not protocol.is_dead(n):
                    kl.candidates[n.id] = n
            kl.candidates[self.me.id] = self.me  # this node may be one of the closest itself
            self.lookups[dkey] = kl

    async def run(self) -> dict[bytes, KeyLookup]:
        followups: list[tuple[Node, bytes, bytes]] = []
        for _ in range(self.protocol.config.max_lookup_rounds):
            requests: dict[bytes, tuple[Node, list]] = {}
            for node, dkey, cursor in followups:
                requests.setdefault(node.id, (node, []))[1].append([dkey, cursor, self.lookups[dkey].known])
            followups = []
            for kl in self.lookups.values():
                for node in kl.closest(self.failed, self.replicas):
                    if node.id not in kl.asked:
                        kl.asked.add(node.id)
                        requests.setdefault(node.id, (node, []))[1].append([kl.dkey, b"", kl.known])
            if not requests:
                break
            asks = [
                self._ask(node, items[i : i + MAX_FIND_ITEMS])
                for node, items in requests.values()
                for i in range(0, len(items), MAX_FIND_ITEMS)
            ]
            for node, items, parsed in await asyncio.gather(*asks):
                if parsed is None:
                    self.failed.add(node.id)
                    continue
                for (dkey, _, known), (neighbors, blobs, cursor, held) in zip(items, parsed):
                    kl = self.lookups[dkey]
                    kl.answered[node.id] = node
                    for nb in neighbors:
                        if nb.id not in kl.candidates and nb.id not in self.failed and not self.protocol.is_dead(nb):
                            kl.candidates[nb.id] = nb
                    kl.blobs.extend((node, blob) for blob in blobs)
                    kl.held.update(known[i] for i in held)
                    if cursor is not None:
                        followups.append((node, dkey, cursor))
        else:
            log.warning("lookup of %d keys stopped after %d rounds", len(self.lookups), self.protocol.config.max_lookup_rounds)
        return self.lookups

    async def _ask(self, node: Node, items: list):
        if node.id == self.me.id:
            reply = self.protocol.answer_find(items, self.want_entries)
        else:
            ok, reply = await self.protocol.call_find_entries(node, items, self.want_entries)
            if not ok:
                return node, items, None
        try:
            return node, items, parse_find_reply(reply, [len(item[2]) for item in items])
        except BadRequest as exc:
            self.protocol.log_once((node.ip, node.port), "find_entries reply", str(exc))
            return node, items, None
