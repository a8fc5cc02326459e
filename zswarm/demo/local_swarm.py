"""The demo's swarm: a bootstrap DHT node in this process and `zswarm-server` processes on
loopback, each hosting a contiguous share of the model's blocks; started, awaited and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zswarm.demo.config import DemoConfig, DemoError, say


def split_blocks(num_blocks: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal block ranges: 30 blocks in 3 -> (0, 10), (10, 20), (20, 30)."""
    if not 1 <= parts <= num_blocks:
        raise DemoError(f"cannot split {num_blocks} blocks over {parts} servers")
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


# Run as `python -c LAUNCHER PARENT_PID -m zswarm.server.cli ...`: ask Linux to SIGTERM the server
# when this process dies (PR_SET_PDEATHSIG survives exec), then become the server.
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except Exception: pass\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


@dataclass
class ServerProcess:
    index: int
    start: int
    end: int
    peer_id: str
    popen: subprocess.Popen
    log: Path
    address: str = ""

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalSwarm:
    """The bootstrap node and the server processes of one demo run."""

    def __init__(self, config: DemoConfig, model_id: str, num_blocks: int, workdir: Path):
        self.config, self.model_id, self.num_blocks, self.workdir = config, model_id, num_blocks, workdir
        self.bootstrap = None
        self.servers: list[ServerProcess] = []

    def start(self) -> None:
        from dht import DHTNode, Identity

        cfg = self.config
        self.bootstrap = DHTNode(host="127.0.0.1", port=cfg.port).start()
        say(f"bootstrap DHT node at {self.bootstrap.address}")
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads_per_server), MKL_NUM_THREADS=str(cfg.threads_per_server),
                   PYTHONUNBUFFERED="1")
        for i, (start, end) in enumerate(split_blocks(self.num_blocks, cfg.servers)):
            key = self.workdir / f"server-{i}.key"
            port = cfg.port + 1 + i if cfg.port else 0
            argv = ["-m", "zswarm.server.cli", cfg.model, "--block-indices", f"{start}:{end}",
                    "--initial-peers", self.bootstrap.address, "--identity", str(key), "--host", "127.0.0.1",
                    "--port", str(port), "--dht-port", str(port), "--device", cfg.device, "--dtype", cfg.dtype,
                    "--log-level", "INFO"]
            if sys.platform.startswith("linux"):
                argv = ["-c", LAUNCHER, str(os.getpid()), *argv]
            log = self.workdir / f"server-{i}.log"
            with open(log, "wb") as out:
                popen = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.servers.append(ServerProcess(i, start, end, Identity.load_or_create(str(key)).peer_id, popen, log))
        say(f"starting {cfg.servers} server{'s' if cfg.servers > 1 else ''} for {self.model_id} "
            f"({', '.join(f'{s.start}:{s.end}' for s in self.servers)}); logs in {self.workdir}")

    def wait_online(self) -> None:
        """Until every server announces ONLINE; DemoError with the log tail when one exits first."""
        from dht import ServerState, fetch_block_servers

        began = time.monotonic()
        deadline = began + self.config.startup_timeout
        waiting = list(self.servers)
        while waiting:
            for server in waiting:
                if server.popen.poll() is not None:
                    raise DemoError(f"server {server.index + 1} (blocks {server.start}:{server.end}) exited with status "
                                    f"{server.popen.returncode} while starting; the end of its log "
                                    f"({server.log}):\n{server.tail()}")
            blocks = fetch_block_servers(self.bootstrap, self.model_id, 0, self.num_blocks)
            for server in list(waiting):
                record = blocks[server.start].get(server.peer_id)
                if record is not None and record.state == ServerState.ONLINE:
                    server.address = record.address
                    waiting.remove(server)
                    say(f"server {server.index + 1}/{len(self.servers)} online: blocks {server.start}:{server.end} "
                        f"at {record.address} ({time.monotonic() - began:.1f} s)")
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"--- server {s.index + 1} ({s.log}):\n{s.tail()}" for s in waiting)
                raise DemoError(f"servers not online after {self.config.startup_timeout:.0f} s:\n{tails}")
            if waiting:
                time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM every server (they announce OFFLINE and exit), SIGKILL what is left after
        stop_timeout, then stop the bootstrap node. Safe to call twice."""
        for server in self.servers:
            if server.popen.poll() is None:
                server.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout
        for server in self.servers:
            try:
                server.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.popen.kill()
                server.popen.wait(timeout=10)
        if self.bootstrap is not None:
            self.bootstrap.shutdown()
            self.bootstrap = None
