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
from zswarm.testing.launch import ServerProcess  # noqa: E402  (ready by its --ready-file, not by a log line)


@pytest.fixture(scope="module")
def spawn_server(tmp_path_factory):
    """Factory: spawn_server(*args) -> ServerProcess; every process is killed at the end."""
    started = []
    logs = tmp_path_factory.mktemp("server-logs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", ZSWARM_CACHE=str(logs / "cache"), PYTHONUNBUFFERED="1")

    def spawn(*args):
        server = ServerProcess(args, logs / f"server{len(started)}.log", env=env)
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
