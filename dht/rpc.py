"""DatagramRPC: kademlia's protocol on a hardened replacement of rpcudp's datagram layer.

Datagrams keep rpcudp's framing (1 type byte, 20-byte message id, msgpack body) so kademlia's
own ping/find_node still work, but are decoded here with size limits and every failure is
contained: junk is dropped and logged once per peer, never raised into the event loop. Requests
are dispatched to ``rpc_<name>`` methods (the prefix is the dispatch table, as in kademlia); calls
wait `config.rpc_timeout`, and an address that let one time out is remembered as dead for
`config.dead_contact_ttl` (see `is_dead`) until it is heard from again. Requests beyond a rate per
source are dropped (rate_limit.py); the routing table bounds the ids per address (routing.py).

Client-only nodes (`DHTConfig.client_only`: clients, zswarm-inspect) read and store through the
DHT without becoming contacts of anyone: their requests carry the type byte CLIENT_REQUEST, which
a receiver answers like any request but without adding the sender to its routing table (a client
that left would otherwise be handed to every later joiner, who would wait for it to time out);
and they answer no requests themselves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from dht.config import DHTConfig
from dht.diversity import AddressLimits
from dht.errors import BadRequest
from dht.log_once import LogOnce
from dht.messages import HEADER_BYTES, MAX_DATAGRAM, MAX_PAYLOAD
from dht.rate_limit import SourceRateLimit
from dht.routing import BoundedRoutingTable
from dht.storage import SignedEntryStorage

log = logging.getLogger(__name__)

_REQUEST = 0
_RESPONSE = 1
RECENT_DESTINATIONS = 256  # addresses of the last RPCs kept (operators' debugging, tests); bounded under floods
_CLIENT_REQUEST = 2  # a request from a client-only node: answer it, do not add the sender as a contact


class DatagramRPC(KademliaProtocol):
    def __init__(self, source_node: Node, storage: SignedEntryStorage, config: DHTConfig):
        super().__init__(source_node, storage, config.ksize)
        self.config = config
        self.limits = AddressLimits(config.max_ids_per_endpoint, config.max_ids_per_ip, config.max_ids_per_subnet)
        self.router = BoundedRoutingTable(self, config.ksize, source_node, self.limits)
        self.rate = SourceRateLimit(config.requests_per_source_s, config.request_burst)
        self._wait_timeout = config.rpc_timeout
        self.log_once = LogOnce(log)
        self.dead: dict[tuple, float] = {}  # address -> monotonic time its last RPC timed out
        self.timeouts = 0  # RPCs that got no reply in time, since start
        self.sent = 0  # RPCs sent, since start
        self.recent_destinations = collections.deque(maxlen=RECENT_DESTINATIONS)  # where the last RPCs went
        self.client_only = config.client_only
        self.answering_client = False  # True while a handler answers a client-only node (see welcome_if_new)

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
        if len(data) > MAX_DATAGRAM or len(data) <= HEADER_BYTES:
            self.log_once(addr, "datagram", f"{len(data)} bytes is outside 22..{MAX_DATAGRAM}")
            return
        kind, msg_id = data[0], data[1:HEADER_BYTES]
        try:
            payload = msgpack.unpackb(
                data[HEADER_BYTES:], raw=False, max_bin_len=MAX_PAYLOAD, max_str_len=MAX_PAYLOAD,
                max_array_len=MAX_PAYLOAD, max_map_len=64, max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types on junk
            self.log_once(addr, "datagram", f"malformed msgpack ({type(exc).__name__})")
            return
        if kind in (_REQUEST, _CLIENT_REQUEST):
            if self.client_only:  # no one should ask us: we are in no routing table
                log.debug("request from %s to a client-only node; ignored", addr)
                return
            if self.rate.allow(addr):
                self._answer(msg_id, payload, addr, from_client=kind == _CLIENT_REQUEST)
            else:
                self.log_once(addr, "rate", f"over {self.config.requests_per_source_s:g} requests/s; dropped")
        elif kind == _RESPONSE:
            self._accept_response(msg_id, payload, addr)
        else:
            self.log_once(addr, "datagram", f"unknown type byte {kind}")

    def error_received(self, exc) -> None:
        log.debug("socket error: %s", exc)

    def _answer(self, msg_id: bytes, payload, addr, *, from_client: bool = False) -> None:
        if not (isinstance(payload, list) and len(payload) == 2
                and isinstance(payload[0], str) and isinstance(payload[1], list)):
            self.log_once(addr, "request", "not [name, args]")
            return
        name, args = payload
        handler = getattr(self, f"rpc_{name}", None) if name.isidentifier() else None
        if handler is None:
            self.log_once(addr, "request", f"unknown method {name[:40]!r}")
            return
        self.answering_client = from_client
        try:
            reply = handler(addr, *args)
            body = msgpack.packb(reply, use_bin_type=True)
        except Exception as exc:  # untrusted arguments: contain everything, answer nothing
            self.log_once(addr, f"{name} request", f"{type(exc).__name__}: {exc}")
            log.debug("rejected %s request from %s", name, addr, exc_info=True)
            return
        finally:
            self.answering_client = False
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
        self.sent += 1
        self.recent_destinations.append(address)
        kind = _CLIENT_REQUEST if self.client_only else _REQUEST
        self.transport.sendto(bytes([kind]) + msg_id + body, address)
        return future

    def _timeout(self, msg_id: bytes) -> None:
        pending = self._outstanding.pop(msg_id, None)
        if pending is None:
            return
        future, _, address = pending
        self.timeouts += 1
        self.dead[address] = time.monotonic()
        self.forget_address(address)
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

    def forget_address(self, address: tuple) -> None:
        """Drop every routing-table contact at `address`. kademlia drops a contact only when a
        call made through its call_* helpers fails; a timeout on any RPC is as good a sign."""
        for bucket in self.router.buckets:
            for node in [*bucket.nodes.values(), *bucket.replacement_nodes.values()]:
                if (node.ip, node.port) == address:
                    bucket.remove_node(node)

    def mark_unresponsive(self, node: Node) -> None:
        """A lookup gave up waiting for `node`: treat it as dead until it answers."""
        self.dead[(node.ip, node.port)] = time.monotonic()

    def is_dead(self, node: Node) -> bool:
        since = self.dead.get((node.ip, node.port))
        if since is None:
            return False
        if time.monotonic() - since > self.config.dead_contact_ttl:
            del self.dead[(node.ip, node.port)]
            return False
        return True
