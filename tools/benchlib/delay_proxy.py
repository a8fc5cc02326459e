#!/usr/bin/env python
"""A distance emulator in user space: TCP and UDP relays that delay traffic by a latency matrix
between regions, so processes on loopback behave as if spread over the world.

This machine's kernel has no netem, so the delay is added here. Each relayed service (a server's
RPC port, a DHT node) listens on 127.0.0.1:PORT and gets a relay on another loopback address,
127.0.0.X:PORT (the whole of 127/8 is local on Linux); the service announces 127.0.0.X
(`--public-host`), so everybody reaches it through the relay. The relay knows the region of the
service behind it (`Link.region`); the region of whoever connects is the region of the process
that owns the connecting socket, found through /proc (socket inode -> pid) and a registry file of
pid -> region that the bench writes as it starts processes. Each byte then waits

    one_way = rtt_ms[source region][service region] / 2         in each direction
    + its size / bandwidth (per connection and direction, queued behind earlier bytes)

so a request and its reply cost one round trip of the matrix, whoever sends them, and a server
that pushes to the next one pays the servers' distance, not the client's.

UDP (the DHT): datagrams are delayed the same way and may be dropped (`loss`). A relay keeps one
upstream socket per source, like a NAT, so the service answers through it; the service then sees
the relay's socket as the sender, which is right for the sender's own conversation, but the
contact it learns is the relay's, not the sender's. Put a DHT bootstrap node behind a UDP relay to
delay a client's first contacts; further contacts go direct.

TCP has no loss here: a lossy TCP link would need retransmission timers emulated too.

Run: `python tools/benchlib/delay_proxy.py CONFIG.json` (see `ProxyConfig`); it writes its
ready file once every relay listens and runs until SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Link:
    """One relayed service: listen on `listen`, forward to `target`; the service is in `region`."""

    listen: str          # "127.0.0.X:PORT"
    target: str          # "127.0.0.1:PORT"
    region: str
    proto: str = "tcp"   # "tcp" | "udp"


@dataclass
class ProxyConfig:
    links: list[Link]
    rtt_ms: dict[str, dict[str, float]]   # region -> region -> round trip ms (filled symmetric)
    registry: str                          # JSON file {pid: region}, rewritten by whoever starts processes
    ready_file: str
    default_region: str | None = None      # the region of a source whose pid is not registered
    bandwidth_mbit: dict[str, dict[str, float]] = field(default_factory=dict)  # region pairs; none: unlimited
    loss: dict[str, dict[str, float]] = field(default_factory=dict)            # UDP only, 0..1

    @classmethod
    def load(cls, path: str) -> "ProxyConfig":
        data = json.loads(Path(path).read_text())
        data["links"] = [Link(**link) for link in data["links"]]
        return cls(**data)

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


def pair_value(matrix: dict[str, dict[str, float]], a: str, b: str, default: float | None) -> float | None:
    """matrix[a][b], or matrix[b][a]: a matrix need only be written one way."""
    if b in matrix.get(a, {}):
        return float(matrix[a][b])
    if a in matrix.get(b, {}):
        return float(matrix[b][a])
    return default


# ---- who is connecting: socket -> pid -> region -----------------------------------------------
def _hex_endpoint(host: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/{tcp,udp} writes it: little-endian address, port in hex."""
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def socket_inode(proto: str, local: tuple[str, int], remote: tuple[str, int] | None) -> int | None:
    """The inode of the socket bound at `local` (and connected to `remote`, for TCP)."""
    # a UDP socket that never bound sends from the wildcard address: /proc lists it as 0.0.0.0
    want_local = {_hex_endpoint(*local), _hex_endpoint("0.0.0.0", local[1])}
    want_remote = _hex_endpoint(*remote) if remote else None
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if parts[1] in want_local and (want_remote is None or parts[2] == want_remote):
            return int(parts[9])
    return None


def pid_owning(inode: int, pids) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
            except OSError:
                continue
    return None


class Regions:
    """The region of the process behind a peer address, through the registry file."""

    def __init__(self, registry: str, default: str | None):
        self.registry, self.default = registry, default

    def pids(self) -> dict[int, str]:
        try:
            return {int(pid): region for pid, region in json.loads(Path(self.registry).read_text()).items()}
        except (OSError, ValueError):
            return {}

    def of(self, proto: str, peer: tuple[str, int], me: tuple[str, int]) -> str | None:
        inode = socket_inode(proto, peer, me if proto == "tcp" else None)
        registered = self.pids()
        pid = pid_owning(inode, registered) if inode is not None else None
        return registered.get(pid, self.default)


# ---- the relays -------------------------------------------------------------------------------
class Pacer:
    """When each chunk of one direction of one connection may leave: after the one-way delay and
    after the chunks before it have gone through the bandwidth."""

    def __init__(self, one_way_s: float, bytes_per_s: float | None):
        self.one_way_s, self.bytes_per_s = one_way_s, bytes_per_s
        self.link_free_at = 0.0

    def due(self, now: float, size: int) -> float:
        if self.bytes_per_s is None:
            return now + self.one_way_s
        start = max(now, self.link_free_at)
        self.link_free_at = start + size / self.bytes_per_s
        return self.link_free_at + self.one_way_s


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    wait = when - loop.time()
    if wait > 0:
        await asyncio.sleep(wait)


class Relays:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.regions = Regions(config.registry, config.default_region)
        self.servers: list = []
        self.transports: list = []
        self.counts = collections.Counter()

    def _pacer(self, source: str | None, link: Link) -> Pacer:
        rtt = pair_value(self.config.rtt_ms, source, link.region, 0.0) if source else 0.0
        mbit = pair_value(self.config.bandwidth_mbit, source, link.region, None) if source else None
        return Pacer(rtt / 2000.0, mbit * 125_000.0 if mbit else None)

    async def start(self) -> None:
        for link in self.config.links:
            host, port = _split(link.listen)
            if link.proto == "tcp":
                self.servers.append(await asyncio.start_server(
                    lambda r, w, link=link: self._tcp(link, r, w), host, port, reuse_address=True))
            elif link.proto == "udp":
                transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda link=link: _UdpRelay(self, link), local_addr=(host, port))
                self.transports.append(transport)
            else:
                raise ValueError(f"link {link.listen}: proto must be tcp or udp, not {link.proto!r}")

    async def _tcp(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, me = writer.get_extra_info("peername")[:2], writer.get_extra_info("sockname")[:2]
        source = self.regions.of("tcp", peer, me)
        self.counts[f"tcp {source}->{link.region}"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*_split(link.target))
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pump(reader, up_writer, self._pacer(source, link)),
                             self._pump(up_reader, writer, self._pacer(source, link)),
                             return_exceptions=True)

    async def _pump(self, reader, writer, pacer: Pacer) -> None:
        """reader -> writer, each chunk held until its due time; chunks keep their order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                await _sleep_until(loop, due)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                queue.put_nowait((pacer.due(loop.time(), len(data)), data))
        except OSError:
            pass
        finally:
            queue.put_nowait((pacer.due(loop.time(), 0), None))
            try:
                await delivering
            except OSError:
                pass

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for transport in self.transports:
            transport.close()


class _UdpRelay(asyncio.DatagramProtocol):
    """Datagrams to `link.listen` -> `link.target` through one upstream socket per source."""

    def __init__(self, relays: Relays, link: Link):
        self.relays, self.link = relays, link
        self.upstreams: dict[tuple, "_Upstream"] = {}
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        addr = tuple(addr[:2])
        up = self.upstreams.get(addr)
        if up is None:
            source = self.relays.regions.of("udp", addr, None)
            config = self.relays.config
            rtt = pair_value(config.rtt_ms, source, self.link.region, 0.0) if source else 0.0
            loss = pair_value(config.loss, source, self.link.region, 0.0) if source else 0.0
            up = self.upstreams[addr] = _Upstream(self, addr, rtt / 2000.0, loss)
            asyncio.ensure_future(up.open(_split(self.link.target)))
        up.send_later(data)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: _UdpRelay, source: tuple, one_way_s: float, loss: float):
        self.relay, self.source, self.one_way_s, self.loss = relay, source, one_way_s, loss
        self.transport = None
        self.waiting: list[bytes] = []
        self.loop = asyncio.get_event_loop()

    async def open(self, target) -> None:
        self.transport, _ = await self.loop.create_datagram_endpoint(lambda: self, remote_addr=target)
        for data in self.waiting:
            self.transport.sendto(data)
        self.waiting = []

    def _lost(self) -> bool:
        return self.loss > 0 and random.random() < self.loss

    def send_later(self, data: bytes) -> None:
        if not self._lost():
            self.loop.call_later(self.one_way_s, self._send, data)

    def _send(self, data: bytes) -> None:
        if self.transport is None:
            self.waiting.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr) -> None:  # the service answers: back to the source
        if not self._lost():
            self.loop.call_later(self.one_way_s, self.relay.transport.sendto, data, self.source)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def serve(config: ProxyConfig) -> None:
    relays = Relays(config)
    await relays.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = config.ready_file + ".tmp"
    Path(tmp).write_text(json.dumps({"pid": os.getpid(), "links": len(config.links)}))
    os.replace(tmp, config.ready_file)
    await stop.wait()
    await relays.close()
    print(json.dumps({"connections": dict(relays.counts)}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="ProxyConfig as JSON")
    args = parser.parse_args(argv)
    asyncio.run(serve(ProxyConfig.load(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
