"""Captured decode graphs on a CUDA device give the eager steps' numbers (skipped without CUDA;
CI has none. Written after this session's device time was spent, so not yet run on a GPU: the H200 runs of
tools/bench_decode.py (docs/bench/gpu_h200.json) checked the same without padding or rollback)."""

import pytest
import torch

from zswarm.models import load_span, resolve_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _steps(span, cache, prompt, tokens, rollback_at=None):
    outs = [span.inference_step(prompt, cache)]
    for i, token in enumerate(tokens):
        if i == rollback_at:
            cache.rollback(cache.length - 2)
        outs.append(span.inference_step(token, cache))
    return outs


@pytest.mark.parametrize("left_pad", [None, [2, 0]])
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_captured_graph_steps_equal_eager_steps(family, left_pad, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 3, device="cuda")
    torch.manual_seed(0)
    prompt = torch.randn(2, 6, span.hidden_size, device="cuda")
    tokens = [torch.randn(2, 1, span.hidden_size, device="cuda") for _ in range(20)]

    span.graphs.enabled = False
    eager = _steps(span, span.new_cache(2, 32, left_pad=left_pad), prompt, tokens, rollback_at=10)
    span.graphs.enabled = True
    cache = span.new_cache(2, 32, left_pad=left_pad)
    graphed = _steps(span, cache, prompt, tokens, rollback_at=10)

    assert span.graphs.enabled and cache.decode_graph is not None  # it was captured, not skipped
    for i, (g, e) in enumerate(zip(graphed, eager)):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-5), f"step {i}"
