"""Fixtures for server tests: a tiny random-weight Llama checkpoint and a live in-process server."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_LAYERS = 6


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from zswarm.models.testing import make_tiny_checkpoint

    return str(make_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny") / "tiny-llama", num_layers=TINY_LAYERS))


@pytest.fixture(scope="session")
def tiny_source(tiny_model_dir):
    from zswarm.models import resolve_model

    return resolve_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_span(tiny_source):
    """All blocks of the tiny model, float32 on the CPU (shared: spans are read-only)."""
    from zswarm.server.loading import load_blocks

    return load_blocks(tiny_source, 0, TINY_LAYERS, dtype=torch.float32, device="cpu", progress=lambda _: None)
