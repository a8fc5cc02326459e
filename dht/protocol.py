"""SwarmProtocol: kademlia's protocol, hardened for untrusted datagrams, with batched RPCs for
signed multi-entry keys.

Datagrams keep rpcudp's framing (1 type byte, 20-byte message id, msgpack body) so kademlia's
own ping/find_node still work, but are decoded here with size limits and every failure is
contained: junk is dropped and logged once per peer, never raised into the event loop.

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
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from dht.config import DHTConfig
from dht.entry import ENTRY_HASH_BYTES, KEY_DIGEST_BYTES
from dht.errors import BadRequest, InvalidEntry
from dht.storage import SignedEntryStorage

log = logging.getLogger(__name__)

MAX_PAYLOAD = 8192  # rpcudp's cap on one message body; every datagram we send stays under it
_HEADER = 21  # type byte + message id
MAX_DATAGRAM = MAX_PAYLOAD + _HEADER
_REPLY_BUDGET = MAX_PAYLOAD - 192  # room left for framing around what we count
MAX_FIND_ITEMS = 16  # keys per find_entries request: 16 keys x `replicas` contacts fit one reply
MAX_KNOWN = 64  # known hashes per item
_KNOWN_BUDGET = 5600  # bytes of known hashes in one request
_CONTACTS_BUDGET = 4800  # bytes of contacts in one find_entries reply
MAX_STORE_ITEMS = 64
_MAX_CURSOR = 32
_REQUEST = 0
_RESPONSE = 1


class LogOnce:
    """Logs a rejection the first time a peer causes it, so a hostile peer cannot flood the log."""

    def __init__(self, logger: logging.Logger, max_peers: int = 10_000):
        self._logger = logger
        self._seen: set = set()
        self._max = max_peers

    def __call__(self, peer, what: str, detail: str = "") -> None:
        key = tuple(peer)[:2] if isinstance(peer, (tuple, list)) else peer
        if key in self._seen:
            return
        if len(self._seen) >= self._max:
            self._seen.clear()
        self._seen.add(key)
        self._logger.warning("rejected %s from %s: %s (further rejections from this peer not logged)", what, peer, detail)


def check_node_id(x) -> bytes:
    if not isinstance(x, bytes) or len(x) != KEY_DIGEST_BYTES:
        raise BadRequest("node id / key digest must be 20 bytes")
    return x


_valid_ips: dict[str, bool] = {}


def _is_ip(ip: str) -> bool:
    ok = _valid_ips.get(ip)
    if ok is None:
        try:
            ipaddress.ip_address(ip)
            ok = True
        except ValueError:
            ok = False
        if len(_valid_ips) > 65536:
            _valid_ips.clear()
        _valid_ips[ip] = ok
    return ok


def check_contact(x) -> Node:
    if not (isinstance(x, list) and len(x) == 3):
        raise BadRequest("contact must be [id, ip, port]")
    node_id, ip, port = x
    check_node_id(node_id)
    if not isinstance(ip, str) or len(ip) > 45 or not _is_ip(ip):
        raise BadRequest(f"contact ip {str(ip)[:45]!r} is not an IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise BadRequest("contact port out of range")
    return Node(node_id, ip, port)


def known_per_item(n_items: int) -> int:
    """How many known hashes each of `n_items` keys may carry so the request fits a datagram."""
    return max(0, min(MAX_KNOWN, _KNOWN_BUDGET // (max(n_items, 1) * (ENTRY_HASH_BYTES + 2))))


def parse_find_reply(payload, known_counts: list[int]):
    """Validate a find_entries reply from an untrusted peer; raises BadRequest. Returns, per
    item, (neighbors, blobs, next_cursor, held_known_indexes)."""
    if not (isinstance(payload, list) and len(payload) == 2):
        raise BadRequest("find_entries reply must be [table, items]")
    table, items = payload
    if not (isinstance(table, list) and isinstance(items, list) and len(items) == len(known_counts)):
        raise BadRequest("find_entries reply has the wrong shape")
    contacts = [check_contact(c) for c in table]
    out = []
    for item, n_known in zip(items, known_counts):
        if not (isinstance(item, list) and len(item) == 4):
            raise BadRequest("find_entries reply item must be [neighbors, blobs, cursor, held]")
        idxs, blobs, cursor, held = item
        if not (isinstance(idxs, list) and isinstance(blobs, list) and isinstance(held, list)):
            raise BadRequest("find_entries reply item has the wrong types")
        try:
            neighbors = [contacts[i] for i in idxs]
        except (IndexError, TypeError):
            raise BadRequest("neighbor index out of range") from None
        if not all(isinstance(b, bytes) for b in blobs):
            raise BadRequest("entries must be bytes")
        if not all(isinstance(i, int) and 0 <= i < n_known for i in held):
            raise BadRequest("held index out of range")
        if cursor is not None and not (isinstance(cursor, bytes) and len(cursor) <= _MAX_CURSOR):
            raise BadRequest("bad cursor")
        out.append((neighbors, blobs, cursor, held))
    return out


class SwarmProtocol(KademliaProtocol):
    def __init__(self, source_node: Node, storage: SignedEntryStorage, config: DHTConfig):
        super().__init__(source_node, storage, config.ksize)
        self.config = config
        self._wait_timeout = config.rpc_timeout
        self.log_once = LogOnce(log)
        self.dead: dict[tuple, float] = {}  # address -> monotonic time its last RPC timed out

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # room for bursts of replies (lookups also window their requests)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError as exc:
                log.debug("could not enlarge the UDP receive buffer: %s", exc)

    # -- datagrams ------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) > MAX_DATAGRAM or len(data) <= _HEADER:
            self.log_once(addr, "datagram", f"{len(data)} bytes is outside 22..{MAX_DATAGRAM}")
            return
        kind, msg_id = data[0], data[1:_HEADER]
        try:
            payload = msgpack.unpackb(
                data[_HEADER:], raw=False, max_bin_len=MAX_PAYLOAD, max_str_len=MAX_PAYLOAD,
                max_array_len=MAX_PAYLOAD, max_map_len=64, max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types on junk
            self.log_once(addr, "datagram", f"malformed msgpack ({type(exc).__name__})")
            return
        if kind == _REQUEST:
            self._answer(msg_id, payload, addr)
        elif kind == _RESPONSE:
            self._accept_response(msg_id, payload, addr)
        else:
            self.log_once(addr, "datagram", f"unknown type byte {kind}")

    def error_received(self, exc) -> None:
        log.debug("socket error: %s", exc)

    def _answer(self, msg_id: bytes, payload, addr) -> None:
        if not (isinstance(payload, list) and len(payload) == 2
                and isinstance(payload[0], str) and isinstance(payload[1], list)):
            self.log_once(addr, "request", "not [name, args]")
            return
        name, args = payload
        handler = getattr(self, f"rpc_{name}", None) if name.isidentifier() else None
        if handler is None:
            self.log_once(addr, "request", f"unknown method {name[:40]!r}")
            return
        try:
            reply = handler(addr, *args)
            body = msgpack.packb(reply, use_bin_type=True)
        except Exception as exc:  # untrusted arguments: contain everything, answer nothing
            self.log_once(addr, f"{name} request", f"{type(exc).__name__}: {exc}")
            log.debug("rejected %s request from %s", name, addr, exc_info=True)
            return
        if len(body) > MAX_PAYLOAD:
            log.error("reply to %s from %s is %d bytes, over the datagram limit; not sent", name, addr, len(body))
            return
        self.dead.pop(tuple(addr)[:2], None)
        if self.transport is not None:
            self.transport.sendto(bytes([_RESPONSE]) + msg_id + body, addr)

    def _accept_response(self, msg_id: bytes, payload, addr) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is None or pending[2] != tuple(addr)[:2]:
            log.debug("unexpected reply from %s; ignored", addr)  # late (timed out) or spoofed
            return
        del self._outstanding[msg_id]
        future, timer, _ = pending
        timer.cancel()
        self.dead.pop(pending[2], None)
        if not future.done():
            future.set_result((True, payload))

    # -- calls ----------------------------------------------------------------------------
    def _call(self, address, name: str, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        body = msgpack.packb([name, list(args)], use_bin_type=True)
        if len(body) > MAX_PAYLOAD:
            raise BadRequest(f"{name} request of {len(body)} bytes exceeds one datagram")
        if self.transport is None or self.transport.is_closing():
            future.set_result((False, None))
            return future
        msg_id = os.urandom(20)
        address = (address[0], address[1])
        timer = loop.call_later(self.config.rpc_timeout, self._timeout, msg_id)
        self._outstanding[msg_id] = (future, timer, address)
        self.transport.sendto(bytes([_REQUEST]) + msg_id + body, address)
        return future

    def _timeout(self, msg_id: bytes) -> None:
        pending = self._outstanding.pop(msg_id, None)
        if pending is None:
            return
        future, _, address = pending
        self.dead[address] = time.monotonic()
        log.info("no reply from %s:%s within %.1f s; marked dead", address[0], address[1], self.config.rpc_timeout)
        if not future.done():
            future.set_result((False, None))

    def close(self) -> None:
        for future, timer, _ in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    # kademlia calls these by name (rpcudp would build them in __getattr__ with its 5 s timeout).
    def ping(self, address, *args):
        return self._call(address, "ping", *args)

    def find_node(self, address, *args):
        return self._call(address, "find_node", *args)

    def find_value(self, address, *args):
        return self._call(address, "find_value", *args)

    def store(self, address, *args):
        return self._call(address, "store", *args)

    def is_dead(self, node: Node) -> bool:
        since = self.dead.get((node.ip, node.port))
        if since is None:
            return False
        if time.monotonic() - since > self.config.dead_contact_ttl:
            del self.dead[(node.ip, node.port)]
            return False
        return True

    async def call_find_entries(self, node: Node, items, want_entries: bool):
        result = await self._call((node.ip, node.port), "find_entries", self.source_node.id, items, want_entries)
        return self.handle_call_response(result, node)

    async def call_store_entries(self, node: Node, items):
        result = await self._call((node.ip, node.port), "store_entries", self.source_node.id, items)
        return self.handle_call_response(result, node)

    # -- handlers -------------------------------------------------------------------------
    def rpc_ping(self, sender, nodeid):
        return super().rpc_ping(sender, check_node_id(nodeid))

    def rpc_find_node(self, sender, nodeid, key):
        return super().rpc_find_node(sender, check_node_id(nodeid), check_node_id(key))

    def rpc_find_value(self, sender, nodeid, key):
        # Values leave a node only through find_entries; answer as find_node does.
        return self.rpc_find_node(sender, nodeid, key)

    def rpc_store(self, sender, nodeid, key, value):
        raise BadRequest("plain kademlia store is refused; use store_entries with signed entries")

    def rpc_store_entries(self, sender, nodeid, items):
        check_node_id(nodeid)
        if not isinstance(items, list) or len(items) > MAX_STORE_ITEMS:
            raise BadRequest("store_entries takes a list of at most 64 [dkey, blob] pairs")
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
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
        self.welcome_if_new(source)  # only once the request proved well-formed
        return reply

    def answer_find(self, items, want_entries: bool, exclude: Node | None = None):
        """The find_entries reply; also used directly when a lookup reaches this node itself.
        Contacts come first, within a fixed share of the datagram; entries fill what is left."""
        parsed = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 3):
                raise BadRequest("find_entries item is not [dkey, cursor, known]")
            dkey, cursor, known = check_node_id(item[0]), item[1], item[2]
            if not isinstance(cursor, bytes) or len(cursor) > _MAX_CURSOR:
                raise BadRequest("bad cursor")
            if not (isinstance(known, list) and len(known) <= MAX_KNOWN
                    and all(isinstance(h, bytes) and len(h) == ENTRY_HASH_BYTES for h in known)):
                raise BadRequest(f"known must be at most {MAX_KNOWN} {ENTRY_HASH_BYTES}-byte hashes")
            parsed.append((dkey, cursor, known))
        table: list[list] = []
        index: dict[bytes, int] = {}
        neighbor_lists = []
        share = _CONTACTS_BUDGET // max(len(parsed), 1)
        table_bytes = 0
        for dkey, cursor, _ in parsed:
            idxs, spent = [], 0
            if not cursor:
                for n in self.router.find_neighbors(Node(dkey), k=self.config.replicas, exclude=exclude):
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
        budget = _REPLY_BUDGET - table_bytes - len(parsed) * 48
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

    # -- joining nodes ----------------------------------------------------------------------
    def welcome_if_new(self, node: Node) -> None:
        """Add a new contact, first handing it the entries it is now one of the closest
        holders of, when this node is the closest known holder (Kademlia section 2.5)."""
        if not self.router.is_new_node(node):
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


def chunk_store_items(items):
    """Split [(dkey, blob)] into store_entries requests that each fit one datagram."""
    chunk, size = [], 0
    for dkey, blob in items:
        cost = len(blob) + len(dkey) + 8
        if chunk and (size + cost > _REPLY_BUDGET - 64 or len(chunk) >= MAX_STORE_ITEMS):
            yield chunk
            chunk, size = [], 0
        chunk.append((dkey, blob))
        size += cost
    if chunk:
        yield chunk
