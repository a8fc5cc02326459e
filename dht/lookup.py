"""MultiKeyLookup: Kademlia's iterative node lookup (section 2.3), run for many keys at once.

kademlia's ValueSpiderCrawl stops at the first value it finds; we need every replica's entries,
so for each key we keep asking until the `replicas` closest live nodes we know of have all
answered, and collect entries from all of them. Keys that land on the same node share one
find_entries datagram (up to 16 keys), so looking up the 80 blocks of a model costs about one
datagram per node contacted, not one per (key, replica). Replies are processed as they arrive;
a node that does not answer in time is passed over for the next closest (see `run`).
Entries larger than one reply are fetched page by page from the same node.

A caller may pass, per key, the hashes of entries it already holds (from its previous lookup);
replicas then answer those with an index instead of the bytes. Every replica is still asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from kademlia.node import Node

from dht.diversity import AddressLimits, diverse
from dht.errors import BadRequest
from dht.messages import MAX_FIND_ITEMS, known_per_item, parse_find_reply
from dht.protocol import SwarmProtocol

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
    # a key's closest set holds few ids per address (diversity.py): one socket claiming ids near
    # the key takes one place of `replicas`, not all of them
    limits: AddressLimits = field(default_factory=AddressLimits)

    def closest(self, exclude: set[bytes], count: int) -> list[Node]:
        live = [n for n in self.candidates.values() if n.id not in exclude]
        live.sort(key=self.target.distance_to)
        return diverse(live, count, self.limits)

    def closest_answered(self, count: int) -> list[Node]:
        return diverse(sorted(self.answered.values(), key=self.target.distance_to), count, self.limits)


class MultiKeyLookup:
    def __init__(self, protocol: SwarmProtocol, dkeys, *, want_entries: bool, known: dict | None = None,
                 width: int | None = None):
        """`width`: how many of each key's closest live nodes must answer (default: `replicas`,
        the holders of a key; a node lookup in Kademlia's sense asks for `ksize`)."""
        self.protocol = protocol
        self.want_entries = want_entries
        self.replicas = width or protocol.config.replicas
        self.me = protocol.source_node
        self.failed: set[bytes] = set()
        self.lookups: dict[bytes, KeyLookup] = {}
        seeds = max(protocol.config.ksize, self.replicas)
        for dkey in dkeys:
            kl = KeyLookup(dkey, Node(dkey), limits=protocol.limits)
            if want_entries and known and known.get(dkey):
                kl.known = list(known[dkey])[: known_per_item(MAX_FIND_ITEMS)]
            for n in protocol.router.find_neighbors(kl.target, k=seeds):
                if not protocol.is_dead(n):
                    kl.candidates[n.id] = n
            if not protocol.client_only:  # a client-only node holds nothing for anyone
                kl.candidates[self.me.id] = self.me  # this node may be one of the closest itself
            self.lookups[dkey] = kl

    async def run(self) -> dict[bytes, KeyLookup]:
        """Ask, process replies as they arrive, ask again where a reply revealed closer nodes.

        A request still unanswered after `straggler` seconds (a few times the typical reply time
        of this lookup) counts as slow: the next closest node is asked as well, at once. When
        nothing else is left to ask, the lookup waits for slow nodes that are still among a key's
        closest up to `give_up` seconds (longer, but well under the RPC timeout), so a busy live
        replica is still heard while a dead one costs `give_up` once, not a chain of timeouts;
        its RPC timeout then marks it dead and later lookups skip it."""
        loop = asyncio.get_running_loop()
        config = self.protocol.config
        deadline = loop.time() + config.max_lookup_rounds * config.rpc_timeout
        inflight: dict[asyncio.Task, tuple[Node, float]] = {}
        slow: set[bytes] = set()
        waiting_on: dict[bytes, set[bytes]] = {}  # node id -> keys asked of it, unanswered
        rtts: list[float] = []
        followups: list[tuple[Node, bytes, bytes]] = []
        queue: deque[tuple[Node, list]] = deque()
        dirty = set(self.lookups)
        while True:
            requests: dict[bytes, tuple[Node, list]] = {}
            for node, dkey, cursor in followups:
                requests.setdefault(node.id, (node, []))[1].append([dkey, cursor, self.lookups[dkey].known])
            followups = []
            excluded = self.failed | slow
            for dkey in dirty:
                kl = self.lookups[dkey]
                for node in kl.closest(excluded, self.replicas):
                    if node.id not in kl.asked:
                        kl.asked.add(node.id)
                        waiting_on.setdefault(node.id, set()).add(dkey)
                        requests.setdefault(node.id, (node, []))[1].append([dkey, b"", kl.known])
            dirty = set()
            for node, items in requests.values():
                queue.extend((node, items[i : i + MAX_FIND_ITEMS]) for i in range(0, len(items), MAX_FIND_ITEMS))
            # Replies to a burst all land in our socket buffer at once; past ~200 KB (Linux's
            # default) the kernel drops them and live nodes look dead. So at most max_inflight
            # requests are awaited at a time; one passed over as slow frees its place.
            now = loop.time()
            active = [t for t, (node, _) in inflight.items() if node.id not in slow]
            while queue and len(active) < config.max_inflight:
                node, items = queue.popleft()
                task = asyncio.ensure_future(self._ask(node, items))
                inflight[task] = (node, now)
                active.append(task)
            median = _median(rtts)
            straggler = min(config.rpc_timeout, max(config.min_straggler_s, config.straggler_factor * median))
            give_up = min(config.rpc_timeout, max(config.min_give_up_s, config.give_up_factor * median))
            if active:
                waiting = active
                until = min(inflight[t][1] for t in active) + straggler
            else:
                # Nothing new to ask: wait a while longer for slow nodes that are still among
                # the closest of a key, so a busy (not dead) replica is not left out.
                waiting = [t for t, (node, sent) in inflight.items()
                           if now - sent < give_up and self._still_needed(node.id, waiting_on)]
                if not waiting:
                    break
                until = min(inflight[t][1] for t in waiting) + give_up
            if now > deadline:
                break
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, until - now) + 1e-3,
                                         return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            for task in done:
                node, sent = inflight.pop(task)
                node_id, items, parsed = task.result()
                slow.discard(node_id)
                keys = {item[0] for item in items}
                pending = waiting_on.get(node_id, set())
                pending -= keys
                if parsed is None:
                    self.failed.add(node_id)
                    dirty |= keys | pending
                    continue
                rtts.append(now - sent)
                dirty |= self._absorb(node, items, parsed, followups)
            for task, (node, sent) in inflight.items():
                if node.id not in slow and now - sent >= straggler:
                    slow.add(node.id)
                    dirty |= waiting_on.get(node.id, set())
        if inflight:
            log.debug("lookup left %d slow requests behind", len(inflight))
        # Nodes given up on count as dead until they answer (a late reply clears the mark), so
        # the lookups that follow -- a server announcing right after it joined, say -- do not
        # wait on them again in the seconds before their RPC timeout confirms it.
        now = loop.time()
        for node, sent in inflight.values():
            if now - sent >= give_up:
                self.protocol.mark_unresponsive(node)
        return self.lookups

    def _still_needed(self, node_id: bytes, waiting_on: dict) -> bool:
        """Is this node, though slow, one of the `replicas` closest of a key it was asked about?"""
        for dkey in waiting_on.get(node_id, ()):
            if any(n.id == node_id for n in self.lookups[dkey].closest(self.failed, self.replicas)):
                return True
        return False

    def _absorb(self, node: Node, items, parsed, followups) -> set[bytes]:
        """Take in one reply; returns the keys whose closest set may have changed."""
        changed = set()
        for (dkey, _, known), (neighbors, blobs, cursor, held) in zip(items, parsed):
            kl = self.lookups[dkey]
            kl.answered[node.id] = node
            for nb in neighbors:
                if nb.id not in kl.candidates and nb.id not in self.failed and not self.protocol.is_dead(nb):
                    kl.candidates[nb.id] = nb
                    changed.add(dkey)
            kl.blobs.extend((node, blob) for blob in blobs)
            kl.held.update(known[i] for i in held)
            if cursor is not None:
                followups.append((node, dkey, cursor))
        return changed

    async def _ask(self, node: Node, items: list):
        if node.id == self.me.id:
            reply = self.protocol.answer_find(items, self.want_entries)
        else:
            ok, reply = await self.protocol.call_find_entries(node, items, self.want_entries)
            if not ok:
                return node.id, items, None
        try:
            return node.id, items, parse_find_reply(reply, [len(item[2]) for item in items])
        except BadRequest as exc:
            self.protocol.log_once((node.ip, node.port), "find_entries reply", str(exc))
            return node.id, items, None


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else 0.0
