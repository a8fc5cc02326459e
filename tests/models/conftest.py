"""zswarm.models test settings: the `slow` marker for the real-model test (~40 s on first run)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real SmolLM2 default model (prepares it once, ~30 s)")
