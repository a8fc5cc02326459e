"""Batched decode ticks over the shared KV pool give each session the numbers it gets alone, and the
fixed-shape tick a CUDA graph captures (bucketed rows and pages, padding rows on the scratch page)
gives the eager step's numbers. Run here without capture, on the CPU; the CUDA test file checks
captured graphs on a GPU."""

import pytest
import torch

from zswarm.models import load_span, resolve_model
from zswarm.models.decode_graph import bucket, decode_graphs_supported
from zswarm.models.kv_pool import PAGE_TOKENS

from models_testlib import bucket_tick, eager_and_static, static_step


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_static_decode_step_equals_eager_steps(family, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 2)
    torch.manual_seed(0)
    prefill = torch.randn(2, 5, span.hidden_size)
    tokens = [torch.randn(2, 1, span.hidden_size) for _ in range(20)]  # past a 16-token page, and the window

    eager_cache, static_cache = eager_and_static(span, prefill, max_length=40)
    with torch.inference_mode():
        for i, token in enumerate(tokens):
            expected = span.inference_step(token, eager_cache)
            got = static_step(span, static_cache, token)
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), f"{family} step {i}"


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "mixtral"])
def test_a_tick_of_sessions_of_different_lengths_equals_each_session_alone(family, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 3)
    torch.manual_seed(3)
    # sessions of 1 row, 2 rows (beams) with left pads, and 1 row; prompts of 3, 9 and 17 tokens
    shapes = [(1, 3, None), (2, 9, [4, 0]), (1, 17, None)]
    prompts = [torch.randn(b, n, span.hidden_size) for b, n, _ in shapes]
    steps = [[torch.randn(b, 1, span.hidden_size) for _ in range(6)] for b, _, _ in shapes]

    alone = []
    for (b, n, pads), prompt, tokens in zip(shapes, prompts, steps):
        cache = span.new_cache(b, max_length=32, left_pad=pads)
        span.inference_step(prompt, cache)
        alone.append([span.inference_step(t, cache) for t in tokens])

    caches = [span.new_cache(b, max_length=32, left_pad=pads) for b, _, pads in shapes]
    for cache, prompt in zip(caches, prompts):
        span.inference_step(prompt, cache)
    for i in range(6):
        eager = span.decode_tick([s[i] for s in steps], caches)  # the eager batched tick
        rows = 0
        for k, cache in enumerate(caches):
            got = eager[rows:rows + cache.batch_size]
            rows += cache.batch_size
            assert torch.allclose(got, alone[k][i], atol=1e-5, rtol=1e-4), f"{family} session {k} step {i}"
    assert [c.length for c in caches] == [n + 6 for _, n, _ in shapes]


def test_the_bucketed_tick_pads_rows_and_pages_without_touching_real_sessions(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    torch.manual_seed(4)
    caches = [span.new_cache(1, max_length=48), span.new_cache(2, max_length=48, left_pad=[2, 0])]
    references = [span.new_cache(1, max_length=48), span.new_cache(2, max_length=48, left_pad=[2, 0])]
    for cache, ref in zip(caches, references):
        prompt = torch.randn(cache.batch_size, 5, span.hidden_size)
        span.inference_step(prompt, cache)
        span.inference_step(prompt, ref)
    for i in range(4):
        tokens = [torch.randn(c.batch_size, 1, span.hidden_size) for c in caches]
        # 3 real rows in an 8-row bucket, 6 pages where 1 would do
        got = bucket_tick(span, caches, tokens, rows=8, pages=6)
        expected = torch.cat([span.inference_step(t, r) for t, r in zip(tokens, references)])
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), f"step {i}"


def test_rollback_then_a_tick_overwrites_the_dropped_position(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    torch.manual_seed(1)
    x = torch.randn(1, 4, span.hidden_size)
    a, b = torch.randn(1, 1, span.hidden_size), torch.randn(1, 1, span.hidden_size)
    reference = span.new_cache(1, max_length=8)
    span.inference_step(x, reference)
    expected = span.inference_step(b, reference)

    cache = span.new_cache(1, max_length=8)
    span.inference_step(x, cache)
    static_step(span, cache, a)  # a token later rolled back: its keys stay in the page past length
    cache.rollback(4)
    got = static_step(span, cache, b)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_beam_reorder_moves_rows_within_the_session_pages(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 1)
    torch.manual_seed(5)
    x = torch.randn(3, 2, span.hidden_size)
    cache = span.new_cache(3, max_length=8)
    span.inference_step(x, cache)
    pages = cache.page_table.clone()
    cache.reorder([2, 2, 0])
    assert torch.equal(cache.page_table, pages)  # same pages, rows copied between them
    token = torch.randn(3, 1, span.hidden_size)
    reference = span.new_cache(3, max_length=8)
    span.inference_step(x[[2, 2, 0]], reference)
    assert torch.allclose(span.inference_step(token, cache), span.inference_step(token, reference), atol=1e-6)
    free = span.kv_pool.free_pages
    cache.reorder([0, 1])  # a new batch size takes new pages and returns the old ones
    assert cache.batch_size == 2 and span.kv_pool.free_pages == free + 1


def test_pages_return_to_the_pool_when_a_session_closes_or_is_dropped(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    pool = span.attach_pool(40 * PAGE_TOKENS)
    assert span.kv_pool is pool and span.sub(0, 1).kv_pool is pool
    free = pool.free_pages
    cache = span.new_cache(2, max_length=3 * PAGE_TOKENS)
    assert pool.free_pages == free - 6
    cache.close()
    assert pool.free_pages == free
    span.new_cache(4, max_length=PAGE_TOKENS + 1)  # dropped at once: garbage collected
    assert pool.free_pages == free
    with pytest.raises(Exception, match="free pages"):
        span.new_cache(41, max_length=PAGE_TOKENS)  # a fixed pool never grows


def test_new_pages_hold_zeros_whatever_an_earlier_session_left(tiny_llama_dir):
    # a tick multiplies masked positions' values by 0: a NaN left in a page would leak into the sum
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    pool = span.attach_pool(4 * PAGE_TOKENS)
    first = span.new_cache(1, max_length=4 * PAGE_TOKENS)
    span.inference_step(torch.randn(1, 30, span.hidden_size), first)
    for store in (pool.keys, pool.values):
        for buffer in store.values():
            buffer.fill_(float("nan"))
    first.close()
    second = span.new_cache(1, max_length=4 * PAGE_TOKENS)
    out = span.inference_step(torch.randn(1, 3, span.hidden_size), second)
    assert torch.isfinite(out).all()


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 33)] == [1, 2, 4, 8, 8, 16, 64]


def test_families_without_graphs_say_why(tiny_model_dirs):
    assert "CUDA" in decode_graphs_supported(load_span(resolve_model(tiny_model_dirs["llama"]), 0, 1))
    for family in ("mixtral", "bloom"):
        span = load_span(resolve_model(tiny_model_dirs[family]), 0, 1)
        span.device = torch.device("cuda")  # only the reason is asked for; nothing runs
        assert decode_graphs_supported(span) is not None


def test_capturing_buckets_is_nothing_to_do_without_cuda(tiny_llama_dir):
    from zswarm.models.decode_graph import capture_buckets

    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    assert capture_buckets(span, 256) == 0 and not span.kv_pool.graphs


def test_a_local_pool_grown_inside_a_step_still_hands_out_pages_outside_one(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 1)
    cache = span.new_cache(1)
    span.inference_step(torch.randn(1, 200, span.hidden_size), cache)  # grows the store under inference_mode
    other = span.new_cache(1, 32)  # zeroes its pages outside inference_mode
    assert torch.isfinite(span.inference_step(torch.randn(1, 3, span.hidden_size), other)).all()
