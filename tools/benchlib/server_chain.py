"""zswarm-server processes for benchmarks, started as an operator would (the CLI, `--new-swarm`
then `--initial-peers`), one after another; each is known to be serving, and where, from the
ready file it writes (zswarm.testing.launch, the launcher tests and LocalSwarm use too).

Unlike LocalSwarm (a DHT node in this process, servers found in the DHT) nothing here needs the
DHT client: the benchmark talks to the servers' RPC addresses directly.
"""
from __future__ import annotations

import os
from pathlib import Path

from zswarm.testing.launch import ServerProcess  # public here as before

__all__ = ["ServerProcess", "log_lines", "start_chain"]

STOP_GRACE_S = 60.0  # a benchmark's servers get SIGTERM and this long to leave before SIGKILL


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
            server = ServerProcess(args, Path(log_dir) / f"{tag}server{i}-{start}-{end}.log", env=env,
                                   stop_grace=STOP_GRACE_S)
            servers.append(server)
            server.wait_serving(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def log_lines(server: ServerProcess, needle: str, limit: int = 12) -> list:
    """The first `limit` lines of a server's log that contain `needle` (case-insensitive)."""
    lines = [line.strip()[:300] for line in server.log_text().splitlines() if needle.lower() in line.lower()]
    return lines[:limit]
