"""`LocalSwarm`: a real swarm on this machine, for tests, benchmarks, examples and zswarm-demo -- a
DHT bootstrap node in this process and `zswarm-server` processes (`python -m zswarm.server.cli`) on
loopback, each with an identity file so its peer id is known before it starts.

    with LocalSwarm(model_ref, model_id, num_blocks, workdir) as swarm:
        a, b = swarm.start("a", 0, 3), swarm.start("b", 3, 6)
        swarm.wait_online(a, b)
        model = AutoDistributedModelForCausalLM.from_pretrained(model_ref, initial_peers=swarm.initial_peers)

Nothing it starts outlives it: `close()` stops every server (SIGTERM with a grace period, or
SIGKILL at once) and the bootstrap node. Servers run in their own session, so a Ctrl-C at the
terminal reaches only this process, which then stops them in order; on Linux each server also gets
SIGTERM should this process die without closing (the parent-death signal). Each server's output
goes to `<workdir>/<name>.log`, which is kept: a server that dies while starting is reported with
the end of its log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dht import DHTNode, Identity
from zswarm.swarm_info import ServerState
from zswarm.records import fetch_block_servers
from zswarm.errors import ServerExitedError, ServersNotOnlineError

# The checkout this module runs from, so servers import the same zswarm even when not installed.
REPO = Path(__file__).resolve().parents[2]

# Run as `python -c LAUNCHER PARENT_PID -m zswarm.server.cli ...`: ask Linux to SIGTERM the server
# when its parent dies (PR_SET_PDEATHSIG survives exec), then become the server. The signal follows
# the *thread* that started the server, so start servers from a thread that outlives them.
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except Exception: pass\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


def split_blocks(num_blocks: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal block ranges: 30 blocks in 3 -> (0, 10), (10, 20), (20, 30)."""
    if not 1 <= parts <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks over {parts} servers")
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


@dataclass
class ServerProcess:
    name: str
    index: int  # the order it was started in, from 0
    start: int
    end: int
    peer_id: str
    popen: subprocess.Popen
    log: Path
    address: str = ""  # its RPC address, once it announced itself ONLINE

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalSwarm:
    def __init__(self, model_ref: str | os.PathLike, model_id: str, num_blocks: int, workdir: str | os.PathLike, *,
                 device: str = "cpu", dtype: str = "float32", bootstrap_port: int = 0, offline: bool = True):
        """`model_ref`: what the servers load (a directory or hub id) and `model_id` the name
        they announce it under (a directory's name; a hub id itself). `offline`: servers may not
        reach the model hub (tests and benchmarks load local checkpoints)."""
        self.model_ref = str(model_ref)
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device, self.dtype, self.offline = device, dtype, offline
        self.servers: dict[str, ServerProcess] = {}
        self.bootstrap: DHTNode | None = DHTNode(host="127.0.0.1", port=bootstrap_port).start()

    @property
    def initial_peers(self) -> list[str]:
        return [self.bootstrap.address]

    def start(self, name: str, start: int, end: int, *, throughput: float | None = 100.0, threads: int = 1,
              port: int = 0, extra: tuple = ()) -> ServerProcess:
        """Launch a server for blocks [start, end) with `threads` torch threads, announcing
        `throughput` (None: the server measures it), its RPC (TCP) and DHT (UDP) on `port` (0: free
        ones); `wait_online` waits for it. `extra`: more zswarm-server arguments."""
        identity = self.workdir / f"{name}.key"
        peer_id = Identity.load_or_create(str(identity)).peer_id
        log = self.workdir / f"{name}.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
        argv = ["-m", "zswarm.server.cli", self.model_ref, "--block-indices", f"{start}:{end}",
                "--initial-peers", self.bootstrap.address, "--identity", str(identity), "--host", "127.0.0.1",
                "--port", str(port), "--dht-port", str(port), "--device", self.device, "--dtype", self.dtype,
                "--log-level", "INFO"]
        if throughput is not None:
            argv += ["--throughput", str(throughput)]
        argv += [str(arg) for arg in extra]
        if sys.platform.startswith("linux"):
            argv = ["-c", LAUNCHER, str(os.getpid()), *argv]
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = self.servers[name] = ServerProcess(name, len(self.servers), start, end, peer_id, popen, log)
        return server

    def wait_online(self, *servers: ServerProcess, timeout: float = 90.0,
                    on_online: Callable[[ServerProcess, float], None] | None = None) -> None:
        """Until each of `servers` (default: all started) is announced ONLINE in the DHT, calling
        `on_online(server, seconds waited)` as each comes. ServerExitedError when one exits first,
        ServersNotOnlineError after `timeout` seconds; both carry the logs' ends."""
        began = time.monotonic()
        waiting = list(servers or self.servers.values())
        while waiting:
            for server in waiting:
                if not server.alive:
                    raise ServerExitedError(server)
            blocks = fetch_block_servers(self.bootstrap, self.model_id, 0, self.num_blocks)
            for server in list(waiting):
                record = blocks[server.start].get(server.peer_id)
                if record is not None and record.state == ServerState.ONLINE:
                    server.address = record.address
                    waiting.remove(server)
                    if on_online is not None:
                        on_online(server, time.monotonic() - began)
            if waiting and time.monotonic() - began > timeout:
                raise ServersNotOnlineError(waiting, timeout)
            if waiting:
                time.sleep(0.3)

    def kill(self, server: ServerProcess) -> None:
        """kill -9: no goodbye, its DHT record stays until it expires."""
        if server.alive:
            server.popen.send_signal(signal.SIGKILL)
            server.popen.wait(timeout=10)

    def close(self, stop_timeout: float = 0.0) -> None:
        """Stop every server and the bootstrap node; safe to call twice. With `stop_timeout` > 0
        servers get SIGTERM (they announce OFFLINE and exit) and that long before SIGKILL; with 0
        they are killed at once (tests and benchmarks: the swarm goes away as a whole)."""
        live = [s for s in self.servers.values() if s.alive]
        for server in live:
            server.popen.send_signal(signal.SIGTERM if stop_timeout > 0 else signal.SIGKILL)
        deadline = time.monotonic() + stop_timeout
        for server in live:
            try:
                server.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.popen.kill()
                try:
                    server.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if self.bootstrap is not None:
            self.bootstrap.shutdown()
            self.bootstrap = None

    def __enter__(self) -> "LocalSwarm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
