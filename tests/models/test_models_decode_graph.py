"""The decode step written for CUDA graphs (fixed shapes, device-side position) gives the eager
step's numbers. Run here without capture, on the CPU; tools/bench_decode.py checks the captured
graph on a GPU against the same eager path."""

import pytest
import torch

from zswarm.models import load_span, resolve_model
from zswarm.models.decode_graph import StaticDecodeStep, decode_graphs_supported

from models_testlib import eager_and_static, static_step


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_static_decode_step_equals_eager_steps(family, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 2)
    torch.manual_seed(0)
    prefill = torch.randn(2, 5, span.hidden_size)
    tokens = [torch.randn(2, 1, span.hidden_size) for _ in range(12)]

    eager_cache, static_cache, step = eager_and_static(span, prefill, max_length=20)
    with torch.inference_mode():
        for i, token in enumerate(tokens):
            expected = span.inference_step(token, eager_cache)
            got = static_step(step, static_cache, token)
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), f"{family} step {i}"


def test_rollback_then_static_step_overwrites_the_dropped_position(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    torch.manual_seed(1)
    x = torch.randn(1, 4, span.hidden_size)
    a, b = torch.randn(1, 1, span.hidden_size), torch.randn(1, 1, span.hidden_size)
    reference = span.new_cache(1, max_length=8)
    span.inference_step(x, reference)
    expected = span.inference_step(b, reference)

    cache = span.new_cache(1, max_length=8)
    span.inference_step(x, cache)
    step = StaticDecodeStep(span, cache)
    with torch.inference_mode():
        step.run_eager(a, 4)  # a token later rolled back: its keys stay in the buffer past length
        got = step.run_eager(b, 4)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_in_place_beam_reorder_keeps_the_buffers(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 1)
    cache = span.new_cache(3, max_length=8)
    span.inference_step(torch.randn(3, 2, span.hidden_size), cache)
    generation, buffer = cache.generation, cache._keys[0]
    cache.reorder([2, 2, 0])
    assert cache.generation == generation and cache._keys[0] is buffer
    cache.reorder([0, 1])  # a new batch size needs new buffers: graphs over the old ones retire
    assert cache.generation > generation and cache.batch_size == 2


def test_families_without_graphs_say_why(tiny_model_dirs):
    assert "CUDA" in decode_graphs_supported(load_span(resolve_model(tiny_model_dirs["llama"]), 0, 1))
    for family in ("mixtral", "bloom"):
        span = load_span(resolve_model(tiny_model_dirs[family]), 0, 1)
        span.device = torch.device("cuda")  # only the reason is asked for; nothing runs
        assert decode_graphs_supported(span) is not None


def test_unwritten_cache_positions_hold_zeros(tiny_llama_dir):
    # the fixed-shape step multiplies masked positions' values by 0: uninitialised NaN would leak
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    cache = span.new_cache(1, max_length=64)
    span.inference_step(torch.randn(1, 3, span.hidden_size), cache)
    for store in (cache._keys, cache._values):
        for buffer in store.values():
            assert buffer.shape[-2] == 64 and torch.count_nonzero(buffer[:, :, 3:]) == 0
