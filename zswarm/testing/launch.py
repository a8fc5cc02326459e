"""Starting `zswarm-server` processes on this machine: the one launcher tests, benchmarks, examples
and zswarm-demo share.

`ServerProcess` is one server, `python -m zswarm.server.cli ARGS --ready-file PATH`, its output in
a log file. It is ready when the server has written its ready file (JSON: address, dht_address,
peer_id, model_id, start, end), which a server does once it serves, and again after it moves:
a file meant for this, not a regex over a log line that may change wording.

`LocalSwarm` is a real swarm: a DHT bootstrap node in this process and servers on loopback, each
with an identity file so its peer id is known before it starts; it waits for the servers'
records to say ONLINE in the DHT, which is what a client needs.

    with LocalSwarm(model_ref, model_id, num_blocks, workdir) as swarm:
        a, b = swarm.start("a", 0, 3), swarm.start("b", 3, 6)
        swarm.wait_online(a, b)
        model = AutoDistributedModelForCausalLM.from_pretrained(model_ref, initial_peers=swarm.initial_peers)

Nothing LocalSwarm starts outlives it: `close()` stops every server (SIGTERM with a grace period,
or SIGKILL at once) and the bootstrap node. Its servers run in their own session, so a Ctrl-C at
the terminal reaches only this process, which then stops them in order; on Linux each also gets
SIGTERM should this process die without closing (the parent-death signal). Each server's output
goes to `<workdir>/<name>.log`, which is kept: a server that dies while starting is reported with
the end of its log.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dht import DHTNode, Identity
from zswarm.blocks import format_blocks
from zswarm.errors import ServerExitedError, ServersNotOnlineError
from zswarm.records import fetch_block_servers
from zswarm.swarm_info import ServerState

__all__ = ["ServerProcess", "LocalSwarm", "Ready", "split_blocks", "server_env", "ServerExitedError",
           "ServersNotOnlineError", "REPO", "LAUNCHER"]

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


def server_env(base: dict | None = None, **extra: str) -> dict:
    """The environment of a server process: `base` (default: ours), unbuffered output, and this
    checkout first on the import path."""
    env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass(frozen=True)
class Ready:
    """What a server's ready file says (zswarm.server.server.Server._write_ready_file)."""

    address: str  # what a client dials: tcp://host:port#curve=KEY (wire.endpoint); no #curve with --insecure-plaintext
    dht_address: str  # HOST:PORT to give as --initial-peers to join through it
    peer_id: str
    model_id: str
    start: int
    end: int

    @classmethod
    def read(cls, path: Path) -> "Ready | None":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet
            return None
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class ServerProcess:
    """`zswarm-server ARGS` as a child process, its output in `log`, ready once its ready file is."""

    def __init__(self, args: Sequence, log: str | os.PathLike, *, env: dict | None = None, name: str | None = None,
                 index: int = 0, start: int | None = None, end: int | None = None, peer_id: str | None = None,
                 detach: bool = False, stop_grace: float = 0.0, module: str = "zswarm.server.cli",
                 prefix: Sequence[str] = ()):
        """`start`/`end`/`peer_id`: what is known before it runs (read from the ready file later).
        `module`: what `python -m` runs with ARGS (a test-only server such as zswarm.testing.liar).
        `detach`: its own session, and SIGTERM when this process dies (LocalSwarm's servers).
        `stop_grace`: seconds `stop()` gives it after SIGTERM; 0 kills it at once.
        `prefix`: a command that execs the server (`ip netns exec NS`: a server in a network namespace)."""
        self.args = [str(a) for a in args]
        self.log = Path(log)
        self.name = name or self.log.stem
        self.index = index
        self.start, self.end, self.peer_id = start, end, peer_id
        self.address: str | None = None
        self.dht_address: str | None = None
        self.stop_grace = stop_grace
        self.ready_file = self.log.with_name(self.log.name + ".ready.json")
        self.ready_file.unlink(missing_ok=True)  # a previous run's must not count
        argv = ["-m", module, *self.args, "--ready-file", str(self.ready_file)]
        if detach and sys.platform.startswith("linux"):
            argv = ["-c", LAUNCHER, str(os.getpid()), *argv]
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen([*prefix, sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=server_env(env), start_new_session=detach)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no log)"

    def ready(self) -> Ready | None:
        """The ready file as it is now (None before the server serves), its facts taken over."""
        ready = Ready.read(self.ready_file)
        if ready is not None:
            self.address, self.dht_address, self.peer_id = ready.address, ready.dht_address, ready.peer_id
            self.start, self.end = ready.start, ready.end
        return ready

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        """Until the server serves. ServerExitedError if it exits first, ServersNotOnlineError after
        `timeout` seconds; both carry the end of its log."""
        deadline = time.monotonic() + timeout
        while self.ready() is None:
            if not self.alive:
                raise ServerExitedError(self)
            if time.monotonic() > deadline:
                raise ServersNotOnlineError([self], timeout)
            time.sleep(0.05)
        return self

    wait_serving = wait_ready  # the name tests and tools/benchlib call it by

    def wait_for(self, pattern, timeout: float = 60.0) -> re.Match:
        """Until `pattern` appears in the log (for tests about what a server logs; readiness is `wait_ready`)."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            if not self.alive:
                raise ServerExitedError(self)
            if time.monotonic() > deadline:
                raise ServersNotOnlineError([self], timeout)
            time.sleep(0.05)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (the server announces OFFLINE and exits) and its exit status."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """kill -9: no goodbye, its DHT record stays until it expires."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        """End it if it still runs: SIGTERM and `stop_grace` seconds, then SIGKILL (at once when 0)."""
        if not self.alive:
            return
        if self.stop_grace > 0:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(self.stop_grace)
                return
            except subprocess.TimeoutExpired:
                pass
        self.popen.kill()
        self.popen.wait(10)

    def __repr__(self) -> str:
        where = format_blocks(self.start, self.end) if self.start is not None else "?"
        return f"<ServerProcess {self.name} blocks {where} pid {self.popen.pid}>"


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
              port: int = 0, extra: tuple = (), module: str = "zswarm.server.cli",
              model_ref: str | os.PathLike | None = None) -> ServerProcess:
        """Launch a server for blocks [start, end) with `threads` torch threads, announcing
        `throughput` (None: the server measures it), its RPC (TCP) and DHT (UDP) on `port` (0: free
        ones); `wait_online` waits for it. `extra`: more zswarm-server arguments; `module`: what runs
        them (ServerProcess). `model_ref`: another model than the swarm's, in the same DHT (wait for
        it with its `wait_ready`)."""
        identity = self.workdir / f"{name}.key"
        peer_id = Identity.load_or_create(str(identity)).peer_id
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
        args = [str(model_ref or self.model_ref), "--block-indices", f"{start}:{end}",
                "--initial-peers", self.bootstrap.address, "--identity", str(identity), "--host", "127.0.0.1",
                "--port", str(port), "--dht-port", str(port), "--device", self.device, "--dtype", self.dtype,
                "--log-level", "INFO"]
        if throughput is not None:
            args += ["--throughput", str(throughput)]
        args += [str(arg) for arg in extra]
        server = ServerProcess(args, self.workdir / f"{name}.log", env=env, name=name, index=len(self.servers),
                               start=start, end=end, peer_id=peer_id, detach=True, module=module)
        self.servers[name] = server
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
                    server.address = record.endpoint
                    waiting.remove(server)
                    if on_online is not None:
                        on_online(server, time.monotonic() - began)
            if waiting and time.monotonic() - began > timeout:
                raise ServersNotOnlineError(waiting, timeout)
            if waiting:
                time.sleep(0.3)

    def kill(self, server: ServerProcess) -> None:
        """kill -9: no goodbye, its DHT record stays until it expires."""
        server.kill()

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
