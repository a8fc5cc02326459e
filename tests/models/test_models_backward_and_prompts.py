"""Backward through spans gives the whole model's input gradients; deep prompts act and train as specified."""

from __future__ import annotations

import pytest
import torch

from models_testlib import TOL, Pipeline, reference

FAMILIES = ["llama", "mistral", "qwen2", "mixtral", "bloom", "falcon"]
PRE_SEQ_LEN = 5


@pytest.fixture(scope="module")
def two_span_pipelines(tiny_model_dirs):
    return {family: (Pipeline(path, splits=((0, 4), (4, 6))), reference(path))
            for family, path in tiny_model_dirs.items()}


def _embeddings(model, tokens):
    """The whole model's first hidden states (BLOOM normalises its embeddings first)."""
    return model.get_input_embeddings()(tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_through_two_spans_gives_whole_model_input_gradients(two_span_pipelines, family):
    pipe, model = two_span_pipelines[family]
    torch.manual_seed(4)
    tokens = torch.randint(0, model.config.vocab_size, (2, 13))
    weights = torch.randn(2, 13, model.config.vocab_size)

    embeds = _embeddings(model, tokens).detach().requires_grad_(True)
    (model(inputs_embeds=embeds).logits * weights).sum().backward()
    expected = embeds.grad

    h0 = pipe.parts.embed(tokens)  # BLOOM: after its embedding layernorm
    h1 = pipe.spans[0].forward(h0)
    h2 = pipe.spans[1].forward(h1).clone().requires_grad_(True)
    (pipe.parts.head(pipe.parts.norm(h2)) * weights).sum().backward()
    g1, no_prompt_grad = pipe.spans[1].backward(h1, h2.grad)
    g0, _ = pipe.spans[0].backward(h0, g1)
    assert no_prompt_grad is None
    # chain g0 back through the client's embedding step (identity except BLOOM's layernorm)
    raw = model.get_input_embeddings()(tokens).detach().requires_grad_(True)
    first = pipe.parts.embeddings.word_embeddings_layernorm(raw) if family == "bloom" else raw
    (first * g0).sum().backward()
    assert (raw.grad - expected).abs().max() <= TOL


def _hooked_reference(model, prompts):
    """The whole HF model with prompts[i] added before decoder layer i (forward pre-hooks), positions < pre_seq_len."""
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            k = min(hidden.shape[1], prompts.shape[2])
            hidden = torch.cat([hidden[:, :k] + prompts[i][:, :k], hidden[:, k:]], dim=1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@pytest.mark.parametrize("family", ["llama", "bloom", "falcon"])
def test_deep_prompt_gradients_match_a_hooked_whole_model(two_span_pipelines, family):
    pipe, model = two_span_pipelines[family]
    hidden_size = model.config.hidden_size
    torch.manual_seed(5)
    tokens = torch.randint(0, model.config.vocab_size, (2, 11))
    prompts = (0.5 * torch.randn(6, 2, PRE_SEQ_LEN, hidden_size)).requires_grad_(True)
    weights = torch.randn(2, 11, model.config.vocab_size)

    handles = _hooked_reference(model, prompts)
    try:
        embeds = pipe.parts.embed(tokens) if family == "bloom" else _embeddings(model, tokens)
        embeds = embeds.detach().requires_grad_(True)
        if family == "bloom":  # feed BLOOM past its embedding norm by hooking the norm to identity
            norm = model.transformer.word_embeddings_layernorm
            h = norm.register_forward_hook(lambda m, a, out: embeds)
            handles.append(h)
            (model(tokens).logits * weights).sum().backward()
        else:
            (model(inputs_embeds=embeds).logits * weights).sum().backward()
    finally:
        for h in handles:
            h.remove()

    h0 = embeds.detach()
    p0, p1 = prompts.detach()[:4], prompts.detach()[4:]
    h1 = pipe.spans[0].forward(h0, prompts=p0)
    h2 = pipe.spans[1].forward(h1, prompts=p1).clone().requires_grad_(True)
    (pipe.parts.head(pipe.parts.norm(h2)) * weights).sum().backward()
    g1, gp1 = pipe.spans[1].backward(h1, h2.grad, prompts=p1)
    g0, gp0 = pipe.spans[0].backward(h0, g1, prompts=p0)
    assert (g0 - embeds.grad).abs().max() <= TOL
    assert (torch.cat([gp0, gp1]) - prompts.grad).abs().max() <= TOL


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_deep_prompts_in_inference_touch_only_positions_below_pre_seq_len(two_span_pipelines, family):
    """Prefill of 3 tokens gets prompt rows 0..2, the next steps rows 3, 4, and steps past 5 get nothing."""
    pipe, model = two_span_pipelines[family]
    torch.manual_seed(6)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    prompts = 0.5 * torch.randn(6, 2, PRE_SEQ_LEN, model.config.hidden_size)
    handles = _hooked_reference(model, prompts)
    try:
        with torch.no_grad():
            expected = model(tokens).logits
    finally:
        for h in handles:
            h.remove()
    pipe.new_session(batch_size=2)
    split = [(0, 3)] + [(t, t + 1) for t in range(3, 9)]
    with torch.no_grad():
        for a, b in split:
            hidden = pipe.parts.embed(tokens[:, a:b])
            for span, cache, chunk in zip(pipe.spans, pipe.caches, (prompts[:4], prompts[4:])):
                hidden = span.inference_step(hidden, cache, prompts=chunk)
            logits = pipe.parts.head(pipe.parts.norm(hidden))
            assert (logits - expected[:, a:b]).abs().max() <= TOL, f"positions [{a}, {b})"
