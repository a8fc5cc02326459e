"""Fixtures of the client tests: the tiny llama's source and reference model, in-process swarms,
and `local_swarm` for the tests on real server processes."""
import contextlib
import sys
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteria

sys.path.insert(0, str(Path(__file__).parent))

from inprocess_swarm import InProcessSwarm, client_model, load_source  # noqa: E402


@pytest.fixture(scope="module")
def llama_source(tiny_llama_dir):
    return load_source(tiny_llama_dir)


@pytest.fixture(scope="module")
def llama_reference(tiny_llama_dir):
    from zswarm.models.testing import load_reference_model

    return load_reference_model(tiny_llama_dir)


@pytest.fixture
def swarm(llama_source):
    """An in-process swarm of the tiny llama; add servers with swarm.add(start, end)."""
    swarm = InProcessSwarm(llama_source)
    yield swarm
    swarm.close()


@pytest.fixture
def connect(swarm, llama_source):
    """connect(**ClientConfig fields) -> a client model on `swarm`, closed after the test."""
    made = []

    def make(**config):
        connection = swarm.connect(**config)
        made.append(connection)
        return client_model(llama_source, connection)

    yield make
    for connection in made:
        connection.close()


@contextlib.contextmanager
def local_swarm(model_dir, workdir, *servers):
    """A LocalSwarm of `model_dir` whose `servers`, (name, start, end) or (name, start, end, start
    keyword arguments), are all online; everything it started is stopped on leaving."""
    from zswarm.testing.launch import LocalSwarm
    from zswarm.models import resolve_model

    source = resolve_model(str(model_dir))
    with LocalSwarm(model_dir, source.model_id, source.num_blocks, workdir) as swarm:
        for name, start, end, *options in servers:
            swarm.start(name, start, end, **(options[0] if options else {}))
        swarm.wait_online()
        yield swarm


class AtStep(StoppingCriteria):
    """Never stops generation; calls `action` when generate has made its `step`-th token."""

    def __init__(self, step: int, action):
        self.step, self.action, self.calls = step, action, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            self.action()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
