"""`LocalSwarm`: a real swarm on this machine, for tests, benchmarks and demos -- a DHT bootstrap
node in this process and `zswarm-server` processes (`python -m zswarm.server.cli`) on loopback,
each with an identity file so its peer id is known before it starts. Everything started here is
killed in `close()`.

    swarm = LocalSwarm(model_ref, model_id, num_blocks, workdir)
    a, b = swarm.start("a", 0, 3), swarm.start("b", 3, 6)
    swarm.wait_online(a, b)
    model = AutoDistributedModelForCausalLM.from_pretrained(model_ref, initial_peers=swarm.initial_peers)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dht import DHTNode, Identity, ServerState, fetch_block_servers

# The checkout this module runs from, so servers import the same zswarm even when not installed.
REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    name: str
    start: int
    end: int
    peer_id: str
    popen: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalSwarm:
    def __init__(self, model_ref: str | os.PathLike, model_id: str, num_blocks: int, workdir: str | os.PathLike):
        """`model_ref`: what the servers load (a directory or hub id) and `model_id` the name
        they announce it under (a directory's name; a hub id itself)."""
        self.model_ref = str(model_ref)
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = DHTNode().start()
        self.servers: dict[str, ServerProcess] = {}

    @property
    def initial_peers(self) -> list[str]:
        return [self.bootstrap.address]

    def start(self, name: str, start: int, end: int, *, throughput: float = 100.0, threads: int = 1,
              extra: tuple = ()) -> ServerProcess:
        """Launch a server for blocks [start, end), float32 on the CPU with `threads` threads and
        an announced `throughput` (no measuring); `wait_online` waits for it."""
        identity = self.workdir / f"{name}.key"
        peer_id = Identity.load_or_create(str(identity)).peer_id
        log = self.workdir / f"{name}.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "zswarm.server.cli", self.model_ref, "--block-indices", f"{start}:{end}",
                "--initial-peers", self.bootstrap.address, "--identity", str(identity), "--throughput", str(throughput),
                "--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", "8192", "--log-level", "INFO", *extra]
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        server = self.servers[name] = ServerProcess(name, start, end, peer_id, popen, log)
        return server

    def wait_online(self, *servers: ServerProcess, timeout: float = 90.0) -> None:
        """Until each server is announced ONLINE in the DHT; fail with its log if it died."""
        deadline = time.monotonic() + timeout
        waiting = {s.peer_id: s for s in servers}
        while waiting:
            for server in waiting.values():
                if not server.alive:
                    raise RuntimeError(f"server {server.name} exited with {server.popen.returncode}:\n{server.tail()}")
            blocks = fetch_block_servers(self.bootstrap, self.model_id, 0, self.num_blocks)
            for peer_id in list(waiting):
                server = waiting[peer_id]
                record = blocks[server.start].get(peer_id)
                if record is not None and record.state == ServerState.ONLINE:
                    del waiting[peer_id]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(s.name for s in waiting.values())
                raise TimeoutError(f"servers {names} not online after {timeout} s:\n"
                                   + "\n".join(s.tail() for s in waiting.values()))
            if waiting:
                time.sleep(0.3)

    def kill(self, server: ServerProcess) -> None:
        """kill -9: no goodbye, its DHT record stays until it expires."""
        if server.alive:
            server.popen.send_signal(signal.SIGKILL)
            server.popen.wait(timeout=10)

    def close(self) -> None:
        for server in self.servers.values():
            if server.alive:
                server.popen.send_signal(signal.SIGKILL)
        for server in self.servers.values():
            try:
                server.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.bootstrap.shutdown()
