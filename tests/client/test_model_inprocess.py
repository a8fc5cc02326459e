"""The model class on an in-process swarm: chat sessions, sampling, streamers, autograd."""
import torch
from transformers import StoppingCriteriaList, TextStreamer

from conftest import AtStep

PROMPT = torch.tensor([[1, 5, 9, 33, 7]])


def test_two_generate_calls_in_a_session_equal_one_of_the_concatenation(swarm, connect, llama_reference):
    swarm.add(0, 3), swarm.add(3, 6)
    model = connect()
    more = torch.tensor([[4, 4, 90]])
    with model.inference_session(max_length=40) as session:
        first = model.generate(PROMPT, max_new_tokens=5, session=session, repetition_penalty=1.2)
        second = model.generate(more, max_new_tokens=6, session=session, repetition_penalty=1.2)
    expected = llama_reference.generate(torch.cat([first, more], dim=1), max_new_tokens=6, repetition_penalty=1.2)
    assert torch.equal(torch.cat([first, second], dim=1), expected)
    assert torch.equal(second[:, :3], more)


def test_seeded_sampling_equals_local_seeded_sampling(swarm, connect, llama_reference):
    swarm.add(0, 6)
    model = connect()
    args = dict(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=30, top_p=0.8, repetition_penalty=1.3)
    torch.manual_seed(7)
    out = model.generate(PROMPT, **args)
    torch.manual_seed(7)
    assert torch.equal(out, llama_reference.generate(PROMPT, **args))


def test_stop_strings_and_streamer_work_through_the_swarm(swarm, connect, llama_reference, capsys):
    swarm.add(0, 6)
    model = connect()

    class Tok:   # the smallest tokenizer TextStreamer and stop_strings need: id n <-> chr(65 + n % 26)
        def decode(self, ids, **kw):
            return "".join(chr(65 + int(i) % 26) for i in ids)

    model.generate(PROMPT, max_new_tokens=4, streamer=TextStreamer(Tok()))
    expected = llama_reference.generate(PROMPT, max_new_tokens=4)
    assert Tok().decode(expected[0]) in capsys.readouterr().out


def test_forward_logits_and_input_gradients_equal_the_local_model(swarm, connect, llama_reference):
    swarm.add(0, 2), swarm.add(2, 6)
    model = connect()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    embeds = model.parts.embed(ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, labels=ids)
    out.loss.backward()
    ref_embeds = llama_reference.get_input_embeddings()(ids).detach().requires_grad_(True)
    ref = llama_reference(inputs_embeds=ref_embeds, labels=ids)
    ref.loss.backward()
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(embeds.grad, ref_embeds.grad)


def test_forward_and_backward_route_around_a_vanished_server(swarm, connect, llama_reference):
    swarm.add(0, 3)
    doomed = swarm.add(3, 6)
    model = connect()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    embeds = model.parts.embed(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    swarm.kill(doomed)
    swarm.add(3, 4), swarm.add(4, 6)         # backward must recompute the new inner boundary
    logits.sum().backward()
    ref_embeds = llama_reference.get_input_embeddings()(ids).detach().requires_grad_(True)
    llama_reference(inputs_embeds=ref_embeds).logits.sum().backward()
    torch.testing.assert_close(embeds.grad, ref_embeds.grad)
    assert torch.equal(model(ids).logits, llama_reference(ids).logits)


def test_wire_dtype_auto_follows_the_model_and_float16_stays_close_to_the_local_model(swarm, connect, llama_reference):
    swarm.add(0, 3), swarm.add(3, 6)
    assert connect(wire_dtype="auto").wire_dtype == torch.float32  # the tiny llama is a float32 checkpoint
    model = connect(wire_dtype="float16")
    assert model.wire_dtype == torch.float16
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    torch.testing.assert_close(model(ids).logits, llama_reference(ids).logits, atol=2e-2, rtol=2e-2)
    with model.inference_session(max_length=16) as session:
        out = session.step(model.parts.embed(ids))
    assert out.dtype == torch.float32


def test_a_big_forward_batch_goes_in_capped_requests_and_stays_exact(swarm, connect, llama_reference):
    first, second = swarm.add(0, 6), swarm.add(0, 6)
    model = connect(max_request_tokens=16)
    ids = torch.randint(0, 256, (6, 8), generator=torch.Generator().manual_seed(1))
    embeds = model.parts.embed(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    logits.square().mean().backward()
    forwards = [address for address, method in swarm.transport.calls if method == "forward"]
    assert len(forwards) == 3                       # 6 rows x 8 tokens in requests of 16 tokens
    ref_embeds = llama_reference.get_input_embeddings()(ids).detach().requires_grad_(True)
    ref_logits = llama_reference(inputs_embeds=ref_embeds).logits
    ref_logits.square().mean().backward()
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(embeds.grad, ref_embeds.grad)


def test_a_failed_generate_leaves_the_chat_session_where_it_was(swarm, connect, llama_reference):
    swarm.add(0, 3)
    lonely = swarm.add(3, 6)
    model = connect(max_retries=1)
    with model.inference_session(max_length=40) as session:
        first = model.generate(PROMPT, max_new_tokens=3, session=session)
        swarm.kill(lonely)
        import pytest
        from zswarm import NoRouteError
        with pytest.raises(NoRouteError):
            model.generate(torch.tensor([[8, 8]]), max_new_tokens=5, session=session)
        swarm.add(3, 6)
        second = model.generate(torch.tensor([[9]]), max_new_tokens=4, session=session)
    expected = llama_reference.generate(torch.cat([first, torch.tensor([[9]])], dim=1), max_new_tokens=4)
    assert torch.equal(torch.cat([first, second], dim=1), expected)
