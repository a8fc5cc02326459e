"""WanSwarm: a LocalSwarm whose servers sit in emulated regions, behind delay_proxy relays.

A scenario is data (`Scenario`): the client's region, each server's region and blocks, and the
round trip between regions. Server i listens on 127.0.0.1:PORT_i and announces 127.0.0.(10+i),
where the relay forwards it with the matrix's delay for whoever connects (delay_proxy.py says how
it tells who). This process is the client: it registers itself in the client's region.

    with WanSwarm(scenario, model_dir, model_id, num_blocks, workdir) as wan:
        model = AutoDistributedModelForCausalLM.from_pretrained(model_dir, initial_peers=wan.initial_peers)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .delay_proxy import Link, ProxyConfig

PROXY = Path(__file__).resolve().with_name("delay_proxy.py")
FIRST_RELAY_HOST = 10  # server i's relay answers at 127.0.0.(FIRST_RELAY_HOST + i)


@dataclass
class Scenario:
    name: str
    client: str                                 # the client's region
    servers: list[str]                          # each server's region; blocks split evenly among them
    rtt_ms: dict[str, dict[str, float]]         # region -> region -> round trip (one way written is enough)
    about: str = ""
    bandwidth_mbit: dict[str, dict[str, float]] = field(default_factory=dict)
    spans: list[tuple[int, int]] | None = None  # blocks per server, if not split evenly


def uniform(k: int, rtt_ms: float) -> Scenario:
    """Everybody (client and k servers) `rtt_ms` from everybody else."""
    regions = ["client"] + [f"s{i}" for i in range(k)]
    matrix = {a: {b: rtt_ms for b in regions if b != a} for a in regions}
    return Scenario(f"uniform-{k}x{rtt_ms:g}ms", "client", regions[1:], matrix,
                    about=f"client and {k} servers, each {rtt_ms:g} ms from every other")


def near_servers(k: int, client_rtt_ms: float, between_ms: float) -> Scenario:
    """The client `client_rtt_ms` from k servers that sit `between_ms` from each other."""
    return Scenario(f"client-{client_rtt_ms:g}ms-servers-{between_ms:g}ms", "home", ["dc"] * k,
                    {"home": {"dc": client_rtt_ms}, "dc": {"dc": between_ms}},
                    about=f"client {client_rtt_ms:g} ms from {k} servers that are {between_ms:g} ms apart")


def two_continents(client_rtt_ms: float = 20, ocean_ms: float = 90) -> Scenario:
    """Two servers near the client, two an ocean away."""
    return Scenario("two-continents", "eu-client", ["eu", "eu", "us", "us"],
                    {"eu-client": {"eu": client_rtt_ms, "us": ocean_ms}, "eu": {"eu": 2, "us": ocean_ms},
                     "us": {"us": 2}},
                    about=f"client {client_rtt_ms:g} ms from two servers, {ocean_ms:g} ms from two others")


def free_port(relay_host: str) -> int:
    """A port free for TCP and UDP on 127.0.0.1 and on `relay_host` (the server's and its relay's)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for host in ("127.0.0.1", relay_host):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class WanSwarm:
    def __init__(self, scenario: Scenario, model_ref: str, model_id: str, num_blocks: int, workdir,
                 *, threads: int = 1, server_extra: tuple = ()):
        from zswarm.testing.launch import LocalSwarm, split_blocks

        self.scenario = scenario
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = self.workdir / "regions.json"
        self.pids: dict[int, str] = {os.getpid(): scenario.client}
        self._write_registry()
        spans = scenario.spans or split_blocks(num_blocks, len(scenario.servers))
        self.hosts = [f"127.0.0.{FIRST_RELAY_HOST + i}" for i in range(len(scenario.servers))]
        self.ports = [free_port(host) for host in self.hosts]
        links = [Link(f"{host}:{port}", f"127.0.0.1:{port}", region)
                 for host, port, region in zip(self.hosts, self.ports, scenario.servers)]
        ready = self.workdir / "proxy.ready.json"
        ready.unlink(missing_ok=True)
        config = ProxyConfig(links=links, rtt_ms=scenario.rtt_ms, registry=str(self.registry),
                             ready_file=str(ready), bandwidth_mbit=scenario.bandwidth_mbit)
        config.save(str(self.workdir / "proxy.json"))
        self.proxy_log = open(self.workdir / "proxy.log", "wb")
        self.proxy = subprocess.Popen([sys.executable, str(PROXY), str(self.workdir / "proxy.json")],
                                      stdout=self.proxy_log, stderr=subprocess.STDOUT)
        self.swarm = LocalSwarm(model_ref, model_id, num_blocks, self.workdir / "swarm")
        self.servers = []
        try:
            _wait_file(ready, self.proxy)
            for i, ((start, end), region) in enumerate(zip(spans, scenario.servers)):
                self.servers.append(self.start_server(f"s{i}", start, end, i, threads=threads, extra=server_extra))
            self.swarm.wait_online(*self.servers)
        except BaseException:
            self.close()
            raise

    def start_server(self, name: str, start: int, end: int, slot: int, *, threads: int = 1, extra: tuple = ()):
        """A server for blocks [start, end) behind relay `slot` (its region and port)."""
        server = self.swarm.start(name, start, end, threads=threads, port=self.ports[slot],
                                  extra=("--public-host", self.hosts[slot], *extra))
        self.pids[server.popen.pid] = self.scenario.servers[slot]
        self._write_registry()
        return server

    @property
    def initial_peers(self) -> list[str]:
        return self.swarm.initial_peers

    def _write_registry(self) -> None:
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(pid): region for pid, region in self.pids.items()}))
        os.replace(tmp, self.registry)

    def close(self) -> None:
        self.swarm.close()
        if self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait(10)
        self.proxy_log.close()

    def __enter__(self) -> "WanSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_file(path: Path, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the delay proxy exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the delay proxy was not ready within {timeout:g} s")
        time.sleep(0.05)
