"""DHTNode: a kademlia node in its own event-loop thread, usable from sync code and from any
other event loop. Keys hold one signed entry per server; see entry.py and storage.py."""

from __future__ import annotations

import asyncio
import ipaddress
import concurrent.futures
import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Iterable, Sequence

from dht.config import DHTConfig
from dht.entry import Entry, entry_hash, sign_entry
from dht.errors import AddressError, BadRequest, BootstrapError, DHTError, ExpiredEntry, InvalidEntry
from dht.identity import Identity
from dht.messages import check_node_id
from dht.server import SwarmServer, key_digest

log = logging.getLogger(__name__)

# Keys whose verified entries a reader remembers, so replicas can answer "held" for them instead
# of resending the bytes. Every lookup still asks every replica; this only saves bytes and
# signature checks.
_HELD_KEYS = 4096


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") -> (host, port); raises AddressError with the bad address."""
    if not isinstance(address, str):
        raise AddressError(f"peer address must be 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"peer address must be 'host:port', got {address!r}")
    return host, int(port)


class DHTNode:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        initial_peers: Sequence[str] = (),
        identity: Identity | None = None,
        config: DHTConfig | None = None,
    ):
        self.host = host
        self.port = port
        self.initial_peers = [parse_address(p) for p in initial_peers]
        self.identity = identity or Identity.generate()
        self.config = config or DHTConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: SwarmServer | None = None
        self.address: str | None = None
        self._held: OrderedDict[bytes, dict[bytes, Entry]] = OrderedDict()  # dkey -> {entry_hash: Entry}

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "DHTNode":
        """Listen, then join the swarm through `initial_peers` (or start a new one when none are
        given). Raises BootstrapError when peers were given but none answered."""
        if self._thread is not None:
            raise RuntimeError("DHTNode already started")
        if self.config.client_only and not self.initial_peers:
            raise BootstrapError("a client-only DHT node needs initial peers: it cannot start a swarm")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dht-node", daemon=True)
        self._thread.start()
        try:
            self._submit(self._astart()).result(self.config.start_timeout)
        except BaseException:
            self.shutdown()
            raise
        return self

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        bind_ip = (await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM))[0][4][0]
        self._server = SwarmServer(self.config)
        await self._server.listen(self.port, interface=bind_ip)
        sock = self._server.transport.get_extra_info("sockname")
        self.address = f"{self.host}:{sock[1]}" if ":" not in self.host else f"[{self.host}]:{sock[1]}"
        if not self.initial_peers:
            log.info("DHT node %s started a new swarm at %s", self.peer_id, self.address)
            return
        addrs = []
        for host, port in self.initial_peers:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("cannot resolve DHT peer %s:%s: %s", host, port, exc)
                continue
            addrs.append((infos[0][4][0], port))
        if addrs:
            found = await self._server.bootstrap(addrs)
        if not addrs or not found:
            names = ", ".join(f"{h}:{p}" for h, p in self.initial_peers)
            raise BootstrapError(f"none of the initial DHT peers answered: {names}")
        role = "client-only DHT node" if self.config.client_only else "DHT node"
        log.info("%s %s at %s joined through %d peers, knows %d", role, self.peer_id, self.address, len(addrs),
                 len(found))

    def shutdown(self) -> None:
        """Stop listening and end the loop thread. Safe to call twice, and after a failed start."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("DHTNode.shutdown() cannot be called from the node's own loop")
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._ashutdown(), loop).result(10)
            except (concurrent.futures.TimeoutError, RuntimeError) as exc:
                log.warning("DHT node shutdown did not finish cleanly: %r", exc)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = self._server = None

    async def _ashutdown(self) -> None:
        if self._server is not None:
            self._server.stop()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> "DHTNode":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- plumbing between threads -----------------------------------------------------------
    def _submit(self, coro) -> concurrent.futures.Future:
        if self._loop is None:
            coro.close()
            raise DHTError("DHTNode is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro):
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("sync DHTNode methods cannot run on the node's own loop; use the a-prefixed ones")
        return self._submit(coro).result(self.config.call_timeout)

    async def _arun(self, coro):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return await coro
        return await asyncio.wrap_future(self._submit(coro))

    # -- public API (sync) ------------------------------------------------------------------
    def store(self, key: str | bytes, value: bytes, expiration_time: float) -> bool:
        return self._run(self._store_many({key: value}, expiration_time))[key]

    def store_many(self, items: dict, expiration_time: float) -> dict:
        return self._run(self._store_many(items, expiration_time))

    def get(self, key: str | bytes) -> dict[str, Entry]:
        return self._run(self._get_many([key]))[key]

    def get_many(self, keys: Iterable[str | bytes]) -> dict:
        return self._run(self._get_many(list(keys)))

    # -- public API (async, from any loop) ---------------------------------------------------
    async def astore(self, key: str | bytes, value: bytes, expiration_time: float) -> bool:
        return (await self._arun(self._store_many({key: value}, expiration_time)))[key]

    async def astore_many(self, items: dict, expiration_time: float) -> dict:
        return await self._arun(self._store_many(items, expiration_time))

    async def aget(self, key: str | bytes) -> dict[str, Entry]:
        return (await self._arun(self._get_many([key])))[key]

    async def aget_many(self, keys: Iterable[str | bytes]) -> dict:
        return await self._arun(self._get_many(list(keys)))

    async def aping(self, host: str, port: int) -> bool:
        """Does a DHT node answer a ping at host:port (within rpc_timeout)? For the reachability
        check a server makes for another (zswarm.server.reachability)."""
        return await self._arun(self._ping(host, int(port)))

    # -- implementation (on the node's loop) -------------------------------------------------
    async def _ping(self, host: str, port: int) -> bool:
        protocol = self._server.protocol
        ok, reply = await protocol.ping((host, port), protocol.source_node.id)
        if not ok:
            return False
        try:
            check_node_id(reply)
        except BadRequest:
            return False
        return True

    async def _store_many(self, items: dict, expiration_time: float) -> dict:
        now = time.time()
        if not expiration_time > now:
            raise InvalidEntry("expiration_time is in the past")
        if expiration_time > now + self.config.max_ttl:
            raise InvalidEntry(f"expiration_time is more than max_ttl={self.config.max_ttl:.0f} s ahead")
        blobs = {}
        for key, value in items.items():
            dkey = key_digest(key)
            blobs[dkey] = sign_entry(self.identity, dkey, value, expiration_time, signed_at=now)
        stored = await self._server.store_blobs(blobs)
        return {key: stored[key_digest(key)] for key in items}

    async def _get_many(self, keys: list) -> dict:
        dkeys = {key: key_digest(key) for key in keys}
        unique = list(dict.fromkeys(dkeys.values()))
        known = {dkey: self._held.get(dkey, {}) for dkey in unique}
        lookups = await self._server.find_blobs(unique, known={d: list(v) for d, v in known.items() if v})
        now = time.time()
        protocol = self._server.protocol
        by_dkey = {}
        for dkey, kl in lookups.items():
            previous = known[dkey]
            # Entries a replica still holds and we verified before, plus the ones sent in full.
            current = {h: previous[h] for h in kl.held if previous[h].expiration_time > now}
            for sender, blob in kl.blobs:
                h = entry_hash(blob)
                if h in current:
                    continue  # the same bytes from another replica
                try:
                    current[h] = self._server.verifier.decode(dkey, blob, now)
                except ExpiredEntry:
                    continue  # expired in flight
                except InvalidEntry as exc:
                    if sender.id != self._server.node.id:
                        protocol.log_once((sender.ip, sender.port), "entry", str(exc))
            self._held.pop(dkey, None)
            if current:
                self._held[dkey] = current
                while len(self._held) > _HELD_KEYS:
                    self._held.popitem(last=False)
            entries: dict[str, Entry] = {}
            for entry in current.values():
                newest = entries.get(entry.peer_id)
                if newest is None or entry.signed_at > newest.signed_at:
                    entries[entry.peer_id] = entry
            by_dkey[dkey] = entries
        return {key: dict(by_dkey[dkey]) for key, dkey in dkeys.items()}

    def __repr__(self) -> str:
        return f"DHTNode(address={self.address!r}, peer_id={self.peer_id!r})"


def listen_host_for(peers: Sequence[str]) -> str:
    """The interface our DHT node binds: loopback when every peer is on loopback, else all
    interfaces, since a socket bound to 127.0.0.1 cannot send to another machine."""
    for peer in peers:
        host, _ = parse_address(peer)
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return "0.0.0.0"
        except ValueError:
            if host != "localhost":
                return "0.0.0.0"
    return "127.0.0.1"
