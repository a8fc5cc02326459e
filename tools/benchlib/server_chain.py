"""zswarm-server processes for benchmarks, started as an operator would (the CLI, `--new-swarm`
then `--initial-peers`), one after another; each is known to be serving, and where, from its log.

Unlike zswarm.client.local_swarm (a DHT node in this process, servers found in the DHT) nothing
here needs the DHT client: the benchmark talks to the servers' RPC addresses directly.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVING = re.compile(r"serving (\S+) blocks (\d+):(\d+) of (\d+) on .* at (tcp://\S+) \(peer (\w+)\)")
DHT_AT = re.compile(r"others join this swarm with --initial-peers (\S+)\)")


class ServerProcess:
    def __init__(self, args: list, log_dir: Path, name: str, env: dict):
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "zswarm.server.cli", *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.address = self.dht_address = None
        self.start = self.end = None

    def wait_serving(self, timeout: float) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = SERVING.search(text)
            if match:
                self.dht_address = DHT_AT.search(text).group(1)
                self.start, self.end, self.address = int(match.group(2)), int(match.group(3)), match.group(5)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up; log {self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    def log_lines(self, needle: str, limit: int = 5) -> list:
        """The first `limit` lines of this server's log that contain `needle` (case-insensitive)."""
        lines = [line.strip()[:300] for line in self.log_path.read_text(errors="replace").splitlines()
                 if needle.lower() in line.lower()]
        return lines[:limit]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def start_chain(model_dir: str, ranges: list, extra: list, log_dir: Path, timeout: float,
                measure_first: bool = False, tag: str = "") -> list:
    """Servers for `ranges`, one after another; the first starts the swarm (and, with
    `measure_first`, measures its throughput; the others announce a fixed one). Logs are
    log_dir/{tag}server{i}-{start}-{end}.log."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    servers = []
    try:
        for i, (start, end) in enumerate(ranges):
            join = ["--new-swarm"] if i == 0 else ["--initial-peers", servers[0].dht_address]
            rate = (["--throughput-cache", log_dir / "throughput.json"] if measure_first and i == 0
                    else ["--throughput", 1])
            args = [model_dir, *join, "--block-indices", f"{start}:{end}", *rate, *extra]
            servers.append(ServerProcess(args, log_dir, f"{tag}server{i}-{start}-{end}", env).wait_serving(timeout))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
