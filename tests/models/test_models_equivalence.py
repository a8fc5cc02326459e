"""Three spans of every family compute what the whole Hugging Face model computes."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from models_testlib import TOL, Pipeline, reference, reference_last_logits

FAMILIES = ["llama", "mistral", "qwen2", "mixtral", "bloom", "falcon"]


@pytest.fixture(scope="module")
def pipelines(tiny_model_dirs):
    return {family: (Pipeline(path), reference(path)) for family, path in tiny_model_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_three_spans_match_whole_model_logits_over_prefill_and_24_decode_steps(pipelines, family):
    pipe, model = pipelines[family]
    torch.manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 17 + 24))
    pipe.new_session(batch_size=2)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        ours = pipe.step(tokens[:, :17])
        theirs = model(tokens[:, :17], past_key_values=cache, use_cache=True).logits
        assert (ours - theirs).abs().max() <= TOL
        for t in range(17, 17 + 24):
            ours = pipe.step(tokens[:, t:t + 1])
            theirs = model(tokens[:, t:t + 1], past_key_values=cache, use_cache=True).logits
            assert (ours - theirs).abs().max() <= TOL, f"step at position {t}"
    assert all(c.length == 41 for c in pipe.caches)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_of_32_tokens_equals_hf_generate(pipelines, family):
    pipe, model = pipelines[family]
    torch.manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (2, 17))
    expected = model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[:, 17:]
    pipe.new_session(batch_size=2)
    generated, current = [], prompt
    with torch.no_grad():
        for _ in range(32):
            current = pipe.step(current)[:, -1:].argmax(-1)
            generated.append(current)
    assert torch.equal(torch.cat(generated, dim=1), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_reorder_and_rollback_give_what_the_whole_model_gives_for_that_history(pipelines, family):
    pipe, model = pipelines[family]
    vocab = model.config.vocab_size
    torch.manual_seed(2)
    history = torch.randint(0, vocab, (3, 9))
    pipe.new_session(batch_size=3)
    with torch.no_grad():
        pipe.step(history)
        for hypo_ids in ([2, 0, 0], [1, 1, 2], [0, 2, 1]):
            pipe.reorder(torch.tensor(hypo_ids))
            history = history[hypo_ids]
            new = torch.randint(0, vocab, (3, 1))
            history = torch.cat([history, new], dim=1)
            ours = pipe.step(new)[:, -1]
            assert (ours - reference_last_logits(model, history)).abs().max() <= TOL
        # roll back 2 tokens and continue with a different 2-token chunk, then single tokens
        pipe.rollback(history.shape[1] - 2)
        history = history[:, :-2]
        for chunk in (2, 1, 1):
            new = torch.randint(0, vocab, (3, chunk))
            history = torch.cat([history, new], dim=1)
            ours = pipe.step(new)[:, -1]
            assert (ours - reference_last_logits(model, history)).abs().max() <= TOL
    assert all(c.length == history.shape[1] for c in pipe.caches)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_without_cache_equals_whole_model(pipelines, family):
    pipe, model = pipelines[family]
    torch.manual_seed(3)
    tokens = torch.randint(0, model.config.vocab_size, (2, 23))
    with torch.no_grad():
        hidden = pipe.parts.embed(tokens)
        for span in pipe.spans:
            hidden = span.forward(hidden)
        ours = pipe.parts.head(pipe.parts.norm(hidden))
        assert (ours - model(tokens).logits).abs().max() <= TOL
