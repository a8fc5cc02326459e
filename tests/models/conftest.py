"""zswarm.models test settings.

- The `slow` marker, for the real-model test (~40 s on first run while SmolLM2 is prepared).
- One torch thread while these tests run: the models are tiny, and on a shared 2-core machine
  two OpenMP threads per process make them 20-50x slower under contention (measured).
"""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real SmolLM2 default model (prepares it once, ~30 s)")


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
