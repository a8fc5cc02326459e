"""Fixtures for server tests: a tiny random-weight Llama checkpoint and a live in-process server."""
import asyncio
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_LAYERS = 6


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_llama_dir):
    """tests/conftest.py's tiny Llama (TINY_LAYERS blocks, hidden size 64); its model_id is the dir name."""
    return str(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_model_id(tiny_model_dir):
    """The DHT name of the tiny model: a local checkpoint's model_id is its directory name."""
    from pathlib import Path

    return Path(tiny_model_dir).name


@pytest.fixture(scope="session")
def tiny_source(tiny_model_dir):
    from zswarm.models import resolve_model

    return resolve_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_span(tiny_source):
    """All blocks of the tiny model, float32 on the CPU (shared: spans are read-only)."""
    from zswarm.server.loading import load_blocks

    return load_blocks(tiny_source, 0, TINY_LAYERS, dtype=torch.float32, device="cpu", progress=lambda _: None)


# ---- real server processes ------------------------------------------------------------------
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

SERVING = re.compile(r"serving (\S+) blocks (\d+):(\d+) of (\d+) on .* at (tcp://\S+) \(peer (\w+)\)")
DHT_AT = re.compile(r"others join this swarm with --initial-peers (\S+)\)")


class ServerProcess:
    """`zswarm-server ARGS` as a child process, its log in a file."""

    def __init__(self, args, log_path, env):
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "zswarm.server.cli", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.address = self.peer_id = self.dht_address = None
        self.start = self.end = None

    def log(self) -> str:
        return open(self.log_path, "rb").read().decode(errors="replace")

    def wait_for(self, pattern, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log()[-3000:]}")

    def wait_serving(self, timeout=60.0) -> "ServerProcess":
        self.dht_address = self.wait_for(DHT_AT, timeout).group(1)
        match = self.wait_for(SERVING, timeout)
        self.start, self.end = int(match.group(2)), int(match.group(3))
        self.address, self.peer_id = match.group(5), match.group(6)
        return self

    def terminate(self, timeout=20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def spawn_server(tmp_path_factory):
    """Factory: spawn_server(*args) -> ServerProcess; every process is killed at the end."""
    started = []
    logs = tmp_path_factory.mktemp("server-logs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", ZSWARM_CACHE=str(logs / "cache"), PYTHONUNBUFFERED="1")

    def spawn(*args):
        server = ServerProcess([str(a) for a in args], logs / f"server{len(started)}.log", env)
        started.append(server)
        return server
    try:
        yield spawn
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def dht_client():
    """Factory: a DHT node of the test itself, joined to a swarm; shut down at the end."""
    from dht import DHTNode

    nodes = []

    def join(address):
        node = DHTNode(initial_peers=[address]).start()
        nodes.append(node)
        return node
    try:
        yield join
    finally:
        for node in nodes:
            node.shutdown()


@pytest.fixture
def wait_until():
    """`await wait_until(predicate)`: poll until it holds; fails after `timeout` seconds (a hang guard, not a timing)."""
    async def wait(predicate, timeout=30.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)
    return wait
