"""Fixtures shared across packages: tiny random-weight checkpoints of each model family.

Each is made once per test session (zswarm.models.testing.make_tiny_checkpoint, 6 blocks, fp32,
sharded safetensors) in a session temp dir. Use with zswarm.models.resolve_model(str(path)).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the model hub


def _tiny(tmp_path_factory, family: str):
    from zswarm.models.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(family, tmp_path_factory.mktemp(f"tiny-{family}"), num_layers=6)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "mixtral")


@pytest.fixture(scope="session")
def tiny_bloom_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "bloom")


@pytest.fixture(scope="session")
def tiny_falcon_dir(tmp_path_factory):
    return _tiny(tmp_path_factory, "falcon")


@pytest.fixture(scope="session")
def tiny_model_dirs(tiny_llama_dir, tiny_mistral_dir, tiny_qwen2_dir, tiny_mixtral_dir, tiny_bloom_dir,
                    tiny_falcon_dir):
    """family name -> checkpoint directory, for tests parametrized over every family."""
    return {"llama": tiny_llama_dir, "mistral": tiny_mistral_dir, "qwen2": tiny_qwen2_dir,
            "mixtral": tiny_mixtral_dir, "bloom": tiny_bloom_dir, "falcon": tiny_falcon_dir}
