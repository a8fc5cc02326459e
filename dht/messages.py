"""What one DHT datagram may hold: size budgets, and validation of the values peers send.

Everything here is pure: checks of untrusted RPC arguments and replies (typed BadRequest on
anything malformed) and the arithmetic that keeps every request and reply within one datagram.
The wire shapes of find_entries / store_entries are described in protocol.py.
"""

from __future__ import annotations

import ipaddress

from kademlia.node import Node

from dht.entry import ENTRY_HASH_BYTES, KEY_DIGEST_BYTES
from dht.errors import BadRequest

MAX_PAYLOAD = 8192  # rpcudp's cap on one message body; every datagram we send stays under it
HEADER_BYTES = 21  # type byte + message id
MAX_DATAGRAM = MAX_PAYLOAD + HEADER_BYTES
REPLY_BUDGET = MAX_PAYLOAD - 192  # room left for framing around what we count
MAX_FIND_ITEMS = 16  # keys per find_entries request: 16 keys x `replicas` contacts fit one reply
MAX_KNOWN = 64  # known hashes per item
KNOWN_BUDGET = 5600  # bytes of known hashes in one request
CONTACTS_BUDGET = 4800  # bytes of contacts in one find_entries reply
MAX_STORE_ITEMS = 64
MAX_CURSOR = 32


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
    return max(0, min(MAX_KNOWN, KNOWN_BUDGET // (max(n_items, 1) * (ENTRY_HASH_BYTES + 2))))


def parse_find_items(items) -> list[tuple[bytes, bytes, list]]:
    """Validate find_entries request items: [(dkey, cursor, known_hashes), ...]."""
    parsed = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3):
            raise BadRequest("find_entries item is not [dkey, cursor, known]")
        dkey, cursor, known = check_node_id(item[0]), item[1], item[2]
        if not isinstance(cursor, bytes) or len(cursor) > MAX_CURSOR:
            raise BadRequest("bad cursor")
        if not (isinstance(known, list) and len(known) <= MAX_KNOWN
                and all(isinstance(h, bytes) and len(h) == ENTRY_HASH_BYTES for h in known)):
            raise BadRequest(f"known must be at most {MAX_KNOWN} {ENTRY_HASH_BYTES}-byte hashes")
        parsed.append((dkey, cursor, known))
    return parsed


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
        if cursor is not None and not (isinstance(cursor, bytes) and len(cursor) <= MAX_CURSOR):
            raise BadRequest("bad cursor")
        out.append((neighbors, blobs, cursor, held))
    return out


def chunk_store_items(items):
    """Split [(dkey, blob)] into store_entries requests that each fit one datagram."""
    chunk, size = [], 0
    for dkey, blob in items:
        cost = len(blob) + len(dkey) + 8
        if chunk and (size + cost > REPLY_BUDGET - 64 or len(chunk) >= MAX_STORE_ITEMS):
            yield chunk
            chunk, size = [], 0
        chunk.append((dkey, blob))
        size += cost
    if chunk:
        yield chunk
