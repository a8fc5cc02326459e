"""Left-padded batches: a row with `pad` leading pads gives, at its real positions, the numbers of
the same row run alone without padding -- over a chunked prefill and decode steps, eagerly and
through the fixed-shape decode step that CUDA graphs capture."""

import pytest
import torch

from zswarm.models import SpanInputError, load_span, resolve_model

from models_testlib import eager_and_static, static_step

PADS = [3, 0, 5]
PROMPT, DECODE = 9, 8


def _padded_batch(span, seed=0):
    """Real tokens per row (prompt of PROMPT - pad, then DECODE single tokens) and the padded batch."""
    torch.manual_seed(seed)
    prompt = torch.randn(len(PADS), PROMPT, span.hidden_size)
    prompt[0, :PADS[0]] = 1e4  # what pads hold must not matter
    tokens = [torch.randn(len(PADS), 1, span.hidden_size) for _ in range(DECODE)]
    return prompt, tokens


def _alone(span, prompt, tokens, row):
    cache = span.new_cache(1, max_length=PROMPT + DECODE)
    pad = PADS[row]
    outs = [span.inference_step(prompt[row:row + 1, pad:], cache)]
    outs += [span.inference_step(t[row:row + 1], cache) for t in tokens]
    return torch.cat(outs, dim=1)[0]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "mixtral"])
def test_left_padded_rows_equal_each_row_alone(family, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 2)
    prompt, tokens = _padded_batch(span)
    cache = span.new_cache(len(PADS), max_length=PROMPT + DECODE, left_pad=PADS)
    outs = [span.inference_step(prompt[:, :4], cache), span.inference_step(prompt[:, 4:], cache)]  # chunked
    outs += [span.inference_step(t, cache) for t in tokens]
    batched = torch.cat(outs, dim=1)
    assert torch.isfinite(batched).all()  # pad positions too: a NaN there would poison the cache
    for row, pad in enumerate(PADS):
        alone = _alone(span, prompt, tokens, row)
        assert torch.allclose(batched[row, pad:], alone, atol=1e-5, rtol=1e-4), f"{family} row {row}"


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_static_decode_step_with_pads_equals_eager_steps(family, tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs[family]), 0, 2)
    prompt, tokens = _padded_batch(span, seed=1)
    eager, static = eager_and_static(span, prompt, max_length=PROMPT + DECODE, left_pad=PADS)
    with torch.inference_mode():
        for i, token in enumerate(tokens):
            if i == 4:  # a beam reorder moves the rows' pads with them
                for cache in (eager, static):
                    cache.reorder([2, 0, 1])
                assert static.left_pad.tolist() == [5, 3, 0]
            expected = span.inference_step(token, eager)
            got = static_step(span, static, token)
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), f"{family} step {i}"


def test_no_pads_is_the_unpadded_path_bit_for_bit(tiny_llama_dir):
    span = load_span(resolve_model(tiny_llama_dir), 0, 2)
    torch.manual_seed(2)
    x = torch.randn(2, 5, span.hidden_size)
    plain, zeros = span.new_cache(2, max_length=8), span.new_cache(2, max_length=8, left_pad=[0, 0])
    assert zeros.left_pad is None
    assert torch.equal(span.inference_step(x, plain), span.inference_step(x, zeros))


def test_bad_pads_and_unsupported_families_are_refused(tiny_model_dirs):
    span = load_span(resolve_model(tiny_model_dirs["llama"]), 0, 1)
    for bad in ([1], [1, -1], [0, 8], [0.5, 1]):
        with pytest.raises(SpanInputError, match="left_pad"):
            span.new_cache(2, max_length=8, left_pad=bad)
    for family in ("bloom", "falcon"):
        other = load_span(resolve_model(tiny_model_dirs[family]), 0, 1)
        with pytest.raises(SpanInputError, match=f"left padding is not supported for family {family}"):
            other.new_cache(2, max_length=8, left_pad=[1, 0])
        assert other.new_cache(2, max_length=8, left_pad=[0, 0]).left_pad is None
